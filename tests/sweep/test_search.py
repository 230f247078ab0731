"""The divergence-aware searcher, the verdict rules and the scheduler, on real Optuna studies in
sqlite (no Ray cluster: Tune calls these methods from the driver, and so do these tests)."""
from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest

from stablesweep.sweep.search import StabilitySearcher, reconcile_study, sqlite_url, study_summary
from stablesweep.sweep.space import parse_space
from stablesweep.sweep.stopper import DivergenceStopper, Outcome, StabilityASHA, asha_for, final_verdict

SPACE = parse_space({"training.lr": {"loguniform": [1e-4, 1e2]}, "training.max_grad_norm": {"choice": [None, 1.0]}})


def stable_result(step, objective, finished=False):
    return {"step": step, "verdict": "stable", "reason": None, "first_bad_step": -1, "objective": objective,
            "finished": finished, "training_iteration": step // 10}


def diverged_result(step, first_bad, reason="nonfinite_loss", stand_in=4.0):
    return {"step": step, "verdict": "diverged", "reason": reason, "first_bad_step": first_bad,
            "objective": stand_in, "finished": True, "training_iteration": step // 10}


@pytest.fixture
def searcher(tmp_path):
    return StabilitySearcher(SPACE, sqlite_url(tmp_path / "optuna.db"), "s", sampler="tpe", seed=0)


def by_tune_id(s: StabilitySearcher) -> dict:
    return {r["tune_trial_id"]: r for r in study_summary(s._storage_url, s._study_name)}


def test_verdicts_reach_optuna_as_chosen(searcher):
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

    rows = by_tune_id(searcher)
    a, b, c, d = rows["a"], rows["b"], rows["c"], rows["d"]
    assert (a["state"], a["value"], a["verdict"]) == ("COMPLETE", 1.5, "stable")
    assert a["constraints"] == {"diverged": 0.0}
    assert (b["state"], b["verdict"], b["reason"], b["first_bad_step"]) == ("PRUNED", "diverged", "nonfinite_loss", 13)
    assert b["constraints"] == {"diverged": 1.0}
    assert b["value"] == 2.5  # the last real observation, never the stand-in
    assert (c["state"], c["verdict"], c["value"]) == ("PRUNED", "pruned", 4.5)
    assert c["constraints"] == {"diverged": 0.0}
    assert (d["state"], d["verdict"]) == ("FAIL", "error")
    assert not [r for r in rows.values() if r["state"] == "RUNNING"]


def test_state_survives_save_and_restore_and_orphans_are_reused(searcher, tmp_path):
    searcher.set_max_concurrency(2)
    p1 = searcher.suggest("a")
    searcher.suggest("b")
    assert searcher.suggest("c") is None  # the concurrency limit is ours, kept in our state
    searcher.on_trial_complete("a", stable_result(30, 1.0, finished=True))
    ckpt = tmp_path / "searcher.pkl"
    searcher.save(str(ckpt))
    orphan = searcher.suggest("c")  # asked after the checkpoint, then the driver dies

    fresh = pickle.loads(pickle.dumps(StabilitySearcher(SPACE, searcher._storage_url, "s", sampler="tpe")))
    fresh.restore(str(ckpt))
    assert fresh.suggest("a") == p1  # known trial: same params
    again = fresh.suggest("c2")  # a new Tune trial takes over the orphaned Optuna trial
    assert again == orphan
    fresh.on_trial_complete("b", diverged_result(20, 10))
    fresh.on_trial_complete("c2", stable_result(30, 2.0, finished=True))
    rows = study_summary(searcher._storage_url, "s")
    assert len(rows) == 3 and all(r["state"] != "RUNNING" for r in rows)
    assert {r["tune_trial_id"] for r in rows} == {"a", "b", "c2"}


def test_a_completion_told_twice_is_harmless(searcher):
    searcher.suggest("a")
    searcher.on_trial_complete("a", stable_result(30, 1.0, finished=True))
    searcher._finished.discard("a")  # as after a restore from an older checkpoint
    searcher.on_trial_complete("a", stable_result(30, 9.0, finished=True))
    assert by_tune_id(searcher)["a"]["value"] == 1.0


def test_reconcile_closes_every_running_trial(searcher):
    searcher.suggest("a")
    searcher.suggest("b")
    searcher.study.ask(fixed_distributions=SPACE.to_optuna())  # asked, never given to Tune
    outcomes = {"a": Outcome("diverged", "loss_explosion", 10, 3.0, 20)}
    # an interrupted sweep: b is unfinished (resumable), the orphan may still be re-used: both stay open
    reconcile_study(searcher._storage_url, "s", outcomes, owned={"a", "b"}, final=False)
    rows = {r.get("tune_trial_id"): r for r in study_summary(searcher._storage_url, "s")}
    assert (rows["a"]["state"], rows["a"]["verdict"]) == ("PRUNED", "diverged")
    assert rows["b"]["state"] == rows[None]["state"] == "RUNNING"
    # the end of a sweep: b finished, the orphan is closed
    outcomes["b"] = Outcome("stable", objective=1.0, steps=30)
    numbers = reconcile_study(searcher._storage_url, "s", outcomes, owned={"a", "b"}, final=True)
    rows = {r.get("tune_trial_id"): r for r in study_summary(searcher._storage_url, "s")}
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


def test_final_verdict_rules():
    assert final_verdict(stable_result(40, 1.0, finished=True)).verdict == "stable"
    d = final_verdict(diverged_result(20, 12, "loss_explosion"))
    assert (d.verdict, d.reason, d.first_bad_step, d.steps) == ("diverged", "loss_explosion", 12, 20)
    # stopped by the divergence stopper before the loop said it was done: still diverged
    assert final_verdict({**diverged_result(20, 12), "finished": False}).verdict == "diverged"
    p = final_verdict(stable_result(20, 3.0, finished=False))
    assert (p.verdict, p.objective) == ("pruned", 3.0)
    assert final_verdict(stable_result(20, 3.0), errored=True, error="Boom").verdict == "error"
    assert final_verdict({}).verdict == "error"


def test_stopper_and_asha_leave_divergence_to_the_stopper():
    stop = DivergenceStopper()
    assert stop("t", diverged_result(20, 11)) and not stop("t", stable_result(20, 1.0))
    asha = asha_for(8, reduction_factor=2)
    assert isinstance(asha, StabilityASHA) and asha._brackets[0]._rungs[-1][0] == 4  # one rung at half
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(3)]
    for t in trials:
        asha.on_trial_add(None, t)
    # a diverged trial ends at iteration 4 with a stand-in objective: it must not enter the rung
    asha.on_trial_complete(None, trials[0], {**diverged_result(40, 35, stand_in=0.01), "training_iteration": 4})
    assert all(trials[0].trial_id not in rec for _, rec in asha._brackets[0]._rungs)
    assert asha.on_trial_result(None, trials[1], {"training_iteration": 4, "objective": 1.0}) == "CONTINUE"
    assert asha.on_trial_result(None, trials[2], {"training_iteration": 4, "objective": 5.0}) == "STOP"


def test_which_trials_ended():
    """An interrupt leaves running trials TERMINATED without `done`: resumable, not finished. Tune
    does not persist `done` for trials that ended on their own: `finished` (ours) decides."""
    from stablesweep.sweep.runner import TrialRecord

    def rec(status, **last):
        return TrialRecord("t", status, {}, last)

    assert rec("TERMINATED", finished=True, done=False, verdict="stable").ended  # restored, ended on its own
    assert rec("TERMINATED", verdict="diverged", finished=False).ended  # stopped by the stopper
    assert rec("TERMINATED", verdict="stable", finished=False, done=True).ended  # pruned by ASHA
    assert not rec("TERMINATED", verdict="stable", finished=False).ended  # shut down at an interrupt
    assert not rec("RUNNING", verdict="stable").ended and not rec("PENDING").ended
    assert rec("ERROR").ended


def test_resume_command_repeats_the_command_line():
    from stablesweep.commands.sweep import resume_command

    argv = ["/x/__main__.py", "sweep", "c.yaml", "--space", "my space.yaml", "--set", "training.lr=1", "--steps", "40"]
    assert resume_command(argv, "n1") == ("stablesweep sweep c.yaml --space 'my space.yaml' --set training.lr=1 "
                                          "--steps 40 --name n1 --resume")
