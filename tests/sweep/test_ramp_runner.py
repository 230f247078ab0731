"""The lr ramp end to end: real probes (Tune trials on the session's Ray), real MLflow."""
import json
import math
import re

import pytest

from stablesweep.config import load_config
from stablesweep.data import build_data
from stablesweep.sweep.options import RampOptions
from stablesweep.sweep.ramp import BRACKETED, DIVERGED_AT_START, NEVER_DIVERGED
from stablesweep.sweep.ramp_runner import run_ramp
from stablesweep.train import run_training
from tests.conftest import DEMO

STEPS = 30
# constant lr, no warmup, a report every 5 steps: the verdict of a probe is a function of its lr
FIXED = ["training.report_interval=5", "training.warmup_steps=0", "training.schedule=constant",
         "datasets.skip_evaluation=true"]
# the demo's edge at 30 constant-lr steps lies inside: stable at 0.05, stalled from about 0.07 (0.1, 0.2
# and 0.4 stall), diverged from about 0.6
LO, HI = 0.02, 0.4


@pytest.fixture(scope="module")
def grid():
    """The boundary by brute force: every lr of a 1.25x grid over [LO, HI], trained in process on
    one dataset built once (as a reused trial worker does: the lr does not change the data)."""
    n = math.ceil(math.log(HI / LO) / math.log(1.25))
    lrs = [LO * 1.25 ** k for k in range(n + 1)]
    verdicts = {}
    data = None
    for lr in lrs:
        cfg = load_config(DEMO, FIXED + [f"training.steps={STEPS}", f"training.lr={lr}"])
        if data is None:
            data = build_data(cfg)
        verdicts[lr] = run_training(cfg, device="cpu", data=data).verdict
    return verdicts


@pytest.fixture(scope="module")
def ramp(ray_cluster, tmp_path_factory, new_store):
    out = tmp_path_factory.mktemp("ramp")
    new_store(out / "mlflow.db")  # OUT's default store, there already
    # every rung of [LO, HI] climbed 4 at a time, then bisected 4 at a time: two batches (one trial at
    # a time in Tune: one worker for all the probes, torch imported once; a batch's probes are the same)
    opts = RampOptions(config=str(DEMO), lr_start=LO, lr_stop=HI, steps=STEPS, target_steps=STEPS, overrides=FIXED, out=str(out),
                       name="r", parallel=4, climb="step", resolution=1.25, max_concurrent=1)
    lines = []
    res = run_ramp(opts, echo=lines.append)
    return res, lines


def test_bracket_agrees_with_the_grid_at_resolution_and_costs_fewer_probes(grid, ramp):
    res, _ = ramp
    s = res.settings[0]
    assert s.status == BRACKETED
    lo, hi = s.max_stable, s.min_failed
    assert hi / lo <= 1.25 + 1e-9
    # every grid verdict agrees with the bracket: stable at or below lo, failed at or above hi ...
    for lr, v in grid.items():
        if lr <= lo:  # stable, or stalled below the band (too small an lr)
            assert v == "stable" or (v == "stalled" and lr < s.min_stable), (lr, v, lo, hi)
        if lr >= hi:
            assert v in ("diverged", "stalled"), (lr, v, lo, hi)
    # ... so the grid's boundary (first failed grid point, last stable one below it) meets it
    g_lo_band = min(lr for lr, v in grid.items() if v == "stable")
    g_hi = min(lr for lr, v in grid.items() if v == "diverged" or (v == "stalled" and lr > g_lo_band))
    g_lo = max(lr for lr, v in grid.items() if v == "stable" and lr < g_hi)
    assert max(lo, g_lo) < min(hi, g_hi)
    assert len(s.probes) < len(grid)


def _recommended_by_the_rule(x: dict, cap: float) -> None:
    """A ramp.json row: the largest safe lr is `cap`; the recommended lr is the stable probe trained
    from scratch (not a replicate) at or below it with the best objective, or None with a note."""
    assert x["largest_safe_lr"] == pytest.approx(cap)
    safe = [(p["objective"], p["lr"]) for p in x["probe_list"] if p["verdict"] == "stable" and p["start_step"] == 0
            and p["seed"] is None and p["lr"] <= cap * (1 + 1e-9) and p["objective"] == p["objective"]]
    if not safe:
        assert x["recommended_lr"] is None and x["recommend_note"]
        return
    assert (x["recommended_objective"], x["recommended_lr"]) == min(safe)


