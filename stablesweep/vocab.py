"""The project's vocabulary: every name that more than one module speaks, defined once.

The ground floor: imports neither torch, Ray, Optuna nor MLflow, so the training core, the sweep
engine, the analysis and the tracking code can all import it (as Ray Tune's `tune/result.py`).

- Outcomes: the one verdict a run or trial ends with, and the reasons a divergence is given.
- Result keys: the names in a report (Tune's result, result.json, MLflow metrics), and which of
  them a run charts (REPORT_METRICS, NOT_METRICS: tracking.trial_metrics).
- Search-space words: the lr key, the categorical distributions.
- The recommended-lr rule and its safety factor: one rule for the sweep's region, the ramp and
  diagnose.
- Value helpers: plain Python values from numpy/pandas, one formatter for values in names,
  tables and files.
- `InputError`: the base of every bad-input error (ConfigError, DataError, SpaceError, ...); the
  CLI prints it as `error: ...` and exits 2.
"""
from __future__ import annotations

import math
from typing import Any

# ---- outcomes -------------------------------------------------------------------------------

STABLE = "stable"      # ran its budget, every loss and gradient finite, no explosion, and it trained
STALLED = "stalled"    # ran its budget, finite, no explosion, but the loss did not fall enough
DIVERGED = "diverged"  # non-finite loss or gradient, or a loss explosion; with a reason and step
PRUNED = "pruned"      # stopped by the scheduler for poor, finite progress (not a stability verdict)
ERROR = "error"        # the trial crashed; bad input is caught before training
VERDICTS = (STABLE, STALLED, DIVERGED, PRUNED, ERROR)
UNFINISHED = "unfinished"  # not a verdict: a trial still running, or lost before it had one (resumable)

NONFINITE_LOSS, NONFINITE_GRAD, LOSS_EXPLOSION = "nonfinite_loss", "nonfinite_grad", "loss_explosion"
REASONS = (NONFINITE_LOSS, NONFINITE_GRAD, LOSS_EXPLOSION)
NO_PROGRESS = "no_progress"  # the reason of a stalled run

# ---- result keys (one report of the training loop; Tune's result; result.json) -----------------

STEP = "step"
STEPS = "steps"                  # a trial record's or summary's: the steps run
BUDGET_STEPS = "budget_steps"
VERDICT = "verdict"
REASON = "reason"
FIRST_BAD_STEP = "first_bad_step"
OBJECTIVE = "objective"          # finite always: the eval loss, the smoothed loss, or a stand-in
LOSS = "loss"                    # the smoothed training loss
LAST_LOSS = "last_loss"          # this step's training loss
INITIAL_LOSS = "initial_loss"
FINAL_LOSS = "final_loss"        # a trial record's: the last report's smoothed loss
GRAD_NORM = "grad_norm"
MAX_GRAD_NORM_SEEN = "max_grad_norm_seen"
NONFINITE_STEPS = "nonfinite_steps"
OVERFLOW_STEPS = "overflow_steps"
LR = "lr"                        # the lr at this step (after the schedule); not the config key LR_KEY
TRAIN_FLOPS = "train_flops"
FLOPS_PER_STEP = "flops_per_step"
SAMPLES_PER_S = "samples_per_s"
FINISHED = "finished"            # the training loop's own `done`, renamed (Tune owns `done`)
REPORTED_AT = "reported_at"      # epoch seconds (float) of a report; the last one's is the trial's end
OBJECTIVE_IS_STAND_IN = "objective_is_stand_in"  # a Tune row's: its objective is a diverged run's stand-in
PROGRESS = "progress"            # 1 - final smoothed loss / initial loss
HISTORY = "history"              # diverged, last report only: [(step, loss, grad norm), ...] before the end
# the early warning (stability/monitor.py): whether a signal crossed its threshold, which, when
AT_RISK, AT_RISK_SIGNAL, AT_RISK_STEP = "at_risk", "at_risk_signal", "at_risk_step"

# ---- a report as MLflow metrics (tracking.trial_metrics) -------------------------------------

# the numbers every report of the training loop holds: all that a ramp's probe run charts
REPORT_METRICS = (LOSS, LAST_LOSS, GRAD_NORM, MAX_GRAD_NORM_SEEN, NONFINITE_STEPS, OVERFLOW_STEPS,
                  TRAIN_FLOPS, SAMPLES_PER_S, LR, PROGRESS, INITIAL_LOSS, FLOPS_PER_STEP, BUDGET_STEPS)
