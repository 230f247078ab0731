"""`Tracker` against a real embedded MLflow store (sqlite, one for the module), read back through
MLflow's own `MlflowClient` as a person sees it in the UI: statuses, names, tags, params, the
per-setting numbers on sweep and ramp parents, the steps that led a real training run to diverge,
what of a report is a metric (`trial_metrics`). No Ray, no mocks."""
from __future__ import annotations

import math
import pickle
import time
from pathlib import Path

import pytest

from stablesweep.config import load_config
from stablesweep.tracking import (
    DIVERGED_AT_STEP,
    KIND_TAG,
    PARENT_TAG,
    SETTING_TAG,
    STAND_IN_OBJECTIVE,
    STEP_GRAD_NORM,
    STEP_LOSS,
    SWEEP_TAG,
    TRIAL_TAG,
    RunRecord,
    Tracker,
    TrackerReader,
    param_value,
    trial_metrics,
)
from tests.tracking.sample import EXPERIMENT, TRIALS

ROOT = Path(__file__).resolve().parents[2]


def test_parent_run_holds_params_tags_texts_and_files(client, sweep):
    run = client.get_run(sweep["parent"])
    assert run.info.status == "FINISHED" and run.info.run_name == "s1"
    tags = run.data.tags
    assert tags[KIND_TAG] == "sweep" and tags[SWEEP_TAG] == "s1" and tags["sweep_dir"] == "/tmp/s1"
    assert tags["interrupted"] == "false" and tags["stablesweep.version"]
    params = run.data.params
    assert (params["sampler"], params["seed"], params["asha"], params["note"]) == ("grid", "0", "false", "none")
    assert len([k for k in params if k.startswith("p")]) == 150
    assert run.data.metrics["trials_stable"] == 2.0
    arts = {a.path for a in client.list_artifacts(sweep["parent"])}
    assert arts == {"config.yaml", "stable_region.md", "figures", "recommended"}  # a missing file is skipped
    assert [a.path for a in client.list_artifacts(sweep["parent"], "figures")] == ["figures/a.png"]
    # a recommended/<setting>.yaml keeps its folder, so recommended/config.yaml never replaces the run's config
    assert [a.path for a in client.list_artifacts(sweep["parent"], "recommended")] == ["recommended/config.yaml"]
    assert "# recommended" not in Path(client.download_artifacts(sweep["parent"], "config.yaml")).read_text()


def test_tags_and_params_hold_no_sentinels(client, sweep):
    for tid, verdict, reason, bad, lr, clip, _ in TRIALS:
        run = client.get_run(sweep["trials"][tid])
        tags = run.data.tags
        assert tags[PARENT_TAG] == sweep["parent"] and tags[TRIAL_TAG] == tid and tags[KIND_TAG] == "trial"
        assert tags[SWEEP_TAG] == "s1" and tags["node_id"] == "n1"  # the sweep tag comes from the parent
        assert tags["verdict"] == verdict
        assert tags[SETTING_TAG] == ("slice_clip-1.0" if clip else "slice_clip-none")
        assert tags.get("first_bad_step") == ("10" if verdict == "diverged" else None)
        if verdict == "error":
            assert tags["error"] == reason and "reason" not in tags
        else:
            assert tags.get("reason") == reason
        # the constants: tags, written once, as a config writes numbers
        assert (tags["initial_loss"], tags["flops_per_step"], tags["budget_steps"]) == ("3.2", "1000000.0", "20")
        assert run.data.params == {"training.lr": param_value(lr), "training.max_grad_norm": "1.0" if clip else "none",
                                   "loss.masking": "slice"}
        # no -1 for "no warning yet" in the charts: a warning step only once there is one
        assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "warn_step/max_logit")] == \
            [(10, 7.0)]
        assert "at_risk_step" not in run.data.metrics


