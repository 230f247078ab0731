"""The issue's case 1 as a user ran it: a grid over lr {0.02, 0.05, 1e3} x clip {none, 1.0}, 20
constant-lr steps, a report every 5, ASHA on. Each lr 1e3 trial blew up at step 1 (330 against an
initial 3.3); before, ASHA stopped the clip-none one at step 10 (before the explosion rule armed)
and it read `pruned`. The monitor's verdict comes first, and every view says the same: the trial
table, Optuna's own feasibility, Tune's result rows and TensorBoard step, MLflow's run times."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from stablesweep.sweep.options import SweepOptions
from stablesweep.sweep.runner import run_sweep
from stablesweep.tracking import Tracker
from tests.conftest import DEMO

SPACE = "training.lr: {grid: [0.02, 0.05, 1000.0]}\ntraining.max_grad_norm: {choice: [null, 1.0]}\n"


@pytest.fixture(scope="module")
def case1(ray_cluster, tmp_path_factory, new_store):
    tmp = tmp_path_factory.mktemp("case1")
    (tmp / "space.yaml").write_text(SPACE)
    uri = new_store(tmp / "mlflow.db")
    opts = SweepOptions(config=str(DEMO), space=str(tmp / "space.yaml"), sampler="grid", steps=20,
                        overrides=["training.report_interval=5", "training.schedule=constant",
                                   "training.warmup_steps=0"],
                        out=str(tmp / "out"), name="case1", mlflow=uri, max_concurrent=1)  # one worker: torch imported once
    return run_sweep(opts, echo=lambda s: None), uri


def rows(trial_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (trial_dir / "result.json").read_text().splitlines() if x.strip()]


def test_a_blow_up_is_diverged_at_the_step_its_loss_crossed(case1):
    res, _ = case1
    t = res.table
    blown = t[t["training.lr"] == 1000.0]
    assert len(blown) == 2 and (blown["verdict"] == "diverged").all(), t[["name", "verdict", "steps"]]
    assert (blown["reason"] == "loss_explosion").all() and (blown["first_bad_step"] == 1).all()
    assert (blown["steps"] == 2).all()  # stopped at once (on the CPU, read each step), before the report at 5
    assert not (t[t["verdict"] != "diverged"]["training.lr"] == 1000.0).any()


def test_optunas_own_helpers_see_divergences_as_infeasible(case1):
    import optuna
    from optuna.study._constrained_optimization import _get_feasible_trials

    res, _ = case1
    state = json.loads((res.sweep_dir / "sweep.json").read_text())
    study = optuna.load_study(study_name=state["study_name"], storage=state["study_url"])
    feasible = {t.number for t in _get_feasible_trials(study.trials)}
    for t in study.trials:
        assert (t.number in feasible) == (t.user_attrs["verdict"] not in ("diverged", "stalled"))
        if t.user_attrs["verdict"] != "diverged":
            assert "first_bad_step" not in t.user_attrs


def test_tunes_rows_end_with_the_final_verdict_chart_the_step_and_hold_no_sentinels(case1):
    res, _ = case1
    verdicts = dict(zip(res.table["trial_id"], res.table["verdict"]))
    dirs = list(res.sweep_dir.rglob("result.json"))
    seen = set()
    for path in dirs:
        rs = rows(path.parent)
        if not rs:
            continue
        tid = rs[-1]["trial_id"]
        seen.add(tid)
        assert rs[-1]["verdict"] == verdicts[tid], (tid, [r["verdict"] for r in rs])
        for r in rs:
            assert r["timesteps_total"] == r["step"]  # TensorBoard's x-axis
            assert r["first_bad_step"] is None or r["first_bad_step"] >= 0
            assert all(v is None or v >= 0 for k, v in r.items() if k.startswith("warn_step/"))
            assert r["objective_is_stand_in"] == (r["verdict"] == "diverged")
    assert seen == set(verdicts)


def test_each_child_run_lasts_as_long_as_its_trial(case1):
    res, uri = case1
    tr = Tracker(uri)
    parent = tr.client.get_run(res.parent_run_id).info
    for c in tr.children(res.parent_run_id):
        info = tr.client.get_run(c.run_id).info
        wall = res.table.set_index("trial_id").loc[c.tags["stablesweep.trial_id"], "wall_s"]
        assert info.end_time <= parent.end_time - 1  # not the sweep's end
        assert (info.end_time - info.start_time) / 1000 <= wall + 5
