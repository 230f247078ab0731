"""The divergence-aware searcher on real Optuna studies in sqlite (no Ray cluster: Tune calls these
methods from the driver, and so do these tests)."""
from __future__ import annotations

import pickle

import pytest

from stablesweep.sweep.search import (
    StabilitySearcher,
    reconcile_study,
    sqlite_url,
    study_summary,
)
from stablesweep.sweep.space import parse_space
from stablesweep.sweep.stopper import Outcome
from tests.conftest import diverged_result, stable_result

SPACE = parse_space({"training.lr": {"loguniform": [1e-4, 1e2]}, "training.max_grad_norm": {"choice": [None, 1.0]}})



@pytest.fixture
def url(tmp_path):
    return sqlite_url(tmp_path / "optuna.db")


@pytest.fixture
def searcher(url):
    return StabilitySearcher(SPACE, url, "s", sampler="tpe", seed=0)


def by_tune_id(url: str) -> dict:
    return {r["tune_trial_id"]: r for r in study_summary(url, "s")}


def test_verdicts_reach_optuna_as_chosen(searcher, url):
    for tid in ("a", "b", "c", "d"):
        params = searcher.suggest(tid)
        assert set(params) == {"training.lr", "training.max_grad_norm"}
    # a: stable to the end
    for step, obj in ((10, 3.0), (20, 2.0)):
        searcher.on_trial_result("a", stable_result(step, obj))
    searcher.on_trial_complete("a", stable_result(30, 1.5, finished=True))
    # b: finite for a while, then non-finite; the stopping report carries a stand-in objective
    searcher.on_trial_result("b", stable_result(10, 2.5))
    searcher.on_trial_complete("b", diverged_result(20, 13, stand_in=4.0))
    # c: stopped by the scheduler while finite
    searcher.on_trial_result("c", stable_result(10, 5.0))
    searcher.on_trial_complete("c", stable_result(20, 4.5, finished=False))
    # d: crashed
    searcher.on_trial_complete("d", None, error=True)

    rows = by_tune_id(url)
    a, b, c, d = rows["a"], rows["b"], rows["c"], rows["d"]
    assert (a["state"], a["value"], a["verdict"]) == ("COMPLETE", 1.5, "stable")
    assert a["constraints"] == {"diverged": 0.0, "stalled": 0.0}
    assert (b["state"], b["verdict"], b["reason"], b["first_bad_step"]) == ("PRUNED", "diverged", "nonfinite_loss", 13)
    assert b["constraints"] == {"diverged": 1.0, "stalled": 0.0}
    assert b["value"] == 2.5  # the last real observation, never the stand-in
    assert (c["state"], c["verdict"], c["value"]) == ("PRUNED", "pruned", 4.5)
    assert c["constraints"] == {"diverged": 0.0, "stalled": 0.0}
    assert (d["state"], d["verdict"]) == ("FAIL", "error")
    assert not [r for r in rows.values() if r["state"] == "RUNNING"]


def test_state_survives_save_and_restore_and_orphans_are_reused(searcher, url, tmp_path):
    searcher.set_max_concurrency(2)
    p1 = searcher.suggest("a")
    searcher.suggest("b")
    assert searcher.suggest("c") is None  # the concurrency limit is ours, kept in our state
    searcher.on_trial_complete("a", stable_result(30, 1.0, finished=True))
    ckpt = tmp_path / "searcher.pkl"
    searcher.save(str(ckpt))
    orphan = searcher.suggest("c")  # asked after the checkpoint, then the driver dies

    fresh = pickle.loads(pickle.dumps(StabilitySearcher(SPACE, url, "s", sampler="tpe")))
    fresh.restore(str(ckpt))
    assert fresh.suggest("a") == p1  # known trial: same params
    again = fresh.suggest("c2")  # a new Tune trial takes over the orphaned Optuna trial
    assert again == orphan
    fresh.on_trial_complete("b", diverged_result(20, 10))
    fresh.on_trial_complete("c2", stable_result(30, 2.0, finished=True))
    rows = study_summary(url, "s")
    assert len(rows) == 3 and all(r["state"] != "RUNNING" for r in rows)
    assert {r["tune_trial_id"] for r in rows} == {"a", "b", "c2"}


