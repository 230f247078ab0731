"""The ramp's planner on a known boundary (pure: no Ray, no training)."""
import math
from dataclasses import replace

import pytest

from stablesweep.sweep.ramp import (
    BRACKETED,
    DIVERGED_AT_START,
    NEVER_DIVERGED,
    NEVER_TRAINED,
    Probe,
    Setting,
    ladder,
    next_probes,
    range_test_lr,
    sample_lrs,
    seed_from_range_test,
)


def test_ladders():
    assert ladder(1e-6, 1e-5, "1-2-5") == [1e-6, 2e-6, 5e-6, 1e-5]
    assert ladder(1e-6, 8e-6, "x2") == [1e-6, 2e-6, 4e-6, 8e-6]
    assert ladder(3e-6, 1e-3, "x10") == [3e-6, 3e-5, 3e-4, 1e-3]
    assert ladder(3e-6, 2e-5, "1-2-5") == [3e-6, 5e-6, 1e-5, 2e-5]
    with pytest.raises(ValueError, match="unknown ladder"):
        ladder(1e-6, 1.0, "x3")
    with pytest.raises(ValueError, match="lr-start < lr-stop"):
        ladder(1.0, 1e-6)


def run_plan(boundary, parallel=2, resolution=1.25, start=1e-6, stop=1.0, kind="1-2-5", seed=None, climb="gallop",
             learns=0.0, stalls_from=math.inf):
    """Probes below `learns` stall (too small), from `stalls_from` to `boundary` stall (the edge),
    from `boundary` up diverge; the rest are stable."""
    s = Setting("s", {}, ladder(start, stop, kind), climb=climb)
    todo = seed or next_probes(s, parallel, resolution)
    while todo:
        for lr, phase in todo:
            verdict = ("diverged" if lr >= boundary else "stalled" if lr < learns or lr >= stalls_from
                       else "stable")
            s.probes.append(Probe(lr, verdict, phase=phase))
        todo = next_probes(s, parallel, resolution)
    return s


@pytest.mark.parametrize("boundary", [3.3e-6, 1.7e-4, 0.049, 0.9])
@pytest.mark.parametrize("parallel", [1, 2, 4])
@pytest.mark.parametrize("climb", ["gallop", "step"])
def test_bracket_contains_the_boundary_at_the_resolution(boundary, parallel, climb):
    s = run_plan(boundary, parallel, climb=climb)
    assert s.status == BRACKETED
    assert s.max_stable < boundary <= s.min_diverged
    assert s.min_diverged / s.max_stable <= 1.25 + 1e-9
    grid = math.ceil(math.log(1e6) / math.log(1.25)) + 1  # a 1.25x grid over 1e-6..1
    assert len(s.probes) < grid / 2


def test_never_diverges_and_diverges_at_start_are_reported_as_such():
    assert run_plan(boundary=10.0).status == NEVER_DIVERGED
    s = run_plan(boundary=1e-7)
    assert s.status == DIVERGED_AT_START and s.max_stable is None and s.min_diverged == 1e-6


def test_a_stable_probe_above_a_diverged_one_does_not_widen_the_bracket():
    s = Setting("s", {}, ladder(1e-3, 1.0))
    s.probes += [Probe(1e-2, "stable"), Probe(2e-2, "diverged"), Probe(5e-2, "stable")]
    assert s.max_stable == 1e-2 and s.min_diverged == 2e-2


def test_range_test_seeds_a_bracket_near_where_it_blew_up():
    steps = 100
    lr_at = range_test_lr(1e-6, 1.0, steps, 70)
    s = Setting("s", {}, ladder(1e-6, 1.0))
    seed = seed_from_range_test(s, Probe(0.0, "diverged", "loss_explosion", 70, phase="range-test"),
                                1e-6, 1.0, steps, parallel=2)
    assert [p for p, _ in seed] == pytest.approx([lr_at / 10, lr_at])
    boundary = lr_at / 3
    todo = seed
    while todo:
        for lr, phase in todo:
            s.probes.append(Probe(lr, "stable" if lr < boundary else "diverged", phase=phase))
        todo = next_probes(s, 2, 1.25)
    assert s.status == BRACKETED and s.max_stable < boundary <= s.min_diverged
    plain = run_plan(boundary, 2)
    assert len(s.tested) < len(plain.tested)  # the first pass saves climbing the ladder


