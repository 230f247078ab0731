"""Reading a store back as plain records (`TrackerReader`), never creating anything."""
from __future__ import annotations

from stablesweep.tracking import KIND_TAG, STAND_IN_OBJECTIVE, TRIAL_TAG, TrackerReader
from tests.tracking.sample import EXPERIMENT, TRIALS


def test_reader_reads_plain_records(uri, sweep):
    reader = TrackerReader(uri, EXPERIMENT)
    parent = next(p for p in reader.parent_runs() if p.run_id == sweep["parent"])
    assert parent.name == "s1" and parent.status == "FINISHED"
    assert parent.params["sampler"] == "grid" and parent.tags[KIND_TAG] == "sweep"
    kids = reader.child_runs(sweep["parent"])
    assert [k.tags[TRIAL_TAG] for k in kids] == [t[0] for t in TRIALS]  # oldest first
    assert kids[1].tags["verdict"] == "diverged" and kids[1].metrics[STAND_IN_OBJECTIVE] == 3.1
    assert reader.read_text(sweep["parent"], "config.yaml") == "training:\n  lr: 0.001\n"
    assert reader.read_text(sweep["parent"], "space.yaml") is None
    assert reader.parent_runs(kinds=("compare",)) == []


def test_reader_never_creates_an_experiment(uri, sweep):
    reader = TrackerReader(uri, "no-such-experiment")
    assert reader.experiment_id() is None
    assert reader.parent_runs() == [] and reader.child_runs(sweep["parent"]) == []
    assert "no-such-experiment" not in reader.experiment_names()
    assert EXPERIMENT in reader.experiment_names()