def test_objective_only_where_it_was_measured(client, sweep):
    """Sorting by objective ranks measured runs only: a diverged run's stand-in is apart."""
    for tid, verdict, _, _, _, _, obj in TRIALS:
        metrics = client.get_run(sweep["trials"][tid]).data.metrics
        if verdict in ("stable", "stalled", "pruned"):
            assert metrics["objective"] == obj and STAND_IN_OBJECTIVE not in metrics, tid
        elif verdict == "diverged":
            assert metrics[STAND_IN_OBJECTIVE] == obj and "objective" not in metrics
        else:
            assert "objective" not in metrics and STAND_IN_OBJECTIVE not in metrics
        assert not {"initial_loss", "flops_per_step", "budget_steps", "flag", "name"} & set(metrics)
    run_id = sweep["trials"]["t0"]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")] == [(5, 0.3), (10, 0.15)]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "objective")] == [(20, 0.5)]
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    ranked = client.search_runs([exp], f"tags.`{PARENT_TAG}` = '{sweep['parent']}'", order_by=["metrics.objective"])
    assert [r.data.tags["verdict"] for r in ranked][:4] == ["stable", "stable", "pruned", "stalled"]


def test_per_setting_numbers_on_the_parent_and_the_margin_of_each_trial(client, sweep):
    metrics = client.get_run(sweep["parent"]).data.metrics
    # clip 1.0: stable from 1e-3 up to 3e-3, diverged at 82, largest safe lr 0.5 x 82, recommended the
    # best-objective stable lr at or below it (3e-3); clip
    # none: nothing stable, nothing diverged (an error and a stall): no numbers at all, no sentinels
    assert {k: v for k, v in metrics.items() if "." in k} == {
        "min_stable_lr.slice_clip-1.0": 1e-3, "max_stable_lr.slice_clip-1.0": 3e-3,
        "min_diverged_lr.slice_clip-1.0": 82.0, "min_failed_lr.slice_clip-1.0": 82.0,
        "recommended_lr.slice_clip-1.0": 3e-3, "largest_safe_lr.slice_clip-1.0": 41.0}
    for tid, _, _, _, lr, clip, _ in TRIALS:
        got = client.get_run(sweep["trials"][tid]).data.metrics.get("lr_margin")
        assert got == (pytest.approx(lr / 82.0) if clip else None), tid


def test_a_ramp_logged_after_the_fact(uri, client):
    """A ramp: its parent of kind ramp with the same per-setting names; each probe created at its
    true start, its reports at their true times and steps, ended at its true end."""
    tr = Tracker(uri, EXPERIMENT)
    parent = tr.start_sweep("r1", {"lr_start": 1e-3}, tags={}, kind="ramp")
    t0 = time.time() - 3600
    setting = {"training.precision": "bf16", "loss.masking": "slice"}
    for i, (lr, verdict, bad) in enumerate([(1e-3, "stable", -1), (1e-1, "diverged", 7)]):
        start = t0 + 100 * i
        run = tr.trial_run(parent, f"s00-ladder-{lr:.6e}", f"lr={lr:.1e} bf16 slice ladder",
                           {**setting, "training.lr": lr, "phase": "ladder"}, setting=setting, started_at=start)
        for step in (10, 20):
            tr.log_trial_metrics(run, {"loss": 1.0 / step, "initial_loss": 3.0}, step, timestamp=start + step)
        tr.finish_trial(run, verdict, "loss_explosion" if bad >= 0 else None, bad, {"objective": 0.9, "steps": 20},
                        ended_at=start + 30)
        got = client.get_run(run)
        assert (got.info.start_time, got.info.end_time) == (round(start * 1000), round((start + 30) * 1000))
        assert sorted(m.timestamp for m in client.get_metric_history(run, "loss")) == [round((start + s) * 1000)
                                                                                       for s in (10, 20)]
        assert got.data.tags[SWEEP_TAG] == "r1" and got.data.tags[SETTING_TAG] == "bf16_slice"
        assert got.data.params["phase"] == "ladder" and got.data.params["training.lr"] == param_value(lr)
    tr.log_setting_metrics(parent, [(setting, {"min_stable_lr": 1e-4, "max_stable_lr": 1e-3, "min_diverged_lr": 1e-1,
                                               "recommended_lr": 5e-4, "lr_at_5pct_risk": None, "lr_at_50pct": 2e-2,
                                               "largest_safe_lr": 2.5e-4, "probes": 2})])
    tr.end_sweep(parent, {"probes": 2.0}, tags={})
    run = client.get_run(parent)
    assert run.data.tags[KIND_TAG] == "ramp"
    assert run.data.metrics == {"probes": 2.0, "min_stable_lr.bf16_slice": 1e-4, "max_stable_lr.bf16_slice": 1e-3,
                                "min_diverged_lr.bf16_slice": 1e-1, "recommended_lr.bf16_slice": 5e-4,
                                "lr_at_50pct.bf16_slice": 2e-2, "largest_safe_lr.bf16_slice": 2.5e-4}