@pytest.mark.parametrize("boundary", [3.3e-6, 1.7e-4, 0.049, 0.56])
def test_gallop_reaches_the_same_bracket_with_fewer_stable_probes_than_stepping(boundary):
    gallop = run_plan(boundary, parallel=2, climb="gallop")
    step = run_plan(boundary, parallel=2, climb="step")
    for s in (gallop, step):
        assert s.status == BRACKETED and s.max_stable < boundary <= s.min_diverged
        assert s.min_diverged / s.max_stable <= 1.25 + 1e-9
    stable = [len([p for p in s.probes if p.verdict == "stable"]) for s in (gallop, step)]
    assert stable[0] <= stable[1]
    if boundary > 1e-3:  # far up the ladder: the climb is what gallop saves
        assert stable[0] < stable[1] and len(gallop.probes) < len(step.probes)


def test_gallop_tries_rungs_at_doubling_strides_then_the_top():
    s = Setting("s", {}, ladder(1e-6, 1.0), climb="gallop")  # 19 rungs: 1e-6, 2e-6, 5e-6, 1e-5, ...
    tried = []
    while s.status == "running":
        todo = next_probes(s, 1, 1.25)
        if not todo or s.min_diverged:
            break
        tried += [lr for lr, _ in todo]
        s.probes += [Probe(lr, "stable") for lr, _ in todo]
    assert tried == pytest.approx([1e-6, 2e-6, 1e-5, 2e-4, 0.1, 1.0])  # rungs 0, 1, 3, 7, 15 and the top
    assert s.status == NEVER_DIVERGED


@pytest.mark.parametrize("parallel", [1, 3])
def test_stalls_below_are_climbed_past_and_stalls_above_close_the_bracket(parallel):
    """Stalls below 1e-4 (lr too small), stable up to 3e-2, stalled from 3e-2 (the edge), diverged
    from 0.5: the bracket is between the largest lr that trained and the first stall above it."""
    s = run_plan(boundary=0.5, parallel=parallel, learns=1e-4, stalls_from=3e-2)
    assert s.status == BRACKETED
    assert s.max_stable < 3e-2 <= s.min_failed and s.min_failed / s.max_stable <= 1.25 + 1e-9
    assert s.stalled_below and max(s.stalled_below) < 1e-4 < s.min_stable
    assert s.stalled_above and min(s.stalled_above) == s.min_failed
    assert all(p.verdict != "stable" or p.lr < 3e-2 for p in s.tested)
    x = s.summary(0.5)
    assert x["min_failed_lr"] == s.min_failed and x["recommended_lr"] <= 0.5 * s.min_failed
    assert x["stalled_above"] == s.stalled_above and x["stalled_below"] == s.stalled_below


@pytest.mark.parametrize("parallel", [1, 2])
def test_a_first_stall_above_the_band_is_searched_below(parallel):
    """A range test that never diverged verifies 0.1 and 1.0: 0.1 stalls (the demo at 30 steps: too large
    to train yet), 1.0 diverges, nothing trained. The stall may be the edge, not too small an lr: the
    ladder goes on below it, and the bracket is the band's top and that stall."""
    s = run_plan(boundary=0.15, parallel=parallel, learns=1e-4, stalls_from=0.08,
                 seed=[(0.1, "verify"), (1.0, "verify")])
    assert s.status == BRACKETED and s.max_stable < 0.08 <= s.min_failed
    assert s.min_failed / s.max_stable <= 1.25 + 1e-9 and 0.1 in s.stalled_above


def test_a_setting_that_only_stalls_or_stalls_then_diverges_never_trained():
    assert run_plan(boundary=10.0, learns=10.0).status == NEVER_TRAINED
    s = run_plan(boundary=1e-2, learns=1e-2)
    assert s.status == NEVER_TRAINED and s.max_stable is None and s.min_diverged is not None
    assert all(p.lr > max(s.stalled_below) for p in s.tested if p.verdict == "diverged")


