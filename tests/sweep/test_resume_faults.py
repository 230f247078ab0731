"""What a resume after a fault puts back, without Ray: Tune's state files on disk, a real Optuna
study in sqlite, a real MLflow sqlite store (sweep/recovery.py's functions, as `--resume` calls them)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

from stablesweep.sweep.recovery import (
    RERUN_OF,
    broken_by_fault,
    delete_lost_runs,
    repair_error_files,
    repair_tune_state,
    rerun_lost_trials,
    save_elsewhere,
    trial_ids_of,
)
from stablesweep.sweep.search import StabilitySearcher, sqlite_url, study_summary
from stablesweep.sweep.space import parse_space
from stablesweep.tracking import Tracker

GRID = parse_space({"training.lr": {"grid": [1e-3, 1e-2, 1e3]}, "training.max_grad_norm": {"choice": [None, 1.0]}})
DONE = {"step": 40, "verdict": "stable", "reason": None, "first_bad_step": -1, "objective": 1.0, "finished": True}


def _state(path: Path, trial_ids: list[str], mtime: float) -> None:
    data = {"trial_data": [[json.dumps({"trial_id": t, "status": "TERMINATED"}), "{}"] for t in trial_ids]}
    path.write_text(json.dumps(data))
    (path.parent / path.name.replace("experiment_state", "searcher-state").replace(".json", ".pkl")).write_bytes(
        b"x" * len(trial_ids))
    os.utime(path, (mtime, mtime))


def test_a_staged_tune_state_newer_than_the_sweep_folders_is_put_back(tmp_path, monkeypatch):
    """Disk full: Tune's copy of its state to the sweep folder failed, the folder keeps an older
    (whole) one; the newer staged copy of this sweep is restored, another sweep's of the same name is not."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "raytmp"))
    sweep = tmp_path / "out" / "full"
    for t in ("a", "b", "c"):
        (sweep / f"trial_{t}").mkdir(parents=True)
    now = time.time()
    _state(sweep / "experiment_state-s1.json", ["a", "b"], now - 100)
    other = tmp_path / "raytmp" / "ray" / "session_9" / "artifacts" / "t" / "full" / "driver_artifacts"
    other.mkdir(parents=True)
    (other / "trial_zz").mkdir()
    _state(other / "experiment_state-s1.json", ["zz"], now - 10)  # another sweep named "full", newer still
    staged = tmp_path / "raytmp" / "ray" / "session_1" / "artifacts" / "t" / "full" / "driver_artifacts"
    staged.mkdir(parents=True)
    for t in ("a", "b", "c"):
        (staged / f"trial_{t}").mkdir()
    _state(staged / "experiment_state-s1.json", ["a", "b", "c"], now - 50)
    repair_tune_state(sweep)
    restored = json.loads((sweep / "experiment_state-s1.json").read_text())
    assert [json.loads(t[0])["trial_id"] for t in restored["trial_data"]] == ["a", "b", "c"]
    assert (sweep / "searcher-state-s1.pkl").read_bytes() == b"xxx"  # the searcher's state of the same moment
    repair_tune_state(sweep)  # now as new as the staged copy: left alone
    assert (sweep / "searcher-state-s1.pkl").read_bytes() == b"xxx"


def test_a_trial_that_ended_after_tunes_last_state_runs_again_once(tmp_path, new_store):
    """Optuna was told trial c ended (and MLflow has its run), but Tune's last saved state was from
    before: the resumed Tune does not know c and asks 4 more trials for its 6. c's setting runs again
    (marked `rerun_of`), so the 6 trials of Tune's table cover the 6 grid points exactly once; c's
    MLflow run is deleted at the end."""
    url = sqlite_url(tmp_path / "optuna.db")
    first = StabilitySearcher(GRID, url, "s", sampler="grid", seed=0)
    for t in ("a", "b"):
        first.suggest(t)
        first.on_trial_complete(t, DONE)
    ckpt = tmp_path / "searcher.pkl"
    first.save(str(ckpt))  # Tune's last saved state: a, b
    lost = first.suggest("c")
    first.on_trial_complete("c", None, error=True)  # the full disk broke c; Optuna was told

    plan = SimpleNamespace(sweep_dir=tmp_path, study_url=url, name="s")
    assert rerun_lost_trials(plan, {"a", "b"}) == [2]
    assert rerun_lost_trials(plan, {"a", "b"}) == []  # queued once, however often the resume starts
    again = StabilitySearcher(GRID, url, "s", sampler="grid", seed=0)
    again.restore(str(ckpt))
    assert again.suggest("d") == lost
    for t in ("d", "e", "f", "g"):
        again.suggest(t)
        again.on_trial_complete(t, DONE)

    rows = study_summary(url, "s")
    table = {"a", "b", "d", "e", "f", "g"}  # Tune's trials after the resume
    mine = [r for r in rows if r["tune_trial_id"] in table]
    assert len(mine) == len(table) and not [r for r in rows if r["state"] in ("RUNNING", "WAITING")]
    assert len({tuple(r["params"].values()) for r in mine}) == 6  # every grid point exactly once
    others = [r for r in rows if r["tune_trial_id"] not in table]
    assert [(r["tune_trial_id"], r["number"]) for r in others] == [("c", 2)]
    assert [r[RERUN_OF] for r in mine if RERUN_OF in r] == [2]

    # MLflow: c ended (verdict tag) and ran again; h started after Tune's last state and never
    # ended (its Optuna trial went to another Tune trial); x is another sweep's business (ended)
    tracker = Tracker(new_store(tmp_path / "mlflow.db"))
    parent = tracker.start_sweep("s", {}, tags={})
    for t in ("a", "b", "c", "d", "e", "f", "g", "h", "x"):
        run = tracker.trial_run(parent, t, t, {})
        if t != "h":
            tracker.finish_trial(run, "error" if t in "cx" else "stable", None, -1, {})
    delete_lost_runs(tracker, parent, plan, table)
    assert sorted(c.tags["stablesweep.trial_id"] for c in tracker.children(parent)) == sorted(table | {"x"})


