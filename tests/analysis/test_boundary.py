"""P(fails | lr) from replicates: a planted boundary with a known failure probability."""
from __future__ import annotations

import math

import numpy as np
import pytest

from stablesweep.analysis.boundary import Run, failures, fit_boundary, replicate_lrs


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


def test_no_failure_or_no_success_gives_no_boundary_and_says_why():
    b, _ = fit_boundary([Run(0.1, "stable"), Run(0.2, "stable")])
    assert b.lr_at_risk is None and "no run failed" in b.note
    b, _ = fit_boundary([Run(0.1, "diverged"), Run(0.2, "diverged")])
    assert b.lr_at_risk is None and "every run failed" in b.note


def test_replicates_go_inside_the_bracket():
    lrs = replicate_lrs(1.0, 1.25, points=3)
    assert lrs[0] == 1.0 and lrs[-1] == pytest.approx(1.25) and 1.0 < lrs[1] < 1.25
    assert replicate_lrs(None, 2.0) == [2.0]
