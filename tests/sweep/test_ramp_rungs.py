"""The ramp's rungs and confirmation with real Tune trials, on planted models (tests/sweep/planted.py)
whose verdict is a function of the lr, the step and the seed: probes of 20 steps, the answer for 80.

late_stall: lr 0.08 stalls at 20 steps and trains at 80 (a stall that was "not trained yet": the
bracket moves up), 0.16 diverges at step 50 (a late divergence), and 0.08 fails on an odd seed from
step 60 (the confirmation's second seed: the recommendation moves down to 0.04, confirmed there).
late_divergence: 0.04 is stable at 20 steps and diverges at step 50 (the bracket moves down)."""
from __future__ import annotations

import json

import pytest
import yaml

from stablesweep.sweep.invariant import ramp_exactly_once_problems
from stablesweep.sweep.options import RampOptions
from stablesweep.sweep.ramp import BRACKETED
from stablesweep.sweep.ramp_runner import run_ramp
from stablesweep.tracking import Tracker

CONFIG = """\
training: {lr: 0.02, max_grad_norm: null, precision: fp32, steps: 80, batch_size: 32, optimizer: adamw,
           warmup_steps: 0, schedule: constant, seed: 0, report_interval: 5}
datasets:
  enable_logits_masking: true
  mixing: proportional
  dataset_configs:
    a: {num_classes: 4, source: synthetic, eval_ratio: 1.0}
    b: {num_classes: 4, source: synthetic, eval_ratio: 1.0}
loss: {type: cross_entropy, masking: slice}
model: {name: small_cnn}
data: {image_size: 16, synthetic_per_class: 16}
"""
SPACE = 'model.factory: {choice: ["tests.sweep.planted:late_stall", "tests.sweep.planted:late_divergence"]}\n'


@pytest.fixture(scope="module")
def rungs(ray_cluster, tmp_path_factory, new_store):
    d = tmp_path_factory.mktemp("rungs")
    (d / "planted.yaml").write_text(CONFIG)
    (d / "space.yaml").write_text(SPACE)
    new_store(d / "out" / "mlflow.db")
    # the config's own budget (80 steps) is the target; the first probes run 20
    opts = RampOptions(config=str(d / "planted.yaml"), space=str(d / "space.yaml"), lr_start=0.01, lr_stop=0.32,
                       ladder="x2", climb="step", resolution=2.0, parallel=2, samples=0, steps=20,
                       out=str(d / "out"), name="r", max_concurrent=1)  # one trial worker: torch imported once
    lines: list[str] = []
    return run_ramp(opts, echo=lines.append), lines


def _by_factory(res):
    return {s.params["model.factory"].split(":")[1]: s for s in res.settings}


def test_a_stall_at_the_short_rung_that_trains_at_the_next_moves_the_bracket_up(rungs):
    res, lines = rungs
    s = _by_factory(res)["late_stall"]
    assert [r.budget for r in s.longer] == [80]  # 20 -> 80: x4, the target
    assert (s.max_stable, s.min_failed, s.status) == (0.04, 0.08, BRACKETED)  # at 20 steps 0.08 stalls
    t = s.at_target
    assert (t.max_stable, t.min_failed, t.status) == (0.08, 0.16, BRACKETED)  # at 80 it trains, 0.16 diverges late
    promoted = {p.lr: p for p in t.probes if p.phase == "promote"}
    assert sorted(promoted) == [0.04, 0.08]  # only the lrs that bound the bracket below
    assert promoted[0.04].start_step == 20 and promoted[0.04].steps == 80  # went on from its checkpoint
    assert promoted[0.08].start_step == 0  # a stall has no checkpoint to go on from: restarted at 80
    late = next(p for p in t.probes if p.lr == 0.16)
    assert late.verdict == "diverged" and late.first_bad_step == 50
    assert any("20 -> 80 steps, promoting lr 0.04, 0.08" in ln for ln in lines)


def test_a_late_divergence_moves_the_bracket_down(rungs):
    res, _ = rungs
    s = _by_factory(res)["late_divergence"]
    assert (s.max_stable, s.min_failed) == (0.04, 0.08)
    t = s.at_target
    assert (t.max_stable, t.min_failed, t.status) == (0.02, 0.04, BRACKETED)
    assert next(p for p in t.probes if p.lr == 0.04).first_bad_step == 50


def test_confirm_runs_k_seeds_at_the_target_and_a_failure_moves_the_recommendation_down(rungs):
    res, _ = rungs
    by = _by_factory(res)
    stall = by["late_stall"].at_target
    # recommended first: 0.08 (the best objective at or below 0.5 x 0.16); seed 1001 fails there
    seen = [(p.lr, p.phase, p.verdict, p.objective, p.start_step) for p in stall.probes]
    assert [(lr, vs) for lr, vs in stall.confirmation.tried] == [(0.08, ["stable", "diverged"]),
                                                                 (0.04, ["stable", "stable"])], seen
    assert {(p.lr, p.seed, p.steps) for p in stall.confirm_probes if p.verdict == "stable"} >= {(0.04, 1000, 80),
                                                                                                (0.04, 1001, 80)}
    a = {x.label.split(":")[-1]: x for x in res.answers}
    assert a["late_stall"].recommended_lr == 0.04
    assert a["late_stall"].confirmation == "confirmed: 2/2 trained at 80 steps (moved down from lr 0.08: 1/2 trained)"
    assert a["late_divergence"].recommended_lr == 0.02
    assert a["late_divergence"].confirmation == "confirmed: 2/2 trained at 80 steps"
    assert a["late_stall"].holds_for == "80 steps (the target)"