def test_replicates_go_inside_the_bracket_and_the_fit_sets_the_recommended_lr():
    """K seeds at replicate_lrs(max stable, min failed), less what the bracket already ran; on a
    planted case (a seed fails above 0.05 x 1.1 ** seed) the 5%-risk lr lies below every failure."""
    from stablesweep.analysis.boundary import fit_boundary
    from stablesweep.sweep.ramp import boundary_runs, replicate_probes

    def verdict(lr, seed):
        return "diverged" if lr >= 0.05 * 1.1 ** seed else "stable"

    s = run_plan(boundary=0.05, parallel=2)
    assert s.status == BRACKETED and replicate_probes(Setting("x", {}, [1e-3, 1.0]), 3, 0) == []
    reps = replicate_probes(s, 4, 0)
    lo, hi = s.max_stable, s.min_failed
    assert all(lo * (1 - 1e-9) <= lr <= hi * (1 + 1e-9) for lr, _ in reps)
    assert sorted({seed for _, seed in reps}) == [0, 1, 2, 3]
    assert (lo, 0) not in reps and (hi, 0) not in reps and len(reps) == 3 * 4 - 2
    assert {lr for lr, _ in reps} >= {lo, hi}  # the ends exactly, so evidence per lr is not split
    for lr, seed in reps:
        s.probes.append(Probe(lr, verdict(lr, seed), phase="replicate", seed=seed))
    assert (s.max_stable, s.min_failed) == (lo, hi)  # replicates never move the bracket
    b, _ = fit_boundary(boundary_runs(s, 0))
    failed = [p.lr for p in s.tested + s.replicates if p.verdict == "diverged"]
    assert not b.single_seed and b.lr_at_risk < min(failed) and b.lr_at_risk <= b.lr_at_50
    x = s.summary(0.5, b.to_dict())
    # the 5%-risk lr sets the largest safe lr; the recommended lr is a measured stable lr at or below
    # it (these probes carry no objective: the largest such lr), never one that was not run
    assert x["rule"] == "lr_at_5pct_risk" and x["largest_safe_lr"] == pytest.approx(0.5 * b.lr_at_risk)
    safe = [p.lr for p in s.tested if p.verdict == "stable" and p.lr <= 0.5 * b.lr_at_risk]
    assert x["recommended_lr"] == pytest.approx(max(safe)) and x["recommended_lr"] < lo
    assert x["replicates"] == len(reps) and x["lr_at_5pct_risk"] == b.lr_at_risk and x["evidence"]
    one = run_plan(boundary=0.05, parallel=2)
    for lr, seed in replicate_probes(one, 1, 0):
        one.probes.append(Probe(lr, verdict(lr, seed), phase="replicate", seed=seed))
    assert fit_boundary(boundary_runs(one, 0))[0].single_seed


@pytest.mark.parametrize("late", [0.02, 0.03, 0.045])
def test_replicates_at_the_fitted_5pct_risk_lr_bring_it_within_2x_below_a_rare_failure(late):
    """The demo at 480 steps fails two ways: a hard edge (every seed) and, well below it, a late
    divergence of a few seeds. Planted: seeds 0-2 fail from 0.068, seed 3 from `late`. The bracket's
    replicates (1, 1 and 4 of 4 failed) fit a 5%-risk lr of 0.030, above the rare failure where it is
    at 0.02; K seeds at that lr (`at_risk_probes`), refitted, put it below the rare failure and
    within 2x of it, whichever side the first fit was on; they run once."""
    from stablesweep.analysis.boundary import fit_boundary
    from stablesweep.sweep.ramp import at_risk_probes, boundary_runs, replicate_probes

    def verdict(lr, seed):
        return "diverged" if lr >= (late if seed == 3 else 0.068) else "stable"

    s = run_plan(boundary=0.068, parallel=2, resolution=1.2)
    for lr, seed in replicate_probes(s, 4, 0):
        s.probes.append(Probe(lr, verdict(lr, seed), phase="replicate", seed=seed))
    first = fit_boundary(boundary_runs(s, 0))[0].lr_at_risk
    assert at_risk_probes(s, 4, 0, None) == [] and at_risk_probes(s, 0, 0, first) == []
    check = at_risk_probes(s, 4, 0, first)
    assert check == [(float(f"{first:.3g}"), seed) for seed in range(4)]
    for lr, seed in check:
        s.probes.append(Probe(lr, verdict(lr, seed), phase="replicate", seed=seed))
    refit = fit_boundary(boundary_runs(s, 0))[0].lr_at_risk
    assert late / 2 <= refit < late, (first, refit)
    assert at_risk_probes(s, 4, 0, first) == []  # ran once
    plain = run_plan(boundary=0.068, parallel=2, resolution=1.2)
    assert (s.max_stable, s.min_failed) == (plain.max_stable, plain.min_failed)  # never the bracket


