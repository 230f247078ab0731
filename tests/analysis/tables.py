"""Hand-built trial tables and sweeps for the analysis tests: plain pandas, no Ray, no MLflow."""
from __future__ import annotations

import pandas as pd

from stablesweep.analysis.comparison import SweepData

KEYS = ["training.lr", "training.max_grad_norm", "training.precision", "loss.masking"]
GROUPS = ["training.max_grad_norm", "training.precision", "loss.masking"]


def trial(i, lr, verdict, objective=None, initial=3.0, clip=1.0, precision="fp32", masking="slice", steps=100):
    """One row of a trials table as the sweep writes it; a diverged trial's objective is its
    initial loss (the stand-in)."""
    if objective is None:
        objective = initial if verdict == "diverged" else 1.0
    return {"trial_id": f"t{i:02d}", "training.lr": lr, "training.max_grad_norm": clip,
            "training.precision": precision, "loss.masking": masking, "verdict": verdict,
            "reason": "nonfinite_loss" if verdict == "diverged" else None,
            "first_bad_step": 40 if verdict == "diverged" else -1,
            "steps": 50 if verdict in ("diverged", "pruned") else steps, "budget_steps": steps,
            "objective": objective, "initial_loss": initial}


def sweep(name: str, rows: list[tuple], config: dict, axes: list[str], categorical: list[str],
          **kw) -> SweepData:
    """A SweepData from (lr, verdict, value of axes[1], ...) rows; objective 1 + lr when stable,
    3 (the initial loss) when diverged."""
    recs = []
    for i, (lr, verdict, *rest) in enumerate(rows):
        rec = {"trial_id": f"{name}{i}", "run_id": f"{name}-run{i}", "name": f"lr={lr:.1e}", "training.lr": lr,
               "verdict": verdict, "reason": "nonfinite_loss" if verdict == "diverged" else None,
               "first_bad_step": 5 if verdict == "diverged" else -1, "budget_steps": 100,
               "objective": 3.0 if verdict == "diverged" else 1.0 + lr, "initial_loss": 3.0, "steps": 100}
        rec.update(dict(zip(axes[1:], rest)))
        recs.append(rec)
    return SweepData(name=name, run_id=f"{name}-parent", trials=pd.DataFrame(recs), axes=axes,
                     categorical=categorical, config=config, **kw)


BASE = {"training.lr": 1e-3, "training.max_grad_norm": 1.0, "loss.masking": "slice", "training.steps": 100}


def two_sweeps() -> tuple[SweepData, SweepData]:
    """a: masking swept, clipping fixed at 1.0 (slice stable at both lrs, neg_inf diverges at 1e-2);
    b: clipping swept, masking fixed at slice, 200 steps (clip 1.0 diverges at both lrs)."""
    a = sweep("a", [(1e-3, "stable", "slice"), (1e-2, "stable", "slice"),
                    (1e-3, "stable", "neg_inf"), (1e-2, "diverged", "neg_inf")],
              BASE, ["training.lr", "loss.masking"], ["loss.masking"])
    b = sweep("b", [(1e-3, "diverged", 1.0), (1e-2, "diverged", 1.0), (1e-3, "stable", None)],
              {**BASE, "training.steps": 200}, ["training.lr", "training.max_grad_norm"], ["training.max_grad_norm"])
    return a, b