@pytest.fixture(scope="module")
def diverged_run():
    """A real short training run that diverges (the demo at lr 1e3, CPU): its reports and result."""
    from stablesweep.train import run_training

    cfg = load_config(ROOT / "configs" / "demo.yaml",
                      ["training.lr=1e3", "training.steps=20", "training.report_interval=10"])
    reports: list[dict] = []
    result = run_training(cfg, report=lambda m, ckpt: reports.append(dict(m)), device="cpu")
    assert result.verdict == "diverged" and result.first_bad_step >= 0 and result.history
    return reports, result


def test_a_diverged_run_shows_the_steps_that_led_there(uri, client, diverged_run):
    """Fed as the trial callback feeds it, the run holds every report, and, from the last one,
    the raw loss and gradient norm of its last steps at their own steps around the first bad step."""
    reports, result = diverged_run
    tr = Tracker(uri, EXPERIMENT)
    parent = tr.start_sweep("real", {}, tags={})
    params = {"training.lr": 1e3, "loss.masking": "slice", "training.max_grad_norm": 1.0}
    run = tr.trial_run(parent, "real0", "lr=1.0e+03 slice clip=1.0", params, setting=params)
    for m in reports:
        tr.log_trial_metrics(run, trial_metrics(m), m["step"])
    last = reports[-1]
    tr.log_trial_history(run, last["history"], last["first_bad_step"])
    tr.finish_trial(run, last["verdict"], last["reason"], last["first_bad_step"],
                    {"objective": last["objective"], "steps": last["step"]})

    bad = result.first_bad_step
    got = client.get_run(run)
    assert got.info.status == "FAILED"
    assert got.info.run_name == f"diverged@{bad} lr=1.0e+03 slice clip=1.0"
    assert got.data.tags["reason"] == result.reason and got.data.tags["first_bad_step"] == str(bad)
    assert got.data.metrics[DIVERGED_AT_STEP] == bad
    assert got.data.metrics[STAND_IN_OBJECTIVE] == pytest.approx(result.objective) and "objective" not in got.data.metrics
    assert float(got.data.tags["initial_loss"]) == pytest.approx(result.initial_loss)
    assert sorted(m.step for m in client.get_metric_history(run, "loss")) == [m["step"] for m in reports]
    want = {s: (loss, gnorm) for s, loss, gnorm in result.history}
    assert min(want) <= max(0, bad - 2) and bad <= max(want)  # the history covers the first bad step
    if result.reason == "loss_explosion":  # the step where the raw loss crossed the 4x line, not where a rule armed
        assert not want[bad][0] <= 4 * result.initial_loss
        assert all(want[s][0] <= 4 * result.initial_loss for s in want if s < bad)
    losses = {m.step: m.value for m in client.get_metric_history(run, STEP_LOSS)}
    gnorms = {m.step: m.value for m in client.get_metric_history(run, STEP_GRAD_NORM)}
    for logged, i in ((losses, 0), (gnorms, 1)):
        # every finite value at its own step; inf and NaN left out (MLflow: 1.8e308, or a hidden chart)
        assert logged == pytest.approx({s: v[i] for s, v in want.items() if math.isfinite(v[i])}, rel=1e-6)
        assert all(math.isfinite(v) for v in logged.values())
    assert all(s in losses for s in range(min(want), bad))  # the steps before the first bad one: all there