@pytest.mark.parametrize("replicates", [0, 2])
def test_a_recommended_config_names_the_rule_that_set_its_lr(tmp_path, replicates):
    """recommended/<setting>.yaml: the lr with the best objective among the stable probes at or below
    the largest safe lr (with replicates 0.5 x the 5%-risk lr, without 0.5 x the smallest failed lr),
    not the edge's margin; the header names the rule and the evidence. ramp.md has the boundary
    section with replicates only."""
    from pathlib import Path

    import yaml

    from stablesweep.analysis.boundary import fit_boundary
    from stablesweep.config import load_config
    from stablesweep.sweep.options import RampOptions
    from stablesweep.sweep.ramp import SAMPLE, Budgets, boundary_runs
    from stablesweep.sweep.ramp_outputs import answer_settings, write_ramp

    demo = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    cfg = load_config(demo, ["training.steps=100"])
    s = Setting("s00", {}, [1e-3, 1e-2, 1e-1], status=BRACKETED)
    s.probes = [Probe(lr, v, steps=100, objective=o)
                for lr, v, o in ((1e-3, "stable", 0.9), (1e-2, "stable", 0.5), (3e-2, "diverged", 3.0))]
    if replicates:
        s.probes += [Probe(lr, v, steps=100, phase="replicate", seed=sd)
                     for lr, v, sd in ((1e-2, "diverged", 1), (3e-2, "stable", 1), (1e-2, "stable", 2))]
        samples = ((2e-4, 1.3), (4e-4, 1.1))  # below 0.5 x the 5%-risk lr
    else:
        samples = ((3e-3, 0.7), (5e-3, 0.45), (1.5e-2, 0.6))  # the best trains below the cap 0.015
    s.probes += [Probe(lr, "stable", steps=100, phase=SAMPLE, objective=o) for lr, o in samples]
    b = fit_boundary(boundary_runs(s, 0))[0].to_dict() if replicates else None
    budgets = Budgets(100, 100, 100)  # the target is the probes' budget
    done = answer_settings([s], budgets, 0.5, replicates, 0, confirm=0)
    a = done.answers[0]
    assert a == replace(s.answer(0.5, b), holds_for="100 steps (the target)", confirmation="not confirmed (--confirm 0)")
    opts = RampOptions(config=str(demo), lr_start=1e-3, lr_stop=1e-1, replicates=replicates)
    files = write_ramp([s], done, opts, cfg.to_dict(), cfg, tmp_path, "r", budgets, "gallop")
    assert [k for k in files if k.startswith("recommended")] == ["recommended/config.yaml"]  # the one setting
    text = files["recommended/config.yaml"].read_text()
    header = [ln for ln in text.splitlines() if ln.startswith("#")]
    assert yaml.safe_load(text)["training"]["lr"] == a.recommended_lr
    assert "# The demo: the six food datasets" in text  # the user's own file, its comments kept
    if replicates:
        assert a.rule == "lr_at_5pct_risk" and a.largest_safe_lr == pytest.approx(0.5 * b["lr_at_risk"])
        assert 4e-4 <= a.largest_safe_lr < 1e-3  # the fit put the cap between the samples and the climb
        assert a.recommended_lr == 4e-4 and a.recommended_objective == 1.1
        assert (f"# lr = 0.0004: the best objective (1.1 at the budget) among the lrs measured safe with config "
                f"(stable, and at most the largest safe lr {0.5 * b['lr_at_risk']:.3g} = 0.5 x "
                f"{b['lr_at_risk']:.3g}, the lr at 5% risk of failing, fitted over") in text
        assert any(ln.startswith("# risk: P(fails | lr) = 5% at lr") for ln in header)
        assert "## The boundary as a probability" in files["ramp.md"].read_text()
    else:
        assert a.rule == "min_failed_lr" and a.largest_safe_lr == pytest.approx(0.015)
        assert a.recommended_lr == 5e-3 and a.recommend_note is None  # the best, not the largest (0.015)
        assert header[2] == ("# lr = 0.005: the best objective (0.45 at the budget) among the lrs measured safe "
                             "with config (stable, and at most the largest safe lr 0.015 = 0.5 x 0.03, the smallest "
                             "lr that diverged or stalled above the stable band).")
        assert "# risk: not measured (one seed an lr: the bracket is a single-seed estimate)" in header
        assert "## The boundary" not in files["ramp.md"].read_text()
    assert header[0].startswith("# config.yaml: written by `stablesweep ramp` on ")
    assert "# budget: 100 steps a run; stability may not hold for a longer run: re-check at the length you train" \
        in header