def test_a_sweep_that_cannot_write_saves_its_trials_elsewhere(tmp_path, monkeypatch):
    """The disk-full stop: trials.csv cannot go in the sweep folder; the trials the study holds
    (ended, and the one the fault broke, still RUNNING) go to a new temporary folder."""
    import tempfile

    import pandas as pd

    url = sqlite_url(tmp_path / "optuna.db")
    s = StabilitySearcher(GRID, url, "s", sampler="grid", seed=0)
    for t in ("a", "b", "c"):
        s.suggest(t)
    s.on_trial_complete("a", DONE)
    s.on_trial_complete("b", {**DONE, "verdict": "diverged", "reason": "nonfinite_loss", "first_bad_step": 7})
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "elsewhere"))
    (tmp_path / "elsewhere").mkdir()
    path = save_elsewhere(SimpleNamespace(study_url=url, name="s", space=GRID))
    assert path.parent.parent == tmp_path / "elsewhere" and path.name == "trials.csv"
    t = pd.read_csv(path)
    assert list(t["trial_id"]) == ["a", "b", "c"]
    assert list(t["verdict"].fillna("")) == ["stable", "diverged", ""]
    assert list(t["optuna_state"]) == ["COMPLETE", "PRUNED", "RUNNING"]
    assert set(GRID.keys) <= set(t.columns)


def test_the_state_tune_restores_is_the_latest_runs_even_when_the_mtimes_tie(tmp_path):
    """Each run of the driver writes its own experiment_state-<start>.json and a sync touches them
    all: the first run's file (two trials) has the same mtime as the resumed run's (four). The
    trials Tune knows are the latest run's, so none of the four is taken for lost and run again."""
    now = time.time()
    _state(tmp_path / "experiment_state-2026-01-01_10-00-00.json", ["a", "b"], now)
    _state(tmp_path / "experiment_state-2026-01-01_10-01-00.json", ["a", "b", "c", "d"], now)
    _state(tmp_path / "experiment_state-2026-01-01_09-59-00.json", ["a"], now + 5)  # newer mtime, older run
    assert trial_ids_of(SimpleNamespace(sweep_dir=tmp_path)) == {"a", "b", "c", "d"}


def test_an_error_file_a_full_disk_left_empty_is_removed_before_the_restore(tmp_path):
    import pickle

    for t, data in (("a", b""), ("b", pickle.dumps(ValueError("boom"))[:10]), ("c", pickle.dumps(ValueError("x")))):
        (tmp_path / f"trial_{t}").mkdir()
        (tmp_path / f"trial_{t}" / "error.pkl").write_bytes(data)
        (tmp_path / f"trial_{t}" / "error.txt").write_text("why")
    assert sorted(p.parent.name for p in repair_error_files(tmp_path)) == ["trial_a", "trial_b"]
    assert [p.parent.name for p in tmp_path.glob("trial_*/error.pkl")] == ["trial_c"]  # a whole one is kept
    assert len(list(tmp_path.glob("trial_*/error.txt"))) == 3


def test_a_trial_the_disk_broke_stays_open_in_optuna_and_the_resume_runs_it_again(tmp_path):
    """A trial fails while the sweep folder refuses writes (here: a read-only bind mount over it):
    the searcher does not tell Optuna an error that the setting did not cause; the resume sees a
    trial in ERROR in Tune's state that Optuna holds RUNNING, and runs Tune's errored trials again."""
    import subprocess

    import pytest

    if os.geteuid() != 0:
        pytest.skip("needs root to mount")
    sweep = tmp_path / "s"
    sweep.mkdir()
    url = sqlite_url(sweep / "optuna.db")
    searcher = StabilitySearcher(GRID, url, "s", sampler="grid", seed=0)
    searcher.suggest("a")
    searcher.suggest("b")
    searcher.on_trial_complete("a", None, error=True)  # a real error: told FAIL
    subprocess.run(["mount", "--bind", str(sweep), str(sweep)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(sweep)], check=True)
        searcher.on_trial_complete("b", None, error=True)
    finally:
        subprocess.run(["umount", "-l", str(sweep)], check=True)
    assert {r["tune_trial_id"]: r["state"] for r in study_summary(url, "s")} == {"a": "FAIL", "b": "RUNNING"}
    plan = SimpleNamespace(sweep_dir=sweep, study_url=url, name="s")
    data = {"trial_data": [[json.dumps({"trial_id": t, "status": "ERROR"}), "{}"] for t in ("a", "b")]}
    (sweep / "experiment_state-2026-01-01_10-00-00.json").write_text(json.dumps(data))
    assert broken_by_fault(plan)
    data["trial_data"] = data["trial_data"][:1]  # only the real error: nothing to run again
    (sweep / "experiment_state-2026-01-01_10-00-00.json").write_text(json.dumps(data))
    assert not broken_by_fault(plan)
