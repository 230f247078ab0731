"""The trial function: what it reports to Tune, the checkpoint it keeps, a warm start from
another trial's checkpoint (a ramp's continue mode). Real Tune runs of one trial each on the
session's Ray, on the demo config (synthetic data, small CNN, CPU)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from ray import tune

from stablesweep.config import load_config
from stablesweep.sweep.options import RunOptions
from stablesweep.sweep.session import trial_trainable
from stablesweep.sweep.trainable import WARM_START, tune_result
from stablesweep.vocab import LR_KEY
from tests.conftest import DEMO

FIXED = ["training.report_interval=5", "training.warmup_steps=0", "training.schedule=constant",
         "datasets.skip_evaluation=true", "training.steps=10"]


def test_a_report_becomes_a_tune_result():
    metrics = {"step": 10, "loss": 1.0, "done": True}
    result = tune_result(metrics, "node-1", "cpu")
    assert time.time() - result.pop("reported_at") < 5
    assert result == {"step": 10, "loss": 1.0, "finished": True, "node_id": "node-1", "device": "cpu",
                      "timesteps_total": 10, "objective_is_stand_in": False}
    assert "done" in metrics  # the loop's own dict is left alone
    assert tune_result({"step": 5}, "n", "cuda")["finished"] is False  # Tune owns `done`, not the loop


def test_a_tune_row_holds_no_minus_one_and_names_a_stand_in():
    stable = tune_result({"step": 5, "verdict": "stable", "first_bad_step": -1, "at_risk_step": -1,
                          "warn_step/max_logit": -1, "warn_step/grad_spike": 3, "objective": 2.0}, "n", "cpu")
    assert (stable["first_bad_step"], stable["at_risk_step"], stable["warn_step/max_logit"]) == (None, None, None)
    assert stable["warn_step/grad_spike"] == 3 and stable["objective_is_stand_in"] is False
    diverged = tune_result({"step": 5, "verdict": "diverged", "first_bad_step": 1, "objective": 3.3}, "n", "cpu")
    assert diverged["first_bad_step"] == 1 and diverged["objective_is_stand_in"] is True


def fit(tmp_path: Path, name: str, config: dict, checkpoints: bool = True):
    cfg = load_config(DEMO, FIXED)
    trainable = trial_trainable(cfg, RunOptions(config=str(DEMO)), checkpoints=checkpoints)
    tuner = tune.Tuner(trainable, param_space=config,
                       run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), verbose=0))
    result = tuner.fit()[0]
    assert result.error is None, result.error
    reports = [json.loads(line) for line in (Path(result.path) / "result.json").open()]
    return result, reports


@pytest.fixture(scope="module")
def first(ray_cluster, tmp_path_factory):
    return fit(tmp_path_factory.mktemp("trial"), "first", {LR_KEY: 0.01})


def test_the_trial_reports_every_interval_with_its_verdict_node_and_checkpoint(ray_cluster, first):
    result, reports = first
    assert [r["step"] for r in reports] == [5, 10]
    assert [r["finished"] for r in reports] == [False, True]
    assert [r["lr"] for r in reports] == [pytest.approx(0.01)] * 2
    last = result.metrics
    # 10 steps: finite; stable only if the loss fell by monitor.min_progress (0.1), else stalled
    assert last["verdict"] == ("stable" if last["progress"] >= 0.1 else "stalled") and last["budget_steps"] == 10
    assert last["node_id"] == ray_cluster.get_runtime_context().get_node_id() and last["device"] == "cpu"
    assert result.config == {LR_KEY: 0.01}
    assert result.checkpoint is not None


def test_a_warm_start_continues_another_trials_checkpoint_at_its_own_lr(first, tmp_path):
    """The ramp's continue mode: the next rung starts from the last stable rung's model, optimizer
    and step, and trains the budget more steps at its own lr."""
    start, _ = first
    result, reports = fit(tmp_path, "warm", {LR_KEY: 0.02, "training.steps": 20, WARM_START: start.checkpoint.path},
                          checkpoints=False)
    assert [r["step"] for r in reports] == [15, 20]
    assert [r["lr"] for r in reports] == [pytest.approx(0.02)] * 2
    assert result.metrics["finished"] and result.metrics["verdict"] == "stable"
    assert result.checkpoint is None  # checkpoints=False: nothing kept