def test_budgets_go_x4_from_the_probes_to_the_target_or_the_reach():
    from stablesweep.sweep.ramp import Budgets

    assert Budgets(30, 480, 480).rungs == [30, 120, 480]
    assert Budgets(20, 120, 120).rungs == [20, 80, 120]  # the last rung is the target itself
    assert Budgets(20, 20, 20).rungs == [20] and not Budgets(20, 20, 20).extrapolated
    far = Budgets(30, 4000, 500)
    assert far.rungs == [30, 120, 480, 500] and far.extrapolated
    assert far.holds_for() == "4000 steps (the target), extrapolated from 500 steps"


def test_an_answer_short_of_the_target_is_extrapolated_along_the_rungs_trend():
    from stablesweep.sweep.ramp import Budgets
    from stablesweep.sweep.ramp_outputs import extrapolate, holds_for

    rows = [{"budget_steps": 30, "max_stable_lr": 0.08, "lr_at_5pct_risk": None},
            {"budget_steps": 120, "max_stable_lr": 0.04, "lr_at_5pct_risk": None}]
    ex = extrapolate(rows, 480)  # halves with each x4: lr ~ D^-0.5
    assert ex["of"] == "max_stable_lr" and ex["exponent"] == pytest.approx(-0.5)
    assert ex["lr_at_target"] == pytest.approx(0.02)
    t = Setting("s00", {}, [0.01], budget=120)
    words = holds_for(t, Budgets(30, 480, 120), ex)
    assert words.startswith("extrapolated from 120 steps to 480 (the target is beyond --max-steps)")
    assert "near lr 0.02 there" in words
    assert extrapolate(rows[:1], 480)["lr_at_target"] is None  # one budget: no trend


def test_a_confirmation_says_what_it_holds_for_and_where_it_moved_down():
    from stablesweep.sweep.ramp import Confirmation

    c = Confirmation(480)
    assert c.words() == "not confirmed" and c.lr is None
    c.tried.append((0.1, ["stable", "diverged"]))
    assert c.lr is None and c.words().startswith("not confirmed: no lr trained on every seed at 480 steps")
    c.tried.append((0.07, ["stable", "stable"]))
    assert c.lr == 0.07
    assert c.words() == "confirmed: 2/2 trained at 480 steps (moved down from lr 0.1: 1/2 trained)"
    s = Setting("s00", {}, [0.01], budget=480, confirmation=c)
    s.probes = [Probe(lr, "stable", steps=480, objective=o) for lr, o in ((0.07, 0.6), (0.1, 0.5))]
    s.probes.append(Probe(0.3, "diverged", steps=50))
    assert s.recommendation(0.5).lr == 0.07  # 0.1, the best below 0.15, failed its confirmation
    assert s.answer(0.5).budget_steps == 480


def test_samples_left_out_beside_a_run_lr_are_made_up_to_whole_batches():
    """Stable at 0.01 and 0.1, diverged at 2: the cap is 1.0 (0.5 x 2), and 4 samples from 0.01 are
    0.0316, 0.1, 0.316, 1.0, where 0.1 already ran: 3 new lrs, a batch of 2 with a slot idle. With
    whole batches of 2 the widest gap (0.316..1.0, the higher of two as wide) is split: 0.562."""
    s = Setting("s", {}, ladder(0.01, 10.0, "x10"))
    s.probes += [Probe(0.01, "stable"), Probe(0.1, "stable"), Probe(2.0, "diverged")]
    assert sample_lrs(s, 4, 0.5) == [0.0316, 0.316, 1.0]
    assert sample_lrs(s, 4, 0.5, whole=2) == [0.0316, 0.316, 0.562, 1.0]
    assert sample_lrs(s, 4, 0.5, whole=3) == [0.0316, 0.316, 1.0]
    assert len(sample_lrs(s, 4, 0.5, whole=4)) == 4
