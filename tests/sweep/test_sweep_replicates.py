"""A sweep's --replicates: K seeds at each combination's bracket, then K at its fitted 5%-risk lr, Tune
experiments of their own (its
planning without Ray; end to end on the session's Ray, with the probability boundary recorded and a
--resume that runs nothing again)."""
from __future__ import annotations

import json
import math

import pytest

from stablesweep.sweep.options import SweepOptions
from stablesweep.sweep.plan import plan_sweep
from stablesweep.sweep.runner import replicate_configs, run_sweep
from stablesweep.tracking import Tracker
from tests.conftest import DEMO
from tests.sweep.test_runner import N_GRID

# constant lr, no warmup (the demo at 20 such steps trains at 0.02 and 0.05 and blows up at 1e3)
REPLICATED = ["training.report_interval=5", "training.warmup_steps=0", "training.schedule=constant"]
REP_GRID = "training.lr: {grid: [2.0e-2, 5.0e-2, 1.0e+3]}\ntraining.max_grad_norm: {choice: [null, 1.0]}\n"


def test_replicates_go_only_into_brackets_and_say_which_settings_have_none(tmp_path):
    space = tmp_path / "grid.yaml"
    space.write_text(REP_GRID)
    plan = plan_sweep(SweepOptions(config=str(DEMO), space=str(space), sampler="grid", replicates=2,
                                   out=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()  # planning writes nothing
    rows = [(0.02, None, "stable"), (0.05, None, "stable"), (1e3, None, "diverged"),
            (0.02, 1.0, "stable"), (0.05, 1.0, "stable"), (1e3, 1.0, "stable")]
    done = __import__("pandas").DataFrame(
        [{"trial_id": f"t{i}", "training.lr": lr, "training.max_grad_norm": clip, "verdict": v, "objective": 1.0,
          "initial_loss": 3.0, "steps": 20, "budget_steps": 20} for i, (lr, clip, v) in enumerate(rows)])
    configs, skipped = replicate_configs(plan, done)
    assert skipped == ["clip=1.0"]  # clip 1.0 never failed: no bracket
    mid = math.sqrt(0.05 * 1e3)
    got = sorted((c["training.lr"], c["training.seed"]) for c in configs)
    assert got == [(0.05, 1), (pytest.approx(mid), 0), (pytest.approx(mid), 1), (1e3, 1)]
    assert all(c["training.max_grad_norm"] is None for c in configs)


def test_sweep_replicates_record_a_probability_boundary_and_resume_runs_none_again(ray_cluster, tmp_path, mlflow_uri):
    import pandas as pd

    space = tmp_path / "grid.yaml"
    space.write_text(REP_GRID)
    uri = mlflow_uri  # one trial at a time below: one worker an experiment, torch imported once
    opts = SweepOptions(config=str(DEMO), space=str(space), sampler="grid", steps=20, overrides=REPLICATED,
                        asha=False, out=str(tmp_path / "out"), name="rep", mlflow=uri, max_concurrent=1, replicates=2)
    lines: list[str] = []
    res = run_sweep(opts, echo=lines.append)
    t = res.table
    sweep, reps = t[t["phase"] == "sweep"], t[t["phase"] == "replicate"]
    assert len(sweep) == N_GRID and (sweep["seed"] == 0).all() and not res.interrupted
    assert len(reps) > 0, t[["name", "verdict", "reason"]]
    # inside each setting's bracket (its ends included), then at one lr below it (the 5%-risk lr fitted to
    # those), seeds 0 and 1, never a pair the sweep ran
    groups = {repr(g.key["training.max_grad_norm"]): g for g in res.region.groups}
    below = []
    for _, r in reps.iterrows():
        clip = None if pd.isna(r["training.max_grad_norm"]) else r["training.max_grad_norm"]
        g = groups[repr(clip)]
        if r["training.lr"] < g.max_stable_lr * 0.999:
            below.append((clip, r["training.lr"], r["seed"]))
        else:
            assert r["training.lr"] <= g.min_failed_lr * 1.001
        assert r["seed"] in (0, 1) and r["optuna_number"] == -1
        assert not (r["seed"] == 0 and ((sweep["training.lr"] == r["training.lr"]).any()))
    # each combination with a bracket: its second round at one lr, seeds 0 and 1
    by: dict[str, set] = {}
    for clip, lr, seed in below:
        by.setdefault(repr(clip), set()).add((lr, seed))
    assert by and all(len({lr for lr, _ in v}) == 1 and {sd for _, sd in v} == {0, 1} for v in by.values())
    assert any("at the lr at 5% risk fitted to them" in ln for ln in lines)
    assert set(reps["verdict"]) <= {"stable", "stalled", "diverged"}
    saved = pd.read_csv(res.files["trials"])
    assert list(saved["phase"]).count("replicate") == len(reps) and "seed" in saved.columns
    # the region per setting: its boundary, the replicates' FLOPs next to the sweep's, the 5%-risk edge
    for g in res.region.groups:
        mine = reps[reps["training.max_grad_norm"].map(lambda v: repr(None if pd.isna(v) else v))
                    == repr(g.key["training.max_grad_norm"])]
        assert g.replicates == len(mine) and g.replicate_flops == pytest.approx(mine["train_flops"].sum())
        assert g.train_flops > 0 and g.evidence and g.boundary_note is not None
        if g.lr_at_5pct_risk is not None:
            assert g.lr_at_5pct_risk < g.lr_at_50pct and g.largest_safe_lr == 0.5 * g.lr_at_5pct_risk
            assert (g.recommended_lr is None and g.recommend_note) or g.recommended_lr <= g.largest_safe_lr
    data = json.loads(res.files["json"].read_text())
    assert data["replicates"] == 2 and all("lr_at_5pct_risk" in g for g in data["groups"])
    assert "## The boundary as a probability" in res.files["md"].read_text()
    assert res.files["figure_boundary"].exists()
    # MLflow: replicates are children tagged as such, with their seed; the parent has the figure and the numbers
    tr = Tracker(uri)
    children = {c.tags["stablesweep.trial_id"]: c for c in tr.children(res.parent_run_id)}
    assert sorted(children) == sorted(t["trial_id"])
    for _, r in reps.iterrows():
        c = children[r["trial_id"]]
        assert c.tags["phase"] == "replicate" and c.params["training.seed"] == str(r["seed"])
        assert c.tags["verdict"] == r["verdict"]
    assert not any("phase" in children[tid].tags for tid in sweep["trial_id"])
    parent = tr.client.get_run(res.parent_run_id)
    assert "boundary.png" in {a.path for a in tr.client.list_artifacts(res.parent_run_id)}
    metrics = parent.data.metrics
    assert metrics["replicates"] == len(reps) and parent.data.params["replicates"] == "2"
    for g in res.region.groups:
        for name in ("min_stable_lr", "max_stable_lr", "min_diverged_lr", "recommended_lr", "largest_safe_lr",
                     "lr_at_5pct_risk",
                     "lr_at_50pct"):
            if getattr(g, name) is not None:
                key = next(k for k in metrics if k.startswith(name + ".") and metrics[k] == getattr(g, name))
                assert key.count("/") == 0
    # --resume of the finished sweep: Tune restores both experiments, nothing runs again
    def reports():
        return {p: p.read_text() for p in res.sweep_dir.glob("replicates*/trial_*/result.json")}

    before = reports()
    assert len(before) == len(reps) and len(list(res.sweep_dir.glob("replicates-at-risk/trial_*"))) == len(below)
    again = run_sweep(SweepOptions(**{**opts.__dict__, "replicates": None, "resume": True}), echo=lines.append)
    assert sorted(again.table["trial_id"]) == sorted(t["trial_id"])
    assert reports() == before
    assert len(tr.children(res.parent_run_id)) == len(t)
    assert [g.lr_at_5pct_risk for g in again.region.groups] == [g.lr_at_5pct_risk for g in res.region.groups]