def test_a_completion_told_twice_is_harmless(searcher, url, tmp_path):
    searcher.suggest("a")
    ckpt = tmp_path / "searcher.pkl"
    searcher.save(str(ckpt))  # a checkpoint from before "a" ended
    searcher.on_trial_complete("a", stable_result(30, 1.0, finished=True))
    restored = StabilitySearcher(SPACE, url, "s", sampler="tpe")
    restored.restore(str(ckpt))  # does not know that "a" ended: Tune tells it again
    restored.on_trial_complete("a", stable_result(30, 9.0, finished=True))
    assert by_tune_id(url)["a"]["value"] == 1.0


def test_results_of_a_trial_optuna_already_finished_are_ignored_after_a_restore(searcher, url, tmp_path):
    """The driver killed after Optuna was told that "a" ended but before Tune saved its state: the
    restored Tune runs "a" on from its checkpoint and reports again. Nothing reaches Optuna (no
    `UpdateFinishedTrialError`, which stopped such a resume), and Optuna's verdict stands."""
    searcher.suggest("a")
    searcher.on_trial_result("a", stable_result(10, 3.0))
    ckpt = tmp_path / "searcher.pkl"
    searcher.save(str(ckpt))  # Tune's last saved state: "a" running
    searcher.on_trial_result("a", stable_result(20, 2.0))
    searcher.on_trial_complete("a", stable_result(30, 1.0, finished=True))
    restored = StabilitySearcher(SPACE, url, "s", sampler="tpe")
    restored.restore(str(ckpt))
    restored.on_trial_result("a", stable_result(20, 2.5))
    restored.on_trial_result("a", stable_result(30, 1.5))
    restored.on_trial_complete("a", stable_result(30, 1.5, finished=True))
    row = by_tune_id(url)["a"]
    assert (row["state"], row["value"], row["verdict"]) == ("COMPLETE", 1.0, "stable")
    assert restored.suggest("b") is not None and len(study_summary(url, "s")) == 2


def test_a_queued_trial_never_asked_is_closed_at_the_end(searcher, url):
    searcher.suggest("a")
    searcher.on_trial_complete("a", stable_result(30, 1.0, finished=True))
    searcher.study.enqueue_trial({"training.lr": 1e-3, "training.max_grad_norm": None})
    reconcile_study(url, "s", {}, owned={"a"}, final=False)
    assert [r["state"] for r in study_summary(url, "s")] == ["COMPLETE", "WAITING"]  # a resume may still run it
    reconcile_study(url, "s", {}, owned={"a"}, final=True)
    assert [(r["state"], r.get("verdict")) for r in study_summary(url, "s")] == [("COMPLETE", "stable"),
                                                                                 ("FAIL", "abandoned")]


def test_reconcile_closes_every_running_trial(searcher, url):
    searcher.suggest("a")
    searcher.suggest("b")
    searcher.study.ask(fixed_distributions=SPACE.to_optuna())  # asked, never given to Tune
    outcomes = {"a": Outcome("diverged", "loss_explosion", 10, 3.0, 20)}
    # an interrupted sweep: b is unfinished (resumable), the orphan may still be re-used: both stay open
    reconcile_study(url, "s", outcomes, owned={"a", "b"}, final=False)
    rows = {r.get("tune_trial_id"): r for r in study_summary(url, "s")}
    assert (rows["a"]["state"], rows["a"]["verdict"]) == ("PRUNED", "diverged")
    assert rows["b"]["state"] == rows[None]["state"] == "RUNNING"
    # the end of a sweep: b finished, the orphan is closed
    outcomes["b"] = Outcome("stable", objective=1.0, steps=30)
    numbers = reconcile_study(url, "s", outcomes, owned={"a", "b"}, final=True)
    rows = {r.get("tune_trial_id"): r for r in study_summary(url, "s")}
    assert rows["b"]["state"] == "COMPLETE" and rows["b"]["value"] == 1.0
    assert (rows[None]["state"], rows[None]["verdict"]) == ("FAIL", "abandoned")
    assert set(numbers) == {"a", "b"}


