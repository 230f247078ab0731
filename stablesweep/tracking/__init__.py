"""MLflow, and only here: the one package that imports mlflow (lazily, inside its functions:
importing it costs nothing, so the CLI refuses bad input fast).

One parent run per sweep or ramp (config, space, sampler, seed, code version; the region files as
artifacts; per setting its lr bracket as metrics) and one child run per trial or probe, nested
under it with the `mlflow.parentRunId` tag. Everything goes through an explicit `MlflowClient`
with explicit run ids (no fluent, global active run), from the driver only. docs/mlflow.md says
what a person sees in the UI; in short:

- Status is the verdict's colour: only a stable run is FINISHED (the green tick); stalled,
  diverged and error runs are FAILED, pruned ones KILLED (`STATUS`).
- A finished run's name leads with its verdict: `diverged@10 lr=8.2e+01 slice clip=1.0`,
  `stable lr=3.0e-03 slice clip=1.0` (`run_name`).
- Params are written as the config writes them (YAML scalars, `none` for null); tags hold no
  sentinels (no `first_bad_step` unless a run diverged, no empty `reason`).
- `objective` is logged once, when a run ends, for the runs whose objective is a measurement
  (stable, stalled, pruned); a diverged run's stand-in (its initial loss) is
  `stand_in_objective`, so sorting by objective never ranks a diverged run.
- Constants of a run (`CONSTANTS`: initial loss, FLOPs a step, step budget) are tags, written once.
- A diverged run's last steps are `step_loss` and `step_grad_norm` at their own steps, with
  `diverged_at_step`. Metrics are finite numbers only (inf and NaN are left out: see `_log`).
- Per setting, on the parent: `min_stable_lr.<setting>`, `max_stable_lr.<setting>`,
  `min_diverged_lr.<setting>`, `recommended_lr.<setting>`, `lr_at_5pct_risk.<setting>`,
  `lr_at_50pct.<setting>`; every child has the tag `setting`
  (the same slug, for Group-by) and, once the sweep knows its setting's boundary, `lr_margin`.
- `ui_link` builds a link into the UI's runs table (model-training view, a filter, a sort), or
  to a view that `Tracker.save_view` stored (with our columns as well).

Reading back (`TrackerReader`, for `stablesweep compare`): the parents by `stablesweep.kind`, their
trials by `mlflow.parentRunId`, as plain `RunRecord`s (no mlflow type leaves this package); it never
creates an experiment or a run. The report of `compare` is written back by `Tracker.log_report`,
as a run of kind `compare`. What MLflow raises while reading or logging a report comes out as
`TrackingError`, with the store and the step in its message.

The default store is embedded: `sqlite:///<out>/mlflow.db`, artifacts beside it in
`<out>/mlartifacts` (MLflow 3 refuses the plain file store unless told otherwise).

One job a module: `names` (tags, metric and run names, setting slugs, param values), `links`
(the UI's command, links and saved views), `store` (the store: its URI, creating, repairing and
probing it, `TrackingError`), `writer` (`Tracker`, and `trial_metrics`: what of a report is a
metric) and `reader` (`TrackerReader`, `RunRecord`).
"""
from __future__ import annotations

from stablesweep.tracking.links import (
    ORDER_BY_OBJECTIVE,
    SHARED_VIEW_TAG,
    TRIAL_COLUMNS,
    UI_PORT,
    run_link,
    stable_filter,
    ui_base,
    ui_command,
    ui_link,
    view_state,
)
from stablesweep.tracking.names import (
    COMPARE_KIND,
    CONSTANTS,
    DEFAULT_EXPERIMENT,
    DIVERGED_AT_STEP,
    KIND_TAG,
    LR_MARGIN,
    MEASURED,
    PARENT_KINDS,
    PARENT_TAG,
    SETTING_TAG,
    STAND_IN_OBJECTIVE,
    STATUS,
    STEP_GRAD_NORM,
    STEP_LOSS,
    SWEEP_TAG,
    TRIAL_TAG,
    code_version,
    name_without_verdict,
    param_value,
    run_name,
    setting_slug,
    verdict_label,
)
from stablesweep.tracking.reader import RunRecord, TrackerReader
from stablesweep.tracking.store import (
    StoreStart,
    TrackingError,
    create_store,
    default_tracking_uri,
    probe_store,
    store_path,
)
from stablesweep.tracking.writer import Tracker, stable_trials_link, trial_metrics

__all__ = [
    "COMPARE_KIND", "CONSTANTS", "DEFAULT_EXPERIMENT", "DIVERGED_AT_STEP", "KIND_TAG", "LR_MARGIN", "MEASURED",
    "ORDER_BY_OBJECTIVE", "PARENT_KINDS", "PARENT_TAG", "SETTING_TAG", "SHARED_VIEW_TAG",
    "STAND_IN_OBJECTIVE", "STATUS", "STEP_GRAD_NORM", "STEP_LOSS", "SWEEP_TAG", "TRIAL_COLUMNS", "TRIAL_TAG",
    "UI_PORT", "RunRecord", "StoreStart", "Tracker", "TrackerReader", "TrackingError", "code_version", "create_store",
    "default_tracking_uri", "name_without_verdict", "param_value", "probe_store", "run_link", "run_name",
    "setting_slug", "stable_filter", "stable_trials_link", "store_path", "trial_metrics", "ui_base", "ui_command",
    "ui_link", "verdict_label", "view_state",
]
