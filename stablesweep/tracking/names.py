"""The names of what goes into MLflow: tags, metric names, run names, setting slugs, param values,
the run status of each verdict, the code version. Plain functions of plain values; no MLflow.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from stablesweep.vocab import (
    BUDGET_STEPS,
    DIVERGED,
    ERROR,
    FLOPS_PER_STEP,
    INITIAL_LOSS,
    LR_KEY,
    PRUNED,
    STABLE,
    STALLED,
    VERDICTS,
    format_value,
    py,
    short_name,
)

DEFAULT_EXPERIMENT = "stablesweep"
PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "stablesweep.trial_id"
SWEEP_TAG = "stablesweep.sweep"
KIND_TAG = "stablesweep.kind"  # sweep | ramp (parent runs), trial, compare (a report)
SETTING_TAG = "setting"  # on every trial and probe: its setting's slug (`setting_slug`)
PARENT_KINDS = ("sweep", "ramp")
COMPARE_KIND = "compare"

# the run status of each verdict: MLflow 3.17 draws FINISHED as a green tick, FAILED and KILLED as
# a red cross; only a run that trained gets the tick
STATUS = {STABLE: "FINISHED", STALLED: "FAILED", DIVERGED: "FAILED", PRUNED: "KILLED", ERROR: "FAILED"}
MEASURED = (STABLE, STALLED, PRUNED)  # verdicts whose objective is a measured loss
STAND_IN_OBJECTIVE = "stand_in_objective"  # a diverged run's objective: its initial loss, not a result
LR_MARGIN = "lr_margin"  # lr / the smallest diverged lr of the run's setting in its sweep
DIVERGED_AT_STEP = "diverged_at_step"
STEP_LOSS, STEP_GRAD_NORM = "step_loss", "step_grad_norm"  # a diverged run's last steps, raw
CONSTANTS = (INITIAL_LOSS, FLOPS_PER_STEP, BUDGET_STEPS)  # the same at every report: tags, once

_LABEL = re.compile(r"^(?:%s)(?:@\d+)?(?: |$)" % "|".join(VERDICTS))  # a verdict leading a run name


def code_version() -> dict[str, str]:
    from stablesweep import __version__

    tags = {"stablesweep.version": __version__}
    try:
        root = Path(__file__).resolve().parents[2]
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        if sha.returncode == 0 and sha.stdout.strip():
            tags["mlflow.source.git.commit"] = sha.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5)
            tags["stablesweep.git_dirty"] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


def param_value(v: Any) -> str:
    """A value as a YAML config writes it (floats exactly, 1.0e-05 not 1e-05), with `none` for
    null, as names and tables show it (vocab.format_value)."""
    import yaml

    v = py(v)
    if isinstance(v, float):
        return yaml.representer.SafeRepresenter().represent_float(v).value
    return format_value(v)


def verdict_label(verdict: str, first_bad_step: int | None = None) -> str:
    """`diverged@10` (with the step where it began), else the verdict itself."""
    if verdict == DIVERGED and first_bad_step is not None and first_bad_step >= 0:
        return f"{verdict}@{int(first_bad_step)}"
    return verdict


def run_name(verdict: str, first_bad_step: int | None, params: dict[str, Any]) -> str:
    """A finished run's name: its verdict, then its params as the sweep names them:
    `diverged@10 lr=8.2e+01 slice clip=1.0`."""

    return f"{verdict_label(verdict, first_bad_step)} {short_name(params)}".rstrip()


def name_without_verdict(name: str) -> str:
    """A run name without the verdict `finish_trial` put in front: the params' short name."""
    return _LABEL.sub("", name, count=1)


def setting_slug(setting: dict[str, Any]) -> str:
    """A setting (its categorical values, lr excluded) as a short name that MLflow takes in a
    metric name and a tag, without "/" (which would split the UI's chart sections):
    `bf16_slice_clip-1.0`; `all` when there is nothing to tell apart."""

    text = short_name({k: v for k, v in setting.items() if k != LR_KEY})
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text.replace("=", "-")) or "all"