def test_the_early_warning_flag_is_a_0_1_metric_and_a_tag(uri, client, diverged_run):
    """`at_risk` (a bool in the reports, which metrics leave out) is read back from MLflow as a
    0/1 metric at each report step and, once raised, a tag naming the signal and its step."""
    reports, result = diverged_run
    assert result.at_risk and reports[-1]["at_risk"]  # lr 1e3: a signal crosses before the end
    tr = Tracker(uri, EXPERIMENT)
    parent = tr.start_sweep("risk", {}, tags={})
    run = tr.trial_run(parent, "risk0", "lr=1.0e+03", {"training.lr": 1e3})
    calm = tr.trial_run(parent, "calm0", "lr=1.0e-03", {"training.lr": 1e-3})
    for m in reports:
        tr.log_at_risk(run, m, m["step"])
        tr.log_at_risk(calm, {**m, "at_risk": False, "at_risk_signal": None, "at_risk_step": -1}, m["step"])
    flags = {m.step: m.value for m in client.get_metric_history(run, "at_risk")}
    assert flags == {m["step"]: float(m["at_risk"]) for m in reports}
    assert client.get_run(run).data.tags["at_risk"] == f"{result.at_risk_signal} at step {result.at_risk_step}"
    calm_run = client.get_run(calm)
    assert calm_run.data.metrics["at_risk"] == 0.0 and "at_risk" not in calm_run.data.tags
    found = client.search_runs([calm_run.info.experiment_id], "metrics.at_risk = 1")
    assert run in {r.info.run_id for r in found} and calm not in {r.info.run_id for r in found}


def test_inf_and_nan_are_left_out_of_the_charts(uri, client):
    """MLflow would store inf as 1.8e308 and its UI hides the chart of a metric whose latest value
    is NaN: non-finite values are not logged, live or in the history."""
    tr = Tracker(uri, EXPERIMENT)
    run = tr.trial_run(tr.start_sweep("nan", {}, tags={}), "n0", "lr=1.0e+00", {"training.lr": 1.0})
    tr.log_trial_metrics(run, {"loss": 2.0, "last_loss": math.inf, "grad_norm": math.nan}, 10)
    tr.log_trial_history(run, [(7, 1.5, 2.0), (8, math.inf, math.nan), (9, math.nan, 3.0)], 8)
    history = {k: {m.step: m.value for m in client.get_metric_history(run, k)}
               for k in ("loss", "last_loss", "grad_norm", STEP_LOSS, STEP_GRAD_NORM, DIVERGED_AT_STEP)}
    assert history == {"loss": {10: 2.0}, "last_loss": {}, "grad_norm": {}, STEP_LOSS: {7: 1.5},
                       STEP_GRAD_NORM: {7: 2.0, 9: 3.0}, DIVERGED_AT_STEP: {8: 8.0}}


def test_a_resumed_sweep_finds_its_runs_again(uri, client, sweep):
    tr = pickle.loads(pickle.dumps(Tracker(uri, EXPERIMENT)))  # as a callback travels
    parent = sweep["parent"]
    tr.resume_sweep(parent)
    assert client.get_run(parent).info.status == "RUNNING"
    run_id = tr.trial_run(parent, "t2", "ignored", {"training.lr": 5.0})
    assert run_id == sweep["trials"]["t2"]
    assert client.get_run(run_id).info.status == "RUNNING"  # reopened
    assert client.get_run(run_id).data.params["training.lr"] == "0.01"  # not logged twice
    assert tr.last_step(run_id) == 10
    tr.finish_trial(run_id, "pruned", "scheduler", -1, {"objective": 2.0, "steps": 10})
    assert client.get_run(run_id).info.run_name == "pruned lr=1.0e-02 slice clip=1.0"  # one verdict in front
    tr.end_sweep(parent, {}, tags={})
    assert client.get_run(parent).info.status == "FINISHED"
    assert len(tr.children(parent)) == len(TRIALS)
    assert parent in [r.run_id for r in tr.sweep_runs()]


def test_report_run(uri, client, tmp_path):
    (tmp_path / "report.md").write_text("# report\n")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "parallel.png").write_bytes(b"\x89PNG")
    note = "x" * 8000
    run_id = Tracker(uri, EXPERIMENT).log_report("compare a vs b", {"sweeps": "a,b", "top": ""},
                                                 {"stablesweep.compared": "a,b"},
                                                 [tmp_path / "report.md", tmp_path / "figures"],
                                                 metrics={"configs": 7.0}, note=note)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "compare a vs b"
    assert run.data.tags[KIND_TAG] == "compare" and run.data.tags["stablesweep.compared"] == "a,b"
    content = run.data.tags["mlflow.note.content"]
    assert content.startswith("x" * 7000) and len(content) < len(note)
    assert content.endswith("(truncated: the whole report is the artifact report.md)")
    assert run.data.params == {"sweeps": "a,b", "top": ""} and run.data.metrics == {"configs": 7.0}
    assert {a.path for a in client.list_artifacts(run_id)} == {"report.md", "figures"}
    reader = TrackerReader(uri, EXPERIMENT)
    assert [r.run_id for r in reader.parent_runs(kinds=("compare",))] == [run_id]
    assert run_id not in {r.run_id for r in reader.parent_runs()}  # a report is no sweep


