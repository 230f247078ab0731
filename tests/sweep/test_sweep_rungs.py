"""A sweep's answer for a target budget (`sweep --target-steps`): the ramp's rungs and confirmation
after the sweep's trials, with real Tune trials on a planted model (tests/sweep/planted.py).

late_stall, a grid of three lrs at 20 steps, the answer for 80: 0.08 stalls at 20 steps (the bracket at
20 is 0.04..0.08) and trains at 80, 0.16 diverges at step 50, and 0.08 fails from step 60 on an
odd seed (the confirmation's second: the recommendation moves down to 0.04, confirmed there)."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from stablesweep.api import swept as swept_result
from stablesweep.sweep.invariant import exactly_once_problems
from stablesweep.sweep.options import SweepOptions
from stablesweep.sweep.runner import run_sweep
from stablesweep.tracking import Tracker
from tests.sweep.test_ramp_rungs import CONFIG

PLANTED = CONFIG.replace("model: {name: small_cnn}", 'model: {name: small_cnn, factory: "tests.sweep.planted:late_stall"}')
SPACE = "training.lr: {grid: [0.04, 0.08, 0.16]}\n"


def _files(d):
    (d / "planted.yaml").write_text(PLANTED)
    (d / "space.yaml").write_text(SPACE)
    return dict(config=str(d / "planted.yaml"), space=str(d / "space.yaml"), sampler="grid", steps=20, asha=False,
                out=str(d / "out"), max_concurrent=1)  # one trial worker: torch imported once


@pytest.fixture(scope="module")
def swept(ray_cluster, tmp_path_factory, new_store):
    d = tmp_path_factory.mktemp("target")
    new_store(d / "out" / "mlflow.db")
    opts = SweepOptions(**_files(d), name="t", target_steps=80)
    lines: list[str] = []
    return run_sweep(opts, echo=lines.append), lines, opts


def test_the_rungs_promote_the_bracket_and_confirm_at_the_target(swept):
    res, lines, _ = swept
    (s,) = res.target.settings
    assert (s.max_stable, s.min_failed) == (0.04, 0.08)  # at 20 steps: 0.08 stalls above the band
    t = s.at_target
    assert t.budget == 80 and (t.max_stable, t.min_failed) == (0.08, 0.16)  # at 80 it trains; 0.16 diverges late
    promoted = {p.lr: p for p in t.probes if p.phase == "promote"}
    assert sorted(promoted) == [0.04, 0.08]
    assert promoted[0.04].start_step == 20 and promoted[0.04].steps == 80  # went on from its sweep trial
    assert promoted[0.08].start_step == 0  # a stall: from scratch
    assert t.confirmation.tried == [(0.08, ["stable", "diverged"]), (0.04, ["stable", "stable"])]
    (a,) = res.target.answers
    assert a.recommended_lr == 0.04 and a.holds_for == "80 steps (the target)"
    assert a.confirmation == "confirmed: 2/2 trained at 80 steps (moved down from lr 0.08: 1/2 trained)"
    assert any("20 -> 80 steps, promoting lr 0.04, 0.08" in ln for ln in lines)
    # the rung probes: rows of trials.csv with their phase and budget, not Optuna trials
    t_csv = pd.read_csv(res.files["trials"])
    rungs = t_csv[t_csv["budget_steps"] == 80]
    assert len(t_csv[t_csv["phase"] == "sweep"]) == 3 and (t_csv[t_csv["phase"] == "sweep"]["budget_steps"] == 20).all()
    assert sorted(rungs["phase"]) == ["confirm"] * 4 + ["ladder", "promote", "promote"]
    assert (rungs["optuna_number"] == -1).all()
    assert sorted(rungs.loc[rungs["phase"] == "confirm", "seed"]) == [1000, 1000, 1001, 1001]
    assert (res.sweep_dir / "rungs").is_dir()
    problems = exactly_once_problems(res.sweep_dir, 3)
    assert not problems, problems


def test_every_output_says_what_the_answer_holds_for_and_what_it_cost(swept):
    res, _, _ = swept
    data = json.loads(res.files["json"].read_text())
    assert (data["probe_steps"], data["target_steps"], data["rungs"]) == (20, 80, [20, 80])
    assert data["recommended"]["training.lr"] == 0.04
    (x,) = data["at_target"]
    assert x["holds_for"] == "80 steps (the target)" and x["confirmation"].startswith("confirmed: 2/2 trained at 80")
    c = data["cost"]
    assert c["rung_probes"] == 3 and c["confirm_runs"] == 4 and c["rungs_flops"] > 0 and c["confirm_s"] > 0
    # one full run at the target: FLOPs a step x 80; 3 rung probes (one went on from step 20, one stopped at
    # step 50) and 4 confirmations (one stopped at step 60): about 6 such runs
    assert c["full_run_flops"] == pytest.approx(c["flops_per_step"] * 80)
    assert 5 < (c["rungs_flops"] + c["confirm_flops"]) / c["full_run_flops"] < 7
    md = res.files["md"].read_text()
    assert "## The answer for 80 steps (the target)" in md and "## Cost" in md and "## Across budgets" in md
    assert md.count("(recommended.yaml)") == 1 and "## Recommended at the target (recommended.yaml)" in md
    header = res.files["recommended"].read_text()
    assert "for 80 steps (the target); confirmed: 2/2 trained at 80 steps" in header
    assert yaml.safe_load(header)["training"]["steps"] == 80 and yaml.safe_load(header)["training"]["lr"] == 0.04
    assert res.files["figure_budgets"].stat().st_size > 0
    run = Tracker(res.tracking_uri).client.get_run(res.parent_run_id)
    assert run.data.params["target_steps"] == "80" and run.data.tags["target_steps"] == "80"
    assert run.data.tags["answer.s00"].endswith("confirmed: 2/2 trained at 80 steps (moved down from lr 0.08: "
                                                "1/2 trained)")
    assert run.data.metrics["confirm_flops"] == pytest.approx(c["confirm_flops"])
    children = Tracker(res.tracking_uri).children(res.parent_run_id)
    phases = sorted(ch.tags.get("phase", "sweep") for ch in children)
    assert phases == ["confirm"] * 4 + ["ladder", "promote", "promote"] + ["sweep"] * 3
    # the Python API's result says the same (stablesweep.sweep returns `api.swept` of this result)
    api = swept_result(res)
    assert api.holds_for == "80 steps (the target); probes from 20 steps, rungs 20, 80"
    assert api.recommended["training"]["lr"] == 0.04
    (row,) = api.at_target
    assert row["recommended_lr"] == 0.04 and row["confirmation"] == x["confirmation"]
    assert "recommended lr 0.04 for 80 steps (the target)" in repr(api)


def test_resume_of_the_finished_sweep_runs_no_probe_again(swept):
    res, _, opts = swept
    reports = {p: p.read_text() for p in (res.sweep_dir / "rungs").glob("trial_*/result.json")}
    assert len(reports) == 7
    again = run_sweep(SweepOptions(**{**opts.__dict__, "target_steps": None, "resume": True}), echo=lambda s: None)
    assert {p: p.read_text() for p in (res.sweep_dir / "rungs").glob("trial_*/result.json")} == reports
    assert sorted(again.table["trial_id"]) == sorted(res.table["trial_id"])
    assert again.target.answers[0].confirmation == res.target.answers[0].confirmation
    problems = exactly_once_problems(res.sweep_dir, 3)
    assert not problems, problems


# bad --target-steps, --max-steps, --confirm: refused before Ray (tests/commands/test_sweep_and_ramp.py)


def test_the_default_target_is_the_trials_budget_and_adds_no_experiment(ray_cluster, tmp_path, new_store):
    new_store(tmp_path / "out" / "mlflow.db")
    opts = SweepOptions(**{**_files(tmp_path), "space": str(tmp_path / "one.yaml")}, name="d")
    (tmp_path / "one.yaml").write_text("training.lr: {grid: [0.02]}\n")
    lines: list[str] = []
    res = run_sweep(opts, echo=lines.append)
    assert res.target is None and not (res.sweep_dir / "rungs").exists()
    # --steps shortened the config's own budget: the start says what the answer holds for, and how to ask for more
    assert any("the answer holds for the trials' 20 steps (--steps); the config trains 80: add --target-steps 80"
               in ln for ln in lines), lines
    assert "phase" not in pd.read_csv(res.files["trials"]).columns and len(res.table) == 1
    assert not exactly_once_problems(res.sweep_dir, 1)  # the check reads a table without replicates or rungs
    data = json.loads(res.files["json"].read_text())
    assert data["target_steps"] == 20 and data["holds_for"] == "20 steps (the target)"
    assert swept_result(res).holds_for == "20 steps (the target)" and swept_result(res).at_target == []
    assert "recommended" in res.files and "budgets.png" not in {p.name for p in res.files.values()}


def test_a_combination_is_seeded_with_its_trials_and_replicates_as_probes_at_the_first_budget(tmp_path):
    """No Ray: the settings the rungs start from, as the replicate round picks a combination's params."""
    from stablesweep.sweep.plan import plan_sweep
    from stablesweep.sweep.ramp import boundary_runs, promote_lrs
    from stablesweep.sweep.sweep_rungs import lr_ladder, seeded_settings

    (tmp_path / "clip.yaml").write_text("training.lr: {grid: [0.01, 0.04, 0.16]}\n"
                                        "training.max_grad_norm: {choice: [null, 1.0]}\n")
    plan = plan_sweep(SweepOptions(**{**_files(tmp_path), "space": str(tmp_path / "clip.yaml")}, target_steps=80,
                                   replicates=2))
    assert plan.rungs and plan.confirm == 2 and plan.budgets.rungs == [20, 80]
    assert lr_ladder(plan) == ([0.01, 0.04, 0.16], 4.0)  # the grid, bisected as finely as it measured
    rows = [("sweep", 0.01, None, "stable", 0), ("sweep", 0.04, None, "stable", 0), ("sweep", 0.16, None, "diverged", 0),
            ("replicate", 0.08, None, "stable", 0), ("replicate", 0.08, None, "diverged", 1),
            ("sweep", 0.01, 1.0, "stable", 0), ("sweep", 0.04, 1.0, "stalled", 0), ("sweep", 0.16, 1.0, "pruned", 0)]
    done = pd.DataFrame([{"trial_id": f"t{i}", "training.lr": lr, "training.max_grad_norm": clip, "verdict": v,
                          "seed": seed, "phase": phase, "objective": 1.0, "steps": 20, "train_flops": 2e6,
                          "wall_s": 1.0} for i, (phase, lr, clip, v, seed) in enumerate(rows)])
    none, one = seeded_settings(plan, done)
    assert none.params == {"training.max_grad_norm": None} and one.params == {"training.max_grad_norm": 1.0}
    assert [(p.lr, p.phase, p.seed) for p in none.probes] == [(0.01, "sweep", None), (0.04, "sweep", None),
                                                             (0.16, "sweep", None), (0.08, "replicate", 0),
                                                             (0.08, "replicate", 1)]
    assert (none.max_stable, none.min_failed, none.status) == (0.04, 0.16, "bracketed")
    assert len(boundary_runs(none, 0)) == 5 and none.replicates and all(p.checkpoint is None for p in none.probes)
    # a stall above the band is its edge; a pruned trial is no evidence at all
    assert (one.max_stable, one.min_failed) == (0.01, 0.04) and [p.lr for p in one.probes] == [0.01, 0.04]
    assert promote_lrs(one) == [0.01, 0.04]