def test_ramp_files_and_mlflow(ramp):
    res, lines = ramp
    doc = json.loads((res.ramp_dir / "ramp.json").read_text())
    assert doc["kind"] == "ramp" and doc["budget_steps"] == STEPS
    x = doc["settings"][0]
    # the largest safe lr is 0.5 x the smallest failed lr; the recommended lr the best-training probe
    # at or below it, among the climb's and the lrs sampled below it from scratch (--samples 3)
    assert x["min_failed_lr"] is not None and x["rule"] == "min_failed_lr"
    _recommended_by_the_rule(x, 0.5 * x["min_failed_lr"])
    samples = [p for p in x["probe_list"] if p["phase"] == "sample"]
    assert samples and all(p["start_step"] == 0 and p["lr"] <= x["largest_safe_lr"] * 1.001 for p in samples)
    assert x["single_seed"] is True and "single-seed estimate" in (res.ramp_dir / "ramp.md").read_text()
    assert x["probes"] == len(res.settings[0].probes) and x["train_flops"] > 0
    assert (res.ramp_dir / "ramp.png").stat().st_size > 1000
    assert sorted(p.name for p in (res.ramp_dir / "recommended").iterdir()) == ["config.yaml"]  # one setting
    assert x["recommended_file"] == "recommended/config.yaml" and x["recommended_file"] in res.files
    rec = load_config(res.ramp_dir / "recommended" / "config.yaml")
    assert rec.training.lr == x["recommended_lr"]
    from mlflow import MlflowClient

    client = MlflowClient(res.tracking_uri)
    parent = client.get_run(res.parent_run_id)
    assert parent.data.tags["stablesweep.kind"] == "ramp"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{res.parent_run_id}'")
    assert len(children) == x["probes"]
    assert {"stable"} < {c.data.tags["verdict"] for c in children} <= {"stable", "stalled", "diverged"}
    # the answer as numbers on the parent, named as a sweep names them (one setting: `all`)
    metrics = parent.data.metrics
    for name in ("min_stable_lr", "max_stable_lr", "min_diverged_lr", "recommended_lr", "largest_safe_lr"):
        assert metrics.get(f"{name}.all") == (pytest.approx(x[name]) if x[name] is not None else None), name
    for c in children:  # each probe: its own params, the sweep and setting tags, its true duration
        assert c.data.tags["stablesweep.sweep"] == "r" and c.data.tags["setting"] == "all"
        assert float(c.data.params["training.lr"]) > 0 and c.data.params["phase"]
        assert c.info.end_time - c.info.start_time > 200  # ms: the probe's training, not the logging
        margin = c.data.metrics.get("lr_margin")
        lr = float(c.data.params["training.lr"])
        assert margin == (pytest.approx(lr / x["min_diverged_lr"]) if x["min_diverged_lr"] else None)
    assert any("bracketed" in ln for ln in lines)
    # the printed link: the saved view of this ramp's stable probes, best objective first (docs/mlflow.md)
    (key,) = [m.group(1) for ln in lines if (m := re.search(
        rf"the stable probes, best first: http://127\.0\.0\.1:5000/#/experiments/{parent.info.experiment_id}/runs"
        r"\?workflowType=machine_learning&viewStateShareKey=(stablesweep-[0-9a-f]{16})$", ln))]
    view = json.loads(client.get_experiment(parent.info.experiment_id).tags[f"mlflow.sharedViewState.{key}"])
    assert view["searchFilter"] == f"tags.verdict = 'stable' and tags.`mlflow.parentRunId` = '{res.parent_run_id}'"
    assert (view["orderByKey"], view["orderByAsc"]) == ("metrics.`objective`", True)


def test_a_resume_with_other_options_than_the_start_is_refused_naming_them(ramp, cli):
    """`ramp --resume` goes on with the plan the ramp was started with: another --parallel is an
    error for the user (exit 2) that names it, before anything runs."""
    res, _ = ramp
    sets = [a for o in FIXED for a in ("--set", o)]
    p = cli("ramp", DEMO, "--lr-start", LO, "--lr-stop", HI, "--steps", STEPS, "--target-steps", STEPS, *sets,
            "--climb", "step", "--resolution", 1.25, "--out", res.ramp_dir.parent, "--name", "r", "--parallel", 2,
            "--resume")
    assert p.returncode == 2 and "--parallel (4, now 2)" in p.stderr, p.stderr


