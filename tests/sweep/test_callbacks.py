"""The driver-side callbacks on Tune's own Trial objects (no Tune run): live MLflow logging into a
real sqlite store, and the progress lines."""
from __future__ import annotations

import pickle

import pytest
from ray.tune.experiment import Trial

from stablesweep.sweep.callbacks import MlflowCallback, ProgressCallback
from stablesweep.tracking import Tracker

LR = "training.lr"


def trial(trial_id: str, lr: float, status: str = "RUNNING") -> Trial:
    t = Trial("run_trial", config={LR: lr}, trial_id=trial_id, stub=True)
    t.set_status(status)
    return t


def report(step, verdict="stable", finished=False, **extra):
    return {"step": step, "verdict": verdict, "objective": 3.0 - step / 10, "loss": 3.0 - step / 10,
            "initial_loss": 3.0, "finished": finished,
            "budget_steps": 20, "training_iteration": step // 10, "node_id": "n1", "time_total_s": 1.5, **extra}


@pytest.fixture
def tracker(mlflow_uri):
    return Tracker(mlflow_uri)


def test_mlflow_callback_logs_a_child_run_a_trial(tracker):
    parent = tracker.start_sweep("sw", {}, tags={})
    cb = MlflowCallback(tracker, parent, [LR], "sw")
    ok, bad = trial("ok", 0.01), trial("bad", 1e3)
    for t in (ok, bad):
        cb.on_trial_start(0, [ok, bad], t)
    for step in (10, 20):
        r = report(step, finished=step == 20)
        ok.update_last_result(r)
        cb.on_trial_result(0, [ok, bad], ok, r)
    cb.on_trial_result(0, [ok, bad], ok, {**report(10), "objective": 99.0})  # a step logged already
    ok.set_status("TERMINATED")
    cb.on_trial_complete(0, [ok, bad], ok)
    bad.update_last_result(report(10, verdict="diverged", reason="nonfinite_loss", first_bad_step=4))
    bad.set_status("TERMINATED")
    cb.on_trial_complete(0, [ok, bad], bad)

    runs = {c.tags["stablesweep.trial_id"]: c for c in tracker.children(parent)}
    assert set(runs) == {"ok", "bad"}
    assert runs["ok"].params[LR] == "0.01" and runs["ok"].tags["stablesweep.sweep"] == "sw"
    assert runs["ok"].name == "stable lr=1.0e-02"
    assert runs["ok"].tags["verdict"] == "stable" and runs["ok"].status == "FINISHED"
    hist = tracker.client.get_metric_history(runs["ok"].run_id, "loss")
    assert sorted((m.step, m.value) for m in hist) == [(10, 2.0), (20, 1.0)]
    assert runs["ok"].metrics["objective"] == 1.0  # the verdict's number, logged once at the end
    assert runs["bad"].status == "FAILED" and runs["bad"].name.startswith("diverged@4 ")
    assert "budget_steps" not in runs["ok"].metrics and "training_iteration" not in runs["ok"].metrics
    b = runs["bad"].tags
    assert (b["verdict"], b["reason"], b["first_bad_step"]) == ("diverged", "nonfinite_loss", "4")


def test_mlflow_failures_never_stop_the_sweep(tmp_path, caplog):
    (tmp_path / "file").write_text("")
    broken = Tracker(f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}")  # a store under a file cannot exist
    cb = MlflowCallback(broken, "no-parent", [LR], "sw")
    t = trial("t", 0.01)
    cb.on_trial_start(0, [t], t)
    cb.on_trial_result(0, [t], t, report(10))
    cb.on_trial_error(0, [t], t)
    assert "MLflow logging failed" in caplog.text


def test_progress_lines():
    lines: list[str] = []
    cb = ProgressCallback(total=3, param_keys=[LR])
    cb.echo = lines.append
    ok, bad, crash = trial("ok", 0.01), trial("bad", 1e3), trial("crash", 0.1)
    ok.update_last_result(report(20, finished=True))
    ok.set_status("TERMINATED")
    cb.on_trial_complete(0, [ok, bad, crash], ok)
    bad.update_last_result(report(10, verdict="diverged", reason="loss_explosion", first_bad_step=7))
    bad.set_status("TERMINATED")
    cb.on_trial_complete(0, [ok, bad, crash], bad)
    crash.set_status("ERROR")
    cb.on_trial_error(0, [ok, bad, crash], crash)
    assert lines[0] == "[1/3] stable    lr=1.0e-02  steps 20/20  objective 1  1.5s  (trial ok)"
    assert lines[1] == "[2/3] diverged  lr=1.0e+03  steps 10/20  loss_explosion at step 7  1.5s  (trial bad)"
    assert lines[2] == "[3/3] error     lr=1.0e-01  trial raised an exception  (trial crash)"
    cb.on_trial_recover(0, [ok, bad, crash], ok)
    assert lines[3].startswith("[retry]  lr=1.0e-02  failed (") and "from its checkpoint at step 20" in lines[3]
    # the printer is the driver's: Tune's tuner.pkl keeps the callback without it
    assert pickle.loads(pickle.dumps(cb)).echo is None


def test_a_child_run_ends_when_its_trial_ended_not_when_the_sweep_did(tracker):
    """The run's end time is its trial's last report (`reported_at`), however late the driver
    closes it (the final reconciliation of a sweep closes every child again, minutes later)."""

    parent = tracker.start_sweep("sw", {}, tags={})
    cb = MlflowCallback(tracker, parent, [LR], "sw")
    t = trial("fast", 15.0)
    cb.on_trial_start(0, [t], t)
    start = tracker.client.get_run(tracker.children(parent)[0].run_id).info.start_time / 1000
    ended = start + 5.2
    last = report(10, verdict="diverged", reason="loss_explosion", first_bad_step=1, reported_at=ended)
    t.update_last_result(last)
    t.set_status("TERMINATED")
    cb.on_trial_complete(0, [t], t)
    run = tracker.client.get_run(tracker.children(parent)[0].run_id)
    assert run.info.end_time == round(ended * 1000)
    assert (run.info.end_time - run.info.start_time) / 1000 == pytest.approx(5.2, abs=0.002)
    assert "reported_at" not in run.data.metrics
