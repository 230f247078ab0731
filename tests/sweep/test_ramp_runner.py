"""The lr ramp end to end: real probes (Tune trials on the session's Ray), real MLflow."""
import json
import math
from pathlib import Path

import pytest

from stablesweep.config import load_config
from stablesweep.sweep.options import RampOptions
from stablesweep.sweep.ramp import BRACKETED, DIVERGED_AT_START, NEVER_DIVERGED
from stablesweep.sweep.ramp_runner import run_ramp
from stablesweep.train import run_training

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "demo.yaml"
STEPS = 30
# constant lr, no warmup, a report every 5 steps: the verdict of a probe is a function of its lr
FIXED = ["training.report_interval=5", "training.warmup_steps=0", "training.schedule=constant",
         "datasets.skip_evaluation=true"]
LO, HI = 0.1, 3.0  # the demo's boundary at 30 steps lies inside (about 0.6)


@pytest.fixture(scope="module")
def grid():
    """The boundary by brute force: every lr of a 1.25x grid over [LO, HI], trained in process."""
    n = math.ceil(math.log(HI / LO) / math.log(1.25))
    lrs = [LO * 1.25 ** k for k in range(n + 1)]
    verdicts = {}
    for lr in lrs:
        cfg = load_config(DEMO, FIXED + [f"training.steps={STEPS}", f"training.lr={lr}"])
        verdicts[lr] = run_training(cfg, device="cpu").verdict
    return verdicts


@pytest.fixture(scope="module")
def ramp(ray_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("ramp")
    opts = RampOptions(config=str(DEMO), lr_start=LO, lr_stop=HI, steps=STEPS, overrides=FIXED, out=str(out),
                       name="r", parallel=2, resolution=1.25)
    lines = []
    res = run_ramp(opts, echo=lines.append)
    return res, lines


def test_bracket_agrees_with_the_grid_at_resolution_and_costs_fewer_probes(grid, ramp):
    res, _ = ramp
    s = res.settings[0]
    assert s.status == BRACKETED
    lo, hi = s.max_stable, s.min_diverged
    assert hi / lo <= 1.25 + 1e-9
    # every grid verdict agrees with the bracket: stable at or below lo, diverged at or above hi ...
    for lr, v in grid.items():
        if lr <= lo:
            assert v == "stable", (lr, v, lo, hi)
        if lr >= hi:
            assert v == "diverged", (lr, v, lo, hi)
    # ... so the grid's boundary (first diverged grid point, last stable one below it) meets it
    g_hi = min(lr for lr, v in grid.items() if v == "diverged")
    g_lo = max(lr for lr, v in grid.items() if v == "stable" and lr < g_hi)
    assert max(lo, g_lo) < min(hi, g_hi)
    assert len(s.probes) < len(grid)


def test_ramp_files_and_mlflow(ramp):
    res, lines = ramp
    doc = json.loads((res.ramp_dir / "ramp.json").read_text())
    assert doc["kind"] == "ramp" and doc["budget_steps"] == STEPS
    x = doc["settings"][0]
    # the one rule (vocab.recommended_lr): at most 0.5 x the smallest diverged lr, never above max stable
    assert x["min_diverged_lr"] is not None
    assert x["recommended_lr"] == pytest.approx(min(x["max_stable_lr"], 0.5 * x["min_diverged_lr"]))
    assert x["probes"] == len(res.settings[0].probes) and x["train_flops"] > 0
    assert (res.ramp_dir / "ramp.png").stat().st_size > 1000
    rec = load_config(res.ramp_dir / "recommended" / "s00.yaml")
    assert rec.training.lr == pytest.approx(float(f"{x['recommended_lr']:.3g}"))
    from mlflow import MlflowClient

    client = MlflowClient(res.tracking_uri)
    parent = client.get_run(res.parent_run_id)
    assert parent.data.tags["stablesweep.kind"] == "ramp"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{res.parent_run_id}'")
    assert len(children) == x["probes"]
    assert {c.data.tags["verdict"] for c in children} == {"stable", "diverged"}
    assert any("bracketed" in ln for ln in lines)


def test_continue_mode_carries_the_step_counter_and_never_diverged_is_reported(ray_cluster, tmp_path):
    opts = RampOptions(config=str(DEMO), lr_start=0.005, lr_stop=0.02, ladder="x2", steps=10, mode="continue",
                       overrides=FIXED, out=str(tmp_path), name="c")
    res = run_ramp(opts, echo=lambda s: None)
    s = res.settings[0]
    assert s.status == NEVER_DIVERGED and s.min_diverged is None
    assert [p.lr for p in s.probes] == [0.005, 0.01, 0.02]
    assert [(p.start_step, p.steps) for p in s.probes] == [(0, 10), (10, 20), (20, 30)]
    assert json.loads((res.ramp_dir / "ramp.json").read_text())["settings"][0]["status"] == "never_diverged"


def test_diverged_at_start_is_reported_not_bracketed(ray_cluster, tmp_path):
    opts = RampOptions(config=str(DEMO), lr_start=5.0, lr_stop=10.0, ladder="x2", steps=20, overrides=FIXED,
                       out=str(tmp_path), name="d", parallel=1)
    res = run_ramp(opts, echo=lambda s: None)
    s = res.settings[0]
    assert s.status == DIVERGED_AT_START and s.max_stable is None and len(s.probes) == 1