def test_children_are_plain_records_and_runs_close_and_delete(uri, client):
    tr = Tracker(uri, EXPERIMENT)
    parent = tr.start_sweep("records", {}, tags={})
    a = tr.trial_run(parent, "a", "lr=1.0e+00", {"training.lr": 1.0})
    b = tr.trial_run(parent, "b", "lr=2.0e+00", {"training.lr": 2.0})
    kids = {r.tags[TRIAL_TAG]: r for r in tr.children(parent)}
    assert all(isinstance(r, RunRecord) for r in kids.values()) and set(kids) == {"a", "b"}
    assert (kids["a"].run_id, kids["a"].name, kids["a"].status) == (a, "lr=1.0e+00", "RUNNING")
    assert kids["a"].params == {"training.lr": "1.0"} and kids["a"].tags[PARENT_TAG] == parent
    tr.close_run(a)
    assert client.get_run(a).info.status == "KILLED"
    tr.delete_run(b)
    assert client.get_run(b).info.lifecycle_stage == "deleted"
    assert [r.run_id for r in tr.children(parent)] == [a]  # a deleted run is in MLflow's trash only
    tr.close_run(parent, "FINISHED")
    [record] = [r for r in tr.sweep_runs() if r.run_id == parent]
    assert isinstance(record, RunRecord) and record.status == "FINISHED" and record.tags[KIND_TAG] == "sweep"


def test_the_metrics_of_a_report():
    """A sweep's trial charts every number of its report but Tune's bookkeeping, the step, tags and
    params; a ramp's probe, reading rows that also hold the flattened config and Tune's columns,
    charts the numbers every report holds. Bools are never metrics."""
    report = {"step": 10, "budget_steps": 20, "first_bad_step": -1, "verdict": "stable", "reason": None,
              "finished": False, "objective": 1.0, "loss": 1.2, "nonfinite_steps": 0, "at_risk": False,
              "at_risk_signal": None, "at_risk_step": -1, "signal/max_logit": 3.0, "eval_loss/a": 1.1,
              "initial_loss": 3.2, "flops_per_step": 1e6, "node_id": "n1", "device": "cpu", "training_iteration": 2,
              "time_total_s": 1.5, "time_this_iter_s": 0.5, "timestamp": 1700000000, "pid": 7, "trial_id": "t0",
              "config": {"training.lr": 0.1}}
    assert trial_metrics(report) == {"objective": 1.0, "loss": 1.2, "nonfinite_steps": 0, "at_risk_step": -1,
                                     "signal/max_logit": 3.0, "eval_loss/a": 1.1, "initial_loss": 3.2,
                                     "flops_per_step": 1e6, "time_total_s": 1.5}
    row = {**report, "config/training.lr": 0.1}
    assert trial_metrics(row, core=True) == {"budget_steps": 20, "loss": 1.2, "nonfinite_steps": 0,
                                             "initial_loss": 3.2, "flops_per_step": 1e6}


def test_sweeps_started_at_once_into_one_store_share_its_experiment(tmp_path):
    """Two sweeps into one new --out both found no experiment, and the second one's create failed
    (`UNIQUE constraint failed: experiments.name`). Here another sweep makes the experiment between
    this Tracker's look for it and its create (the real client and store, the two steps
    interleaved): it takes the one the other made."""
    from mlflow import MlflowClient

    from stablesweep.tracking import create_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    create_store(uri)
    made = []

    class Interleaved:
        def __init__(self, client):
            self.client = client

        def get_experiment_by_name(self, name):
            found = self.client.get_experiment_by_name(name)
            if found is None and not made:
                made.append(Tracker(uri, experiment=name).experiment_id)  # the other sweep, just then
            return found

        def __getattr__(self, attr):
            return getattr(self.client, attr)

    mine = Tracker(uri, experiment="e")
    mine._client = Interleaved(MlflowClient(tracking_uri=uri))
    assert made == [] and mine.experiment_id == made[0]
