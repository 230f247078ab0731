"""P(fails | lr) from replicates: a planted boundary with a known failure probability."""
from __future__ import annotations

import math

import numpy as np
import pytest

from stablesweep.analysis.boundary import Run, failures, fit_boundary, replicate_lrs, replicate_runs


def planted(lr50: float, width: float, lrs, k: int, seed: int) -> list[Run]:
    """K seeds at each lr; each fails with P = sigmoid((log lr - log lr50) / width)."""
    rng = np.random.default_rng(seed)
    runs = []
    for lr in lrs:
        p = 1 / (1 + math.exp(-(math.log(lr) - math.log(lr50)) / width))
        for s in range(k):
            runs.append(Run(lr, "diverged" if rng.random() < p else "stable", s))
    return runs


@pytest.mark.parametrize("seed", range(5))
def test_the_5pct_risk_lr_is_near_the_truth_and_below_the_failures_it_should_be_below(seed):
    lr50, width = 1.0, 0.15
    truth5 = lr50 * math.exp(width * math.log(0.05 / 0.95))  # 0.64
    lrs = list(np.geomspace(0.25, 4.0, 9))
    runs = planted(lr50, width, lrs, k=8, seed=seed)
    b, fit = fit_boundary(runs)
    assert truth5 / 1.5 < b.lr_at_risk < truth5 * 1.2
    assert 0.7 < b.lr_at_50 < 1.4
    # below every failure at an lr where failing was not itself a rare (< 5%) event
    assert all(b.lr_at_risk < r.lr for r in runs if r.verdict == "diverged" and r.lr >= truth5)
    lo, hi = b.lr_at_risk_interval
    assert lo <= b.lr_at_risk <= hi
    assert not b.single_seed and sum(e["runs"] for e in b.evidence) == len(runs)
    assert fit.p_fail(b.lr_at_risk) == pytest.approx(0.05, abs=1e-6)


def test_on_a_planted_boundary_the_5pct_risk_lr_is_below_every_failed_replicate():
    runs = planted(1.0, 0.15, list(np.geomspace(0.25, 4.0, 9)), k=8, seed=0)
    b, _ = fit_boundary(runs)
    assert b.lr_at_risk < min(r.lr for r in runs if r.verdict == "diverged")


def test_one_seed_an_lr_says_it_is_a_single_seed_estimate():
    runs = [Run(lr, "stable" if lr < 1 else "diverged") for lr in (0.1, 0.3, 0.6, 1.2, 2.4)]
    b, _ = fit_boundary(runs)
    assert b.single_seed and "single-seed" in b.note
    assert b.lr_at_risk < 1.2 and 0.6 <= b.lr_at_50 <= 1.2


def test_stalls_count_above_the_band_only():
    runs = [Run(1e-6, "stalled"), Run(1e-3, "stable"), Run(1e-2, "stable"), Run(0.1, "stalled"), Run(1.0, "diverged"),
            Run(1e-2, "pruned"), Run(1e-2, "error")]
    assert failures(runs) == [(1e-3, 0), (1e-2, 0), (0.1, 1), (1.0, 1)]


def test_a_stall_at_the_top_of_the_band_is_a_failure_one_at_its_bottom_is_not():
    # the demo ramp's replicates: at 0.0707 one seed trained and the other stalled, at the band's top
    runs = [Run(0.05, "stable", 0), Run(0.05, "stable", 1), Run(0.0707, "stable", 1), Run(0.0707, "stalled", 0),
            Run(0.1, "stalled", 0), Run(0.1, "stalled", 1), Run(0.05, "stalled", 2)]
    assert failures(runs) == [(0.05, 0), (0.05, 0), (0.0707, 0), (0.0707, 1), (0.1, 1), (0.1, 1)]
    b, _ = fit_boundary(runs)
    assert b.evidence[1] == {"lr": 0.0707, "runs": 2, "failures": 1}
    assert b.lr_at_risk < 0.0707 and b.lr_at_50 == pytest.approx(0.0707, rel=0.05)
    # a stable seed above an earlier stall does not hide it: the stall is still in the band's top half
    runs = [Run(1e-3, "stable"), Run(0.05, "stable"), Run(0.07, "stalled"), Run(0.1, "stable", 1)]
    assert (0.07, 1) in failures(runs)
    assert failures([Run(0.1, "stalled"), Run(0.1, "stable", 1)]) == [(0.1, 1), (0.1, 0)]


