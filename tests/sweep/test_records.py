"""Trial records and the trial table: which trials ended, their one verdict, the error line.
Plain data (no Ray started)."""
from __future__ import annotations

from stablesweep.sweep.records import UNFINISHED, TrialRecord, error_text, trials_table
from stablesweep.sweep.space import parse_space

SPACE = parse_space({"training.lr": {"loguniform": [1e-4, 1e2]}, "training.max_grad_norm": {"choice": [None, 1.0]}})


def rec(status, trial_id="t", config=None, error=None, **last):
    return TrialRecord(trial_id, status, config or {}, last, error)


def test_which_trials_ended():
    """An interrupt leaves running trials TERMINATED without `done`: resumable, not finished. Tune
    does not persist `done` for trials that ended on their own: `finished` (ours) decides."""
    assert rec("TERMINATED", finished=True, done=False, verdict="stable").ended  # restored, ended on its own
    assert rec("TERMINATED", verdict="diverged", finished=False).ended  # stopped by the stopper
    assert rec("TERMINATED", verdict="stable", finished=False, done=True).ended  # pruned by ASHA
    assert not rec("TERMINATED", verdict="stable", finished=False).ended  # shut down at an interrupt
    assert not rec("RUNNING", verdict="stable").ended and not rec("PENDING").ended
    assert rec("ERROR").ended


def test_the_error_line_is_the_named_one():
    trace = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
             "ray.exceptions.RayTaskError(ConfigError): ...\nConfigError: training.lr: expected a number\n")
    assert error_text(trace) == "ConfigError: training.lr: expected a number"
    assert error_text(RuntimeError("just this")) == "just this"
    assert error_text(None) is None
    assert len(error_text("ValueError: " + "x" * 1000)) == 500


def test_one_row_a_trial_with_its_verdict():
    lr, clip = "training.lr", "training.max_grad_norm"
    records = [
        rec("TERMINATED", "b", {lr: 1e3, clip: None}, step=10, verdict="diverged", reason="nonfinite_loss",
            first_bad_step=7, objective=2.3, finished=False, budget_steps=40),
        rec("TERMINATED", "a", {lr: 1e-2, clip: 1.0}, step=40, verdict="stable", objective=0.5, finished=True,
            budget_steps=40, **{"eval_loss/food101": 0.7}),
        rec("TERMINATED", "c", {lr: 1e-3, clip: 1.0}, step=20, verdict="stable", objective=0.9, finished=False),
        rec("ERROR", "d", {lr: 1e-1, clip: None}, error="ValueError: boom"),
        rec("TERMINATED", "e", {lr: 1e-6, clip: 1.0}, step=40, verdict="stalled", reason="no_progress",
            objective=3.1, finished=True, budget_steps=40, progress=0.02),
    ]
    table, outcomes = trials_table(records, SPACE)
    assert list(table["trial_id"]) == ["a", "b", "c", "d", "e"]  # sorted by id
    assert list(table["verdict"]) == ["stable", "diverged", UNFINISHED, "error", "stalled"]
    assert (table.loc[4, "reason"], table.loc[4, "progress"]) == ("no_progress", 0.02)
    assert table.loc[1, "reason"] == "nonfinite_loss" and table.loc[1, "first_bad_step"] == 7
    assert table.loc[3, "reason"] == "ValueError: boom"
    assert table.loc[0, "name"] == "lr=1.0e-02 clip=1.0" and table.loc[0, "eval_loss/food101"] == 0.7
    assert list(table[lr]) == [1e-2, 1e3, 1e-3, 1e-1, 1e-6]
    assert outcomes["c"].verdict == UNFINISHED and outcomes["c"].steps == 20
    assert outcomes["a"].objective == 0.5
