"""Analysis of sweeps, in rooms that do one thing (none imports Ray or the sweep engine):

- answer.py: one setting's answer as one plain record (`SettingAnswer`, built by the region and by
  the ramp), and the one renderer of it: tables, P(fails | lr) lines, a recommended config's header;
- region.py: the stable region of a plain table of trials (no MLflow), its files;
- importance.py: what drives divergence (Optuna's parameter importance on a 0/1 target);
- boundary.py: P(fails | lr) of one setting from replicate runs;
- plots.py: the figures, each a plain-data step (`*_data`) and a drawing step (`plot_*`);
- reading.py: sweeps read back from MLflow (through `stablesweep.tracking`) as plain `SweepData`;
- comparison.py: sweeps side by side on plain data (no MLflow): a `Comparison`;
- render.py: a `Comparison` as text, markdown, CSV or HTML;
- report.py: the comparison's files and figures, and its run in MLflow (through tracking);
- text.py: how numbers and values read in those tables, labels and ticks; text and markdown tables.
"""
from stablesweep.analysis.region import Group, Region, analyze, lr_sensitivity, write_region

__all__ = ["Group", "Region", "analyze", "lr_sensitivity", "write_region"]
