"""tracking.py against a real embedded MLflow store (sqlite, one for the module): what `Tracker`
writes, read back through MLflow's own `MlflowClient`, and what `TrackerReader` reads. No Ray, no
mocks."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from mlflow import MlflowClient

from stablesweep.tracking import (
    KIND_TAG,
    PARENT_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    Tracker,
    TrackerReader,
    TrackingError,
    default_tracking_uri,
    flatten,
    param_value,
    probe_store,
    ui_command,
)
from tests.mlflow_server import free_port

EXPERIMENT = "tracking-test"


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('tracking') / 'mlflow.db'}"


@pytest.fixture(scope="module")
def client(uri) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


@pytest.fixture(scope="module")
def sweep(uri, tmp_path_factory) -> dict:
    """One sweep as the runner writes it: a parent with params and texts, four trials (stable,
    diverged, pruned, error) with live metrics, then the parent ended with metrics and files."""
    tr = Tracker(uri, EXPERIMENT)
    parent = tr.start_sweep("s1", {"sampler": "grid", "seed": 0, "asha": False, "note": None,
                                   **{f"p{i}": i for i in range(150)}},  # more than one batch of params
                            tags={"sweep_dir": "/tmp/s1"}, texts={"config.yaml": "training:\n  lr: 0.001\n"})
    trials = {}
    for tid, verdict, reason, bad in (("t0", "stable", None, -1), ("t1", "diverged", "nonfinite_loss", 10),
                                      ("t2", "pruned", None, -1), ("t3", "error", "boom", -1)):
        run = tr.trial_run(parent, tid, f"lr {tid}", {"training.lr": 1e-3, "training.max_grad_norm": None,
                                                      "loss.enable": True}, tags={SWEEP_TAG: "s1"})
        for step in (5, 10):
            tr.log_trial_metrics(run, {"objective": 2.0 / step, "loss": 1.5, "flag": True, "name": "x"}, step)
        tr.finish_trial(run, verdict, reason, bad, {"objective": 99.0, "initial_loss": 3.0, "steps": 10},
                        tags={"budget_steps": "20"})
        trials[tid] = run
    files = tmp_path_factory.mktemp("files")
    (files / "stable_region.md").write_text("# region\n")
    (files / "figures").mkdir()
    (files / "figures" / "a.png").write_bytes(b"\x89PNG")
    tr.end_sweep(parent, {"trials_stable": 1.0}, tags={"interrupted": "false"},
                 artifacts=[files / "stable_region.md", files / "figures", files / "missing.txt"])
    return {"parent": parent, "trials": trials}


def test_parent_run_holds_params_tags_texts_and_files(client, sweep):
    run = client.get_run(sweep["parent"])
    assert run.info.status == "FINISHED" and run.info.run_name == "s1"
    tags = run.data.tags
    assert tags[KIND_TAG] == "sweep" and tags[SWEEP_TAG] == "s1" and tags["sweep_dir"] == "/tmp/s1"
    assert tags["interrupted"] == "false" and tags["stablesweep.version"]
    params = run.data.params
    assert (params["sampler"], params["seed"], params["asha"], params["note"]) == ("grid", "0", "false", "null")
    assert len([k for k in params if k.startswith("p")]) == 150
    assert run.data.metrics == {"trials_stable": 1.0}
    arts = {a.path for a in client.list_artifacts(sweep["parent"])}
    assert arts == {"config.yaml", "stable_region.md", "figures"}  # a missing file is skipped
    assert [a.path for a in client.list_artifacts(sweep["parent"], "figures")] == ["figures/a.png"]


def test_trial_runs_are_nested_with_verdict_tags_and_status(client, sweep):
    status = {"t0": "FINISHED", "t1": "FINISHED", "t2": "KILLED", "t3": "FAILED"}
    for tid, run_id in sweep["trials"].items():
        run = client.get_run(run_id)
        tags = run.data.tags
        assert run.info.status == status[tid], tid
        assert tags[PARENT_TAG] == sweep["parent"] and tags[TRIAL_TAG] == tid and tags[KIND_TAG] == "trial"
        assert tags[SWEEP_TAG] == "s1" and tags["budget_steps"] == "20"
        assert run.data.params == {"training.lr": "0.001", "training.max_grad_norm": "null", "loss.enable": "true"}
    tags = client.get_run(sweep["trials"]["t1"]).data.tags
    assert (tags["verdict"], tags["reason"], tags["first_bad_step"]) == ("diverged", "nonfinite_loss", "10")
    assert client.get_run(sweep["trials"]["t0"]).data.tags["reason"] == ""


def test_live_metrics_keep_their_steps_and_the_summary_fills_only_the_gaps(client, sweep):
    run_id = sweep["trials"]["t0"]
    hist = client.get_metric_history(run_id, "objective")
    assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == [(5, 0.4), (10, 0.2)]
    metrics = client.get_run(run_id).data.metrics
    assert metrics["objective"] == 0.2  # the live value, not the summary's 99
    assert metrics["initial_loss"] == 3.0 and metrics["steps"] == 10.0  # not logged live: from the summary
    assert "flag" not in metrics and "name" not in metrics  # no bools, no strings


def test_a_resumed_sweep_finds_its_runs_again(uri, client, sweep):
    tr = pickle.loads(pickle.dumps(Tracker(uri, EXPERIMENT)))  # as a callback travels
    parent = sweep["parent"]
    tr.resume_sweep(parent)
    assert client.get_run(parent).info.status == "RUNNING"
    run_id = tr.trial_run(parent, "t2", "ignored", {"training.lr": 5.0})
    assert run_id == sweep["trials"]["t2"]
    assert client.get_run(run_id).info.status == "RUNNING"  # reopened
    assert client.get_run(run_id).data.params["training.lr"] == "0.001"  # not logged twice
    assert tr.last_step(run_id) == 10
    tr.finish_trial(run_id, "pruned", None, -1, {"steps": 10})
    tr.end_sweep(parent, {}, tags={})
    assert client.get_run(parent).info.status == "FINISHED"
    assert len(tr.children(parent)) == 4
    assert [r.info.run_id for r in tr.sweep_runs()] == [parent]


def test_reader_reads_plain_records(uri, sweep):
    reader = TrackerReader(uri, EXPERIMENT)
    (parent,) = reader.parent_runs()
    assert parent.run_id == sweep["parent"] and parent.name == "s1" and parent.status == "FINISHED"
    assert parent.params["sampler"] == "grid" and parent.tags[KIND_TAG] == "sweep"
    kids = reader.child_runs(sweep["parent"])
    assert [k.tags[TRIAL_TAG] for k in kids] == ["t0", "t1", "t2", "t3"]  # oldest first
    assert kids[1].tags["verdict"] == "diverged" and kids[1].metrics["objective"] == 0.2
    assert reader.read_text(sweep["parent"], "config.yaml") == "training:\n  lr: 0.001\n"
    assert reader.read_text(sweep["parent"], "space.yaml") is None
    assert reader.parent_runs(kinds=("ramp",)) == []


def test_reader_never_creates_an_experiment(uri, sweep):
    reader = TrackerReader(uri, "no-such-experiment")
    assert reader.experiment_id() is None
    assert reader.parent_runs() == [] and reader.child_runs(sweep["parent"]) == []
    assert "no-such-experiment" not in reader.experiment_names()
    assert EXPERIMENT in reader.experiment_names()


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


def test_a_file_that_is_no_store_is_a_tracking_error(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_text("not a database " * 100)
    with pytest.raises(TrackingError, match=r"at sqlite:///.*bad\.db: .*file is not a database"):
        TrackerReader(f"sqlite:///{bad}").experiment_id()


def test_probe_store_says_why_there_is_nothing_to_read(uri, tmp_path):
    missing = tmp_path / "nope" / "mlflow.db"
    assert probe_store(f"sqlite:///{missing}") == \
        f"no MLflow store at sqlite:///{missing} (no file {missing.resolve()})"
    assert not missing.parent.exists()  # nothing created
    assert probe_store(uri) is None
    assert "no directory" in probe_store(str(tmp_path / "mlruns"))
    url = f"http://127.0.0.1:{free_port()}"
    assert probe_store(url, timeout=2).startswith(f"no MLflow server answers at {url} (")


def test_small_helpers(tmp_path):
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert ui_command("http://127.0.0.1:5000") == "open http://127.0.0.1:5000"
    assert ui_command("sqlite:///x.db") == "mlflow ui --backend-store-uri sqlite:///x.db --host 127.0.0.1 --port 5000"
    assert [param_value(v) for v in (None, True, False, 3, 1e-05, "slice")] == ["null", "true", "false", "3",
                                                                                "1e-05", "slice"]
    assert flatten({"training": {"lr": 1e-3, "opt": {"name": "adam"}}, "data": {}, "seed": 0}) == \
        {"training.lr": 1e-3, "training.opt.name": "adam", "data": {}, "seed": 0}


def test_default_artifacts_sit_beside_an_embedded_store(uri, client, sweep):
    db = Path(uri.removeprefix("sqlite:///"))
    location = client.get_experiment_by_name(EXPERIMENT).artifact_location
    assert location == (db.parent / "mlartifacts").resolve().as_uri()
    assert (db.parent / "mlartifacts").is_dir()
