"""When a trial stops and what its verdict is: the verdict rules, the divergence stopper and the
ASHA that leaves divergence to it (Tune calls these from the driver, and so do these tests)."""
from __future__ import annotations

from ray.tune.experiment import Trial

from stablesweep.sweep.stopper import (
    DivergenceStopper,
    StabilityASHA,
    asha_for,
    final_verdict,
)
from tests.conftest import diverged_result, stable_result


def test_final_verdict_rules():
    assert final_verdict(stable_result(40, 1.0, finished=True)).verdict == "stable"
    d = final_verdict(diverged_result(20, 12, "loss_explosion"))
    assert (d.verdict, d.reason, d.first_bad_step, d.steps) == ("diverged", "loss_explosion", 12, 20)
    # stopped by the divergence stopper before the loop said it was done: still diverged
    assert final_verdict({**diverged_result(20, 12), "finished": False}).verdict == "diverged"
    p = final_verdict(stable_result(20, 3.0, finished=False))
    assert (p.verdict, p.objective) == ("pruned", 3.0)
    e = final_verdict(stable_result(20, 3.0), errored=True, error="Boom")
    assert (e.verdict, e.reason) == ("error", "Boom")
    assert final_verdict({}).verdict == "error"
    st = final_verdict({**stable_result(40, 3.1, finished=True), "verdict": "stalled", "reason": "no_progress"})
    assert (st.verdict, st.reason, st.objective, st.steps) == ("stalled", "no_progress", 3.1, 40)
    assert final_verdict({**stable_result(20, float("nan"), finished=True)}).objective is None


def test_the_stopper_stops_at_the_first_diverged_report():
    stop = DivergenceStopper()
    assert stop("t", diverged_result(20, 11)) and not stop("t", stable_result(20, 1.0))
    assert not stop.stop_all()


def test_the_ramps_stopper_lets_a_diverged_last_report_end_by_itself():
    """The loop ends at a divergence (`monitor.stop_on_divergence`: its report is `finished`): the
    ramp's stopper leaves that trial to end a moment later, so Tune hands its report to the searcher
    first; one that trains on past a divergence is stopped at once, as by the sweep's stopper."""
    stop = DivergenceStopper(let_last_end=True)
    assert not stop("t", {**diverged_result(20, 11), "finished": True})
    assert stop("t", {**diverged_result(20, 11), "finished": False})
    assert DivergenceStopper()("t", {**diverged_result(20, 11), "finished": True})
    assert not stop("t", stable_result(20, 1.0, finished=True))


def test_asha_leaves_divergence_to_the_stopper():
    asha = asha_for(8, reduction_factor=2)  # 8 reports: one rung, at report 4
    assert isinstance(asha, StabilityASHA)
    trials = [Trial("run_trial", trial_id=f"t{i}", stub=True) for i in range(4)]
    for t in trials:
        asha.on_trial_add(None, t)
    # before the rung nothing is judged, however poor
    assert asha.on_trial_result(None, trials[3], {"training_iteration": 2, "objective": 100.0}) == "CONTINUE"
    # a diverged trial ends at report 4 with a tiny stand-in objective: had it entered the rung, its
    # 0.01 would be the cutoff and every finite trial after it would stop
    asha.on_trial_complete(None, trials[0], {**diverged_result(40, 35, stand_in=0.01), "training_iteration": 4})
    assert asha.on_trial_result(None, trials[1], {"training_iteration": 4, "objective": 1.0}) == "CONTINUE"
    assert asha.on_trial_result(None, trials[2], {"training_iteration": 4, "objective": 5.0}) == "STOP"


def test_a_blow_up_stopped_by_the_scheduler_before_min_steps_is_diverged_not_pruned():
    """The issue's lr 1e3 trial: the monitor's report at step 5 (min_steps 10) already holds the
    explosion against the initial loss, so a scheduler stop there ends diverged at step 1."""
    import torch

    from stablesweep.config import MonitorConfig
    from stablesweep.stability.monitor import DivergenceMonitor

    mon = DivergenceMonitor(MonitorConfig(min_steps=10))
    mon.set_initial_loss(torch.tensor(3.29))
    for loss in (3.3, 330.0, 2.0e5, 1.4e7, 1.4e7):
        mon.update(torch.tensor(loss), torch.tensor(1.0))
    snap, v = mon.read()
    result = {**stable_result(5, 1.4e7, finished=False), "verdict": v.verdict, "reason": v.reason,
              "first_bad_step": v.first_bad_step, "done": True}
    o = final_verdict(result)
    assert (o.verdict, o.reason, o.first_bad_step) == ("diverged", "loss_explosion", 1)
    assert DivergenceStopper()("t", result)