@pytest.mark.parametrize("sampler", ["tpe", "qmc", "random", "grid"])
def test_every_sampler_suggests_inside_the_space(tmp_path, sampler):
    space = SPACE if sampler != "grid" else parse_space(
        {"training.lr": {"grid": [1e-3, 1e-1, 10.0]}, "training.max_grad_norm": {"choice": [None, 1.0]}})
    s = StabilitySearcher(space, sqlite_url(tmp_path / "o.db"), "s", sampler=sampler, seed=1)
    seen = []
    for i in range(6):
        p = s.suggest(f"t{i}")
        seen.append((p["training.lr"], p["training.max_grad_norm"]))
        s.on_trial_complete(f"t{i}", stable_result(10, 1.0 + i, finished=True))
    assert all(1e-4 <= lr <= 1e2 and clip in (None, 1.0) for lr, clip in seen)
    if sampler == "grid":
        assert len(set(seen)) == 6  # every grid point once


def test_a_stalled_trial_is_complete_but_infeasible_and_tpe_ranks_it_last(tmp_path):
    """A stall is told COMPLETE with its real final loss and the constraint `stalled = 1`; TPE then
    puts it behind every feasible trial even when its loss is the lowest (a real Optuna study)."""
    import optuna
    from optuna.samplers._tpe.sampler import _split_trials

    url = sqlite_url(tmp_path / "optuna.db")
    searcher = StabilitySearcher(SPACE, url, "s", sampler="tpe", seed=0)
    for tid in ("good", "stall"):
        searcher.suggest(tid)
    searcher.on_trial_complete("good", stable_result(30, 2.0, finished=True))
    searcher.on_trial_complete("stall", {**stable_result(30, 1.0, finished=True), "verdict": "stalled",
                                         "reason": "no_progress"})
    rows = by_tune_id(url)
    s = rows["stall"]
    assert (s["state"], s["value"], s["verdict"], s["reason"]) == ("COMPLETE", 1.0, "stalled", "no_progress")
    assert s["constraints"] == {"diverged": 0.0, "stalled": 1.0}
    study = optuna.load_study(study_name="s", storage=url)
    below, above = _split_trials(study, study.get_trials(deepcopy=False), 1)
    assert [t.user_attrs["tune_trial_id"] for t in below] == ["good"]


def test_constraints_are_where_optunas_own_tools_read_them_and_no_sentinels(searcher, url):
    """Stalls and divergences are infeasible to Optuna's own feasibility helper and under the
    system attribute its samplers write (`constraints`, a list: what optuna-dashboard reads);
    a trial without a reason or a first bad step carries no such attribute."""
    import optuna
    from optuna.samplers._base import _CONSTRAINTS_KEY
    from optuna.study._constrained_optimization import _get_feasible_trials

    for tid in ("good", "stall", "blowup", "cut"):
        searcher.suggest(tid)
    searcher.on_trial_complete("good", stable_result(30, 2.0, finished=True))
    searcher.on_trial_complete("stall", {**stable_result(30, 1.0, finished=True), "verdict": "stalled",
                                         "reason": "no_progress"})
    searcher.on_trial_complete("blowup", diverged_result(20, 1, stand_in=4.0))
    searcher.on_trial_complete("cut", stable_result(20, 4.5, finished=False))
    trials = {t.user_attrs["tune_trial_id"]: t for t in optuna.load_study(study_name="s", storage=url).trials}
    assert {tid: t.system_attrs[_CONSTRAINTS_KEY] for tid, t in trials.items()} == {
        "good": [0.0, 0.0], "stall": [0.0, 1.0], "blowup": [1.0, 0.0], "cut": [0.0, 0.0]}
    assert not [k for t in trials.values() for k in t.system_attrs if k.startswith(f"{_CONSTRAINTS_KEY}:")]
    feasible = {t.user_attrs["tune_trial_id"] for t in _get_feasible_trials(list(trials.values()))}
    assert feasible == {"good", "cut"}
    good = trials["good"].user_attrs
    assert "first_bad_step" not in good and "reason" not in good and good["verdict"] == "stable"
    assert trials["blowup"].user_attrs["first_bad_step"] == 1
    assert trials["cut"].user_attrs["reason"] == "scheduler" and "first_bad_step" not in trials["cut"].user_attrs
