"""`stablesweep diagnose`: config and data checks, an optional probe run, and a fixed config.

Findings, each with a severity (error | warning | info), the evidence (numbers, file and line,
config key) and the fix (checks/):

- labels of every dataset and split against [0, num_classes) with file and line (1-based
  manifests recognised), num_classes against the distinct labels present, missing or unreadable
  files: read from the structured problems of the data package's pre-flight scan
  (`stablesweep.data.manifests.scan`), never from their message text;
- masking against precision and loss: -inf masking (a label error becomes loss inf), a mask value
  beyond the dtype it is applied in (-1e9 in fp16 is -inf), label smoothing over value-masked
  logits, masks applied before the fp32 upcast (`loss.mask_in: autocast`);
- no gradient clipping; eval_ratio outside (0, 1] (raw.py); conflicting skip_evaluation settings;
- lr against a measured boundary: a sweep's `stable_region.json` or a ramp's `ramp.json`
  (region_file.py).

The probe (`probe_steps > 0`, probe.py) trains a few steps through the Trainer, so it runs what
`stablesweep train` runs, but keeps samples whose label is out of range (a run's pre-flight check
refuses them), so it reproduces what the user saw: hooks find the first module whose output turns
non-finite, and each bad sample is explained (which loss term broke, which dataset's columns its
target landed in).

Nothing the user owns is ever written: the fixed config (fixed.py) goes to `<config stem>_fixed.yaml`
beside the config (or in `out_dir`), every changed key commented with the finding behind it.
Label errors are never "fixed" by a clamp: the finding names the manifest and lines to fix, and
the fixed config says in a comment that the data still needs it.

After a run diverged, `stablesweep explain` (explain.py) says why by experiment: it replays the
run's last steps from a kept checkpoint as they were and under one change at a time (masking,
precision, a lower lr, another data order) and names the first change that removes the divergence.

Importing this package does not import torch: the checks and the probe load it once the config
and the region file have been read.
"""
from .diagnosis import Diagnosis
from .findings import SEVERITIES, Change, Finding
from .fixed import fixed_config, write_fixed
from .region_file import MeasuredRegion, MeasuredSetting, read_region
from .report import format_changes, format_diagnosis
from .run import diagnose

__all__ = ["SEVERITIES", "Change", "Diagnosis", "Finding", "MeasuredRegion", "MeasuredSetting", "diagnose",
           "fixed_config", "format_changes", "format_diagnosis", "read_region", "write_fixed"]