def test_continue_mode_carries_the_step_counter_and_never_diverged_is_reported(ray_cluster, tmp_path, new_store):
    new_store(tmp_path / "mlflow.db")
    opts = RampOptions(config=str(DEMO), lr_start=0.005, lr_stop=0.02, ladder="x2", steps=10, target_steps=10, mode="continue",
                       samples=0, overrides=FIXED, out=str(tmp_path), name="c")  # the climb alone
    res = run_ramp(opts, echo=lambda s: None)
    s = res.settings[0]
    assert s.status == NEVER_DIVERGED and s.min_diverged is None
    assert [p.lr for p in s.probes] == [0.005, 0.01, 0.02]
    assert [(p.start_step, p.steps) for p in s.probes] == [(0, 10), (10, 20), (20, 30)]
    assert json.loads((res.ramp_dir / "ramp.json").read_text())["settings"][0]["status"] == "never_diverged"


def test_diverged_at_start_is_reported_not_bracketed(ray_cluster, tmp_path, new_store):
    new_store(tmp_path / "mlflow.db")
    opts = RampOptions(config=str(DEMO), lr_start=5.0, lr_stop=10.0, ladder="x2", steps=20, target_steps=20, overrides=FIXED,
                       out=str(tmp_path), name="d", parallel=1)
    res = run_ramp(opts, echo=lambda s: None)
    s = res.settings[0]
    assert s.status == DIVERGED_AT_START and s.max_stable is None and len(s.probes) == 1
    from mlflow import MlflowClient

    client = MlflowClient(res.tracking_uri)
    parent = client.get_run(res.parent_run_id)
    assert parent.data.metrics["min_diverged_lr.all"] == 5.0 and "max_stable_lr.all" not in parent.data.metrics
    (probe,) = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{res.parent_run_id}'")
    bad = s.probes[0].first_bad_step
    assert probe.info.status == "FAILED" and probe.info.run_name.startswith(f"diverged@{bad} lr=5.0e+00")
    assert probe.data.metrics["lr_margin"] == 1.0 and probe.data.metrics["diverged_at_step"] == bad
    steps = [m.step for m in client.get_metric_history(probe.info.run_id, "step_grad_norm")]
    assert steps and min(steps) <= bad  # the steps that led there, at their own steps


def test_the_demo_ramp_brackets_below_any_stall_and_replicates_give_a_probability(ray_cluster, tmp_path, new_store):
    """The demo, short and coarse: the bracket ends at or below the first stall above the band
    (if any; stalls below it are too small an lr); with --replicates 2 the ramp fits P(fails | lr)
    and its largest safe lr is 0.5 x the 5%-risk lr, the recommended lr a measured one at or below it."""

    new_store(tmp_path / "mlflow.db")
    opts = RampOptions(config=str(DEMO), lr_start=0.05, lr_stop=3.2, ladder="x2", steps=STEPS, target_steps=STEPS, resolution=2.0,
                       overrides=FIXED, out=str(tmp_path), name="q", parallel=2, replicates=2, max_concurrent=1)
    lines = []
    res = run_ramp(opts, echo=lines.append)
    s = res.settings[0]
    assert s.status == BRACKETED and s.max_stable < s.min_failed, lines
    for p in s.tested:
        if p.verdict == "stalled":  # too small (below the band) or the edge (the bracket ends at or below it)
            assert p.lr < s.min_stable or p.lr >= s.min_failed, (p.lr, s.min_stable, s.min_failed)
    assert all(p.lr <= s.max_stable for p in s.tested if p.verdict == "stable" and p.lr < s.min_failed)
    x = json.loads((res.ramp_dir / "ramp.json").read_text())["settings"][0]
    # 2 seeds in the bracket (4 runs: each end's seed 0 is its probe), then 2 at the 5%-risk lr so fitted
    inside = [p for p in s.replicates if s.max_stable * 0.999 <= p.lr <= s.min_failed * 1.001]
    at_risk = [p for p in s.replicates if p not in inside]
    assert x["replicates"] == len(s.replicates) == 6 and len(inside) == 4 and {p.seed for p in s.replicates} == {0, 1}
    assert len({p.lr for p in at_risk}) == 1 and at_risk[0].lr < s.max_stable and len(at_risk) == 2
    assert x["replicate_flops"] > 0 and x["train_flops"] > 0 and x["evidence"]
    assert len({e["lr"] for e in x["evidence"]}) == len(x["evidence"])
    assert x["rule"] == "lr_at_5pct_risk" and x["single_seed"] is False
    _recommended_by_the_rule(x, 0.5 * x["lr_at_5pct_risk"])
    assert (res.ramp_dir / "ramp_boundary.png").stat().st_size > 1000
    assert "The boundary as a probability" in (res.ramp_dir / "ramp.md").read_text()
    assert any("P(fails | lr)" in ln and "FLOPs" in ln for ln in lines)