def test_on_a_planted_boundary_with_stalls_the_5pct_risk_lr_is_below_the_failed_replicates():
    """Failures planted as stalls (finite, not learning) as well as divergences: both count."""
    rng = np.random.default_rng(3)
    runs = []
    for lr in np.geomspace(0.25, 4.0, 9):
        p = 1 / (1 + math.exp(-math.log(lr) / 0.15))
        for s in range(8):
            runs.append(Run(float(lr), ("stalled" if s % 2 else "diverged") if rng.random() < p else "stable", s))
    b, _ = fit_boundary(runs)
    failed = [r.lr for r in runs if r.verdict != "stable"]
    assert sum(e["failures"] for e in b.evidence) == len(failed)
    truth5 = math.exp(0.15 * math.log(0.05 / 0.95))  # 0.64
    assert truth5 / 1.5 < b.lr_at_risk < truth5 * 1.2
    # below every failure where failing was not itself a rare (< 5%) event
    assert all(b.lr_at_risk < lr for lr in failed if lr >= truth5)


def test_no_failure_or_no_success_gives_no_boundary_and_says_why():
    b, _ = fit_boundary([Run(0.1, "stable"), Run(0.2, "stable")])
    assert b.lr_at_risk is None and "no run failed" in b.note
    b, _ = fit_boundary([Run(0.1, "diverged"), Run(0.2, "diverged")])
    assert b.lr_at_risk is None and "every run failed" in b.note


def test_replicates_go_inside_the_bracket():
    lrs = replicate_lrs(1.0, 1.25, points=3)
    assert lrs[0] == 1.0 and lrs[-1] == pytest.approx(1.25) and 1.0 < lrs[1] < 1.25
    assert replicate_lrs(None, 2.0) == [2.0]


def test_replicate_runs_skip_the_pairs_already_run_and_settings_without_a_bracket():
    runs = replicate_runs(0.1, 0.4, 2, 7, tried=[0.01, 0.1 * (1 + 1e-12), 0.4])
    assert [seed for _, seed in runs] == [8, 7, 8, 8]  # seed 7 (the runs' own) only where nothing ran
    assert runs[0][0] == 0.1 * (1 + 1e-12)  # an end exactly as it ran
    assert runs[1][0] == pytest.approx(0.2)
    assert replicate_runs(None, 0.4, 2, 0, []) == replicate_runs(0.1, None, 2, 0, []) == []
    assert replicate_runs(0.1, 0.4, 0, 0, []) == []


def test_a_run_that_trained_above_the_hard_edge_is_left_out_of_the_fit_and_said():
    """The demo at 480 steps (constant lr), as a ramp recorded it: every seed fails at 0.065, seed 0
    trains at 0.129 (a second regime far above) and one of four at 0.0709. Fitted with them, the
    slope is shallow and the 5%-risk lr 0.0095, 3x below 0.0272 where 20 fresh seeds all trained;
    left out (above the hard edge the curve is taken as failing), it is 0.02; the evidence keeps them."""
    S, F = "stable", "diverged"
    spec = [(0.02, [S]), (0.05, [S]), (0.0595, [S, F, F, S]), (0.065, [F, F, F, F]), (0.0709, [F, F, S, F]),
            (0.0844, [F]), (0.129, [S]), (0.147, [F]), (0.00522, [S, S, S, S]), (0.00209, [S]), (0.0045, [S])]
    runs = [Run(lr, v, i) for lr, vs in spec for i, v in enumerate(vs)]
    b, fit = fit_boundary(runs)
    assert 0.0145 < b.lr_at_risk < 0.0272 and b.runs == len(runs) - 2
    assert "2 run(s) that trained above 0.065, where every run failed, left out of the fit" in b.note
    assert {e["lr"]: (e["runs"], e["failures"]) for e in b.evidence}[0.129] == (1, 0)  # still in the evidence
    # one failure at an lr is no hard edge: nothing is left out
    b1, _ = fit_boundary([r for r in runs if r.lr not in (0.065, 0.0709)])
    assert b1.runs == len(runs) - 8 and "left out" not in b1.note