def test_every_output_names_the_target_and_every_probe_is_recorded_once(rungs):
    res, lines = rungs
    assert any("the answer is for 80 steps (the target); probes from 20 steps, rungs 20, 80" in ln for ln in lines)
    doc = json.loads((res.ramp_dir / "ramp.json").read_text())
    assert (doc["probe_steps"], doc["target_steps"], doc["rungs"], doc["extrapolated_from"]) == (20, 80, [20, 80], None)
    x = next(x for x in doc["settings"] if x["params"]["model.factory"].endswith("late_stall"))
    assert [(r["budget_steps"], r["max_stable_lr"], r["min_failed_lr"]) for r in x["budgets"]] == \
        [(20, 0.04, 0.08), (80, 0.08, 0.16)]
    assert x["budget_steps"] == 80 and x["recommended_lr"] == 0.04
    md = (res.ramp_dir / "ramp.md").read_text()
    assert "## Across budgets" in md and "confirmed: 2/2 trained at 80 steps" in md
    text = next((res.ramp_dir / "recommended").glob("*late_stall*")).read_text()
    header = [ln for ln in text.splitlines() if ln.startswith("#")]
    assert any("for 80 steps (the target); confirmed: 2/2 trained at 80 steps" in ln for ln in header)
    assert yaml.safe_load(text)["training"]["steps"] == 80  # the config of the run it is for, not the probes'
    assert (res.ramp_dir / "ramp_budgets.png").stat().st_size > 0
    # what the rungs and the confirmation cost, next to one full run at the target (`ramp_outputs.cost`)
    c = doc["cost"]
    assert c["rung_probes"] == sum(len(r.probes) for s in res.settings for r in s.longer)
    assert c["confirm_runs"] == 6 and c["confirm_flops"] > 0 and c["full_run_flops"] == c["flops_per_step"] * 80
    assert "## Cost" in md and any(ln.startswith("cost of the answer for 80 steps: rungs") for ln in lines)
    # and every run in all: each setting's totals count every probe of ramp.json, at every rung
    assert c["all_runs"] == sum(len(x["probe_list"]) for x in doc["settings"]) == \
        sum(x["total"]["runs"] for x in doc["settings"])
    assert c["all_flops"] >= c["rungs_flops"] + c["confirm_flops"] and "; in all " in cost_line(lines)
    run = Tracker(res.tracking_uri).client.get_run(res.parent_run_id)
    assert run.data.params["target_steps"] == "80" and run.data.tags["target_steps"] == "80"
    assert problems_free(res)


def cost_line(lines: list[str]) -> str:
    return next(ln for ln in lines if ln.startswith("cost of the answer for"))


def problems_free(res) -> bool:
    problems = ramp_exactly_once_problems(res.ramp_dir)
    assert not problems, problems
    return True


def test_a_target_beyond_max_steps_is_extrapolated_and_not_confirmed(ray_cluster, tmp_path, new_store):
    """late_divergence, probes of 20 steps, the answer for 320, --max-steps 80: the rungs stop at 80,
    the answer says it is extrapolated from 80 steps along the trend of the edge (0.04 at 20 steps,
    0.02 at 80: halving a x4), and no seed runs 320 steps."""
    (tmp_path / "planted.yaml").write_text(CONFIG.replace("model: {name: small_cnn}",
                                                          'model: {name: small_cnn, factory: "tests.sweep.planted:late_divergence"}'))
    new_store(tmp_path / "out" / "mlflow.db")
    opts = RampOptions(config=str(tmp_path / "planted.yaml"), lr_start=0.01, lr_stop=0.32, ladder="x2", climb="step",
                       resolution=2.0, parallel=2, samples=0, steps=20, target_steps=320, max_steps=80,
                       out=str(tmp_path / "out"), name="x", max_concurrent=1)
    lines: list[str] = []
    res = run_ramp(opts, echo=lines.append)
    (a,) = res.answers
    assert a.holds_for.startswith("extrapolated from 80 steps to 320 (the target is beyond --max-steps)")
    assert a.confirmation == "not confirmed (the target was not reached)"
    doc = json.loads((res.ramp_dir / "ramp.json").read_text())
    (x,) = doc["settings"]
    assert doc["extrapolated_from"] == 80 and x["extrapolated"]["exponent"] == pytest.approx(-0.5)
    assert x["extrapolated"]["lr_at_target"] == pytest.approx(0.01)
    assert max(p["steps"] for p in x["probe_list"]) <= 80
    assert any("extrapolated from 80 steps" in ln for ln in lines)
    problems_free(res)
