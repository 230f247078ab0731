"""Which datasets are evaluated: conflicting skip_evaluation settings, nothing evaluated, no val split."""
from __future__ import annotations

from typing import Any

from stablesweep.config import data_source

from ..findings import Finding
from .context import Context


def check_skip_evaluation(ctx: Context) -> list[Finding]:
    cfg = ctx.cfg
    ds = cfg.datasets
    names = cfg.dataset_names
    evaluated = [n for n in names if not cfg.eval_skipped(n)]
    skipped = [n for n in names if cfg.eval_skipped(n)]
    out = []
    overriding = [n for n in names if ds.dataset_configs[n].skip_evaluation is False]
    if ds.skip_evaluation and overriding:
        everyone = len(overriding) == len(names)
        ev = [f"datasets.skip_evaluation: true, and datasets.dataset_configs.<name>.skip_evaluation: false "
              f"for {', '.join(overriding)}",
              "the per-dataset setting wins (Config.eval_skipped): "
              f"evaluated: {', '.join(evaluated) or 'none'}; skipped: {', '.join(skipped) or 'none'}"]
        title = ("datasets.skip_evaluation: true has no effect: every dataset sets skip_evaluation: false"
                 if everyone else "conflicting skip_evaluation settings: the global true is overridden for "
                 + ", ".join(overriding))
        changes: dict[str, Any] = {"datasets.skip_evaluation": False}
        for n in names:
            changes[f"datasets.dataset_configs.{n}.skip_evaluation"] = cfg.eval_skipped(n)
        out.append(Finding("eval.skip_conflict", "warning", title, ev,
                           "state it once: datasets.skip_evaluation: false and an explicit per-dataset value; "
                           "the fixed config does that without changing what is evaluated",
                           "datasets.skip_evaluation", changes))
    no_val = [n for n in names if ds.dataset_configs[n].val is None
              and data_source(ds.dataset_configs[n]) != "synthetic"]
    really = [n for n in evaluated if n not in no_val]
    if not really:
        why = []
        if skipped:
            why.append(f"skip_evaluation resolves to true for {', '.join(skipped)}")
        if no_val:
            why.append(f"no val split configured for {', '.join(no_val)}")
        out.append(Finding("eval.none", "info", "no dataset is evaluated: an eval Loss: inf would go unseen; only "
                           "train metrics are reported", why,
                           "evaluate at least a small eval_ratio of each dataset's val split"))
    elif no_val:
        out.append(Finding("eval.no_val", "info", f"not evaluated (no val split): {', '.join(no_val)}",
                           [f"datasets.dataset_configs.{n}.val is not set" for n in no_val],
                           "add a val manifest to see per-dataset eval loss and accuracy"))
    return out
