"""A sweep as the runner logs it, for the tests of the tracking package: six trials (one per
verdict, two settings) and what `log_sweep` writes of them through `Tracker`."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from stablesweep.analysis.region import analyze, lr_margins
from stablesweep.tracking import Tracker, param_value

EXPERIMENT = "tracking-test"
SPACE_KEYS = ["training.lr", "training.max_grad_norm", "loss.masking"]
# (trial, verdict, reason, first bad step, lr, clip, objective): one trial per verdict, two settings
TRIALS = [("t0", "stable", None, -1, 1e-3, 1.0, 0.5),
          ("t1", "diverged", "nonfinite_loss", 10, 82.0, 1.0, 3.1),
          ("t2", "pruned", "scheduler", -1, 1e-2, 1.0, 2.0),
          ("t3", "error", "ValueError: boom", -1, 1e-4, None, None),
          ("t4", "stalled", "no_progress", -1, 1e-6, None, 3.0),
          ("t5", "stable", None, -1, 3e-3, 1.0, 0.4)]


def trials_table() -> pd.DataFrame:
    return pd.DataFrame([{"trial_id": t, "verdict": v, "training.lr": lr, "training.max_grad_norm": clip,
                          "loss.masking": "slice", "objective": obj if v != "error" else None, "initial_loss": 3.2,
                          "steps": 20, "budget_steps": 20} for t, v, _, _, lr, clip, obj in TRIALS])


def log_sweep(uri: str, files: Path) -> dict:
    """One sweep as the runner writes it: a parent with params and texts; a trial per verdict with
    live reports (their constants among them), its verdict; then, from the region of the trials
    table, the setting numbers on the parent and each trial's setting and margin; the parent's
    files from `files` (a folder of its own)."""
    tr = Tracker(uri, EXPERIMENT)
    parent = tr.start_sweep("s1", {"sampler": "grid", "seed": 0, "asha": False, "note": None,
                                   **{f"p{i}": i for i in range(150)}},  # more than one batch of params
                            tags={"sweep_dir": "/tmp/s1"}, texts={"config.yaml": "training:\n  lr: 0.001\n"})
    table = trials_table()
    region = analyze(table, group_keys=["training.max_grad_norm", "loss.masking"], param_keys=SPACE_KEYS,
                     importance=False)
    margins = lr_margins(table, region)
    runs = {}
    for i, (tid, verdict, reason, bad, lr, clip, obj) in enumerate(TRIALS):
        params = {"training.lr": lr, "training.max_grad_norm": clip, "loss.masking": "slice"}
        run = tr.trial_run(parent, tid, f"lr={lr:.1e} slice clip={param_value(clip)}", params,
                           setting={"training.max_grad_norm": clip, "loss.masking": "slice"})
        for step in (5, 10):  # a warning at step 7 (the monitor reports -1 before it)
            tr.log_trial_metrics(run, {"objective": 2.0 / step, "loss": 1.5 / step, "initial_loss": 3.2,
                                       "flops_per_step": 1e6, "budget_steps": 20, "flag": True, "name": "x",
                                       "warn_step/max_logit": -1 if step < 7 else 7, "at_risk_step": -1}, step)
        summary = {"objective": obj, "steps": 10 if verdict in ("diverged", "pruned") else 20}
        tr.finish_trial(run, verdict, reason, bad, summary, tags={"node_id": "n1"})
        tr.set_margin(run, margins.iloc[i])
        runs[tid] = run
    tr.log_setting_metrics(parent, (a.setting_metrics() for a in region.answers()))
    (files / "stable_region.md").write_text("# region\n")
    (files / "figures").mkdir()
    (files / "figures" / "a.png").write_bytes(b"\x89PNG")
    (files / "recommended").mkdir()
    (files / "recommended" / "config.yaml").write_text("# recommended\n")  # one setting's: named as the run's config
    tr.end_sweep(parent, {"trials_stable": 2.0}, tags={"interrupted": "false"},
                 artifacts=[files / "stable_region.md", files / "figures", files / "missing.txt",
                            files / "recommended" / "config.yaml"])
    return {"parent": parent, "trials": runs, "region": region}