# the keys of a trial's result that are never metrics: Tune's bookkeeping; the step, the tags and
# the params of a report (a sweep's budget_steps tag is written when its trials are reconciled)
NOT_METRICS = frozenset({
    "timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date", "time_this_iter_s",
    "pid", "hostname", "node_ip", "config", "time_since_restore", "iterations_since_restore", "experiment_tag",
    "should_checkpoint",
    STEP, FIRST_BAD_STEP, BUDGET_STEPS, FINISHED, VERDICT, REASON, REPORTED_AT, OBJECTIVE_IS_STAND_IN, "timesteps_total",
    "node_id", "device"})

# ---- search-space words -----------------------------------------------------------------------

LR_KEY = "training.lr"
SEED_KEY = "training.seed"  # what a replicate varies
REPLICATE = "replicate"  # the phase of a replicate run (ramp probe, sweep trial) in records and MLflow
CATEGORICAL = ("choice", "grid")  # distributions whose values name a setting (lr excluded)

# ---- the recommended lr -------------------------------------------------------------------------

SAFETY = 0.5


def recommended_lr(lr: float | None, *, max_stable: float | None, min_diverged: float | None,
                   safety: float = SAFETY, at_risk: float | None = None) -> float | None:
    """The lr we recommend for one setting: `lr` (the best stable trial's, or the largest stable
    one), at most `safety` x the edge. The edge is the lr at 5% risk of failing where replicates
    measured it (`at_risk`), else the smallest lr seen to diverge, else the largest stable lr (the
    edge was never seen, so we keep the same margin below what we know). None when nothing was
    stable."""
    if lr is None or max_stable is None:
        return None
    edge = next(x for x in (at_risk, min_diverged, max_stable) if x is not None)
    return min(float(lr), safety * float(edge))


# ---- errors -----------------------------------------------------------------------------------


class InputError(ValueError):
    """Bad input from the user (a file, a flag, a config key): the message names the place and
    says what was expected. The CLI prints it and exits 2; nothing has been written."""


# ---- values -------------------------------------------------------------------------------------


def py(v: Any) -> Any:
    """A plain Python value: numpy/pandas scalars -> Python, NaN -> None."""
    if v is None:
        return None
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        try:
            v = v.item()
        except (ValueError, AttributeError):
            pass
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def finite(v: Any) -> float | None:
    """`v` as a finite float, or None (None, NaN, inf, bools and non-numbers)."""
    v = py(v)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def jsonable(v: Any) -> Any:
    """Nested dicts/lists of plain values, with NaN and inf as None (JSON has neither)."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    v = py(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as dotted keys (`{"training": {"lr": 1}}` -> `{"training.lr": 1}`)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def format_value(v: Any) -> str:
    """A value as names, tables and files show it: none, true/false, 1.0, 2.0e-06, 0.25."""
    v = py(v)
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e4:
            return f"{v:.1f}"
        if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e4):
            return f"{v:.1e}"
        return f"{v:.3g}"
    return str(v)


SHORT_KEYS = {"training.max_grad_norm": "clip", "training.precision": "precision",
              "loss.masking": "masking", LR_KEY: "lr"}


def short_key(key: str) -> str:
    """A config key as a column or axis label: clip, precision, masking, lr, else its last part."""
    return SHORT_KEYS.get(key, key.rsplit(".", 1)[-1])


_SHORT = {
    LR_KEY: "lr",
    "training.precision": "",
    "loss.masking": "",
    "training.max_grad_norm": "clip",
}


def short_name(params: dict[str, Any]) -> str:
    """A readable run name, like `lr=2.0e-06 bf16 slice clip=1.0`: lr first, precision and masking
    as bare values, clipping as clip=, then the other keys as `name=value` (the key's last part)."""
    order = [k for k in _SHORT if k in params] + [k for k in params if k not in _SHORT]
    parts = []
    for k in order:
        v = params[k]
        label = _SHORT.get(k, k.rsplit(".", 1)[-1])
        if k == LR_KEY and isinstance(v, (int, float)):
            parts.append(f"lr={float(v):.1e}")
        elif label:
            parts.append(f"{label}={format_value(v)}")
        else:
            parts.append(format_value(v))
    return " ".join(parts)

# a setting's answer on the parent run of its sweep or ramp, each as `<name>.<setting slug>`
SETTING_METRICS = ("min_stable_lr", "max_stable_lr", "min_diverged_lr", "min_failed_lr", "recommended_lr",
                   "largest_safe_lr", "lr_at_5pct_risk", "lr_at_50pct")

# the samplers of `sweep --sampler` (checked before Ray and Optuna are imported)
SAMPLERS = ("tpe", "qmc", "random", "grid")
