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
