"""The stability boundary as a probability: P(fails | lr) for one setting, from replicate runs.

At one lr one seed diverges and the next does not, so a boundary from one seed is a guess. Given
runs of one setting at several lrs and seeds (each with its verdict at the same step budget), we
fit a logistic curve in log lr,

    P(fails | lr) = 1 / (1 + exp(-(a + b * log(lr)))),

and report the lr at a stated risk (5%: the lr to take), the lr at 50% (the boundary itself), an
interval for the 5%-risk lr (percentiles of a bootstrap over the runs) and the evidence (runs and
failures per lr). Every run that reached its budget finite and trained is a success *at that
budget*: it says nothing about longer runs, and the fit holds for that budget only.

What counts as a failure: `diverged`, and `stalled` at the top of the setting's stable band or
above it (the edge of stability: finite but no longer learning). With replicates the band's top
is fuzzy (at one lr one seed trains and the next stalls), so a stall counts as a failure from the
middle of the band up (in log lr, between the smallest and the largest lr that trained); a stall
in the band's lower half or below it (the lr is too small), a pruned or errored run says nothing
about stability and is left out.

Above the hard edge, the smallest lr where at least two runs ran and every one failed, a run that
trained is left out of the fit (and counted in the evidence and the note): the curve is monotone
only up to that edge. On the demo at 480 steps, seed 0 trains at 0.129 while every seed fails at
0.065 (a second regime, far above the first): kept in, that one run flattened the slope and put
the 5%-risk lr 3x below the lr where fresh seeds start to fail.

Plain data in, plain data out: no Ray, no MLflow. The fit is scikit-learn's L2-regularised
logistic regression (a weak prior keeps the slope finite when the runs separate perfectly, as
they often do with few seeds).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Iterable

import numpy as np

from stablesweep.vocab import DIVERGED, STABLE, STALLED

RISK = 0.05


@dataclass(frozen=True)
class Run:
    lr: float
    verdict: str
    seed: int | None = None


@dataclass
class Boundary:
    """P(fails | lr) of one setting at one step budget."""

    lr_at_risk: float | None  # the lr at `risk` probability of failure
    lr_at_risk_interval: tuple[float, float] | None  # bootstrap percentiles (5%, 95%)
    lr_at_50: float | None  # the lr where failing is a coin flip: the boundary
    risk: float
    slope: float | None  # b, per unit of log lr (> 0: failure rises with lr)
    runs: int  # runs that entered the fit
    evidence: list[dict] = field(default_factory=list)  # per lr: runs, failures
    single_seed: bool = True  # no lr has more than one run: the fit is a single-seed estimate
    note: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lr_at_risk_interval"] = list(self.lr_at_risk_interval) if self.lr_at_risk_interval else None
        return d


@dataclass(frozen=True)
class Fit:
    a: float
    b: float

    def p_fail(self, lr: float | np.ndarray) -> float | np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.a + self.b * np.log(lr))))

    def lr_at(self, p: float) -> float | None:
        if self.b <= 0:
            return None
        return float(math.exp((math.log(p / (1 - p)) - self.a) / self.b))


def failures(runs: Iterable[Run]) -> list[tuple[float, int]]:
    """(lr, 1 if failed else 0) for the runs that say something about stability."""
    runs = list(runs)
    trained = [r.lr for r in runs if r.verdict == STABLE]
    # the middle of the stable band in log lr: a stall from here up is at the edge of stability
    middle = math.sqrt(min(trained) * max(trained)) if trained else None
    out = []
    for r in runs:
        if r.verdict == STABLE:
            out.append((r.lr, 0))
        elif r.verdict == DIVERGED:
            out.append((r.lr, 1))
        elif r.verdict == STALLED and middle is not None and r.lr >= middle * (1 - 1e-9):
            out.append((r.lr, 1))  # finite but not learning at the top of the band or above: the edge
    return out


def _fit(x: np.ndarray, y: np.ndarray, c: float) -> Fit | None:
    from sklearn.linear_model import LogisticRegression

    if len(set(y.tolist())) < 2:
        return None
    model = LogisticRegression(C=c, solver="lbfgs")
    model.fit(x.reshape(-1, 1), y)
    return Fit(a=float(model.intercept_[0]), b=float(model.coef_[0, 0]))


def fit_boundary(runs: Iterable[Run], *, risk: float = RISK, c: float = 10.0, bootstrap: int = 200,
                 seed: int = 0) -> tuple[Boundary, Fit | None]:
    """Fit P(fails | lr) to a setting's runs. `c`: inverse strength of the L2 prior on the slope
    (per unit of log lr); `bootstrap`: resamples for the interval of the risk lr."""
    data = failures(runs)
    per_lr = Counter(lr for lr, _ in data)
    fails = Counter(lr for lr, y in data if y)
    evidence = [{"lr": lr, "runs": per_lr[lr], "failures": fails.get(lr, 0)} for lr in sorted(per_lr)]
    single = all(n == 1 for n in per_lr.values())
    edge = min((lr for lr, n in per_lr.items() if n >= 2 and fails.get(lr, 0) == n), default=None)
    above = [] if edge is None else [(lr, y) for lr, y in data if lr > edge * (1 + 1e-9) and not y]
    if above:  # trained above the hard edge: out of the fit (see the module docstring)
        data = [x for x in data if x not in above]
    left_out = (f"{len(above)} run(s) that trained above {edge:.3g}, where every run failed, left out of the fit"
                if above else "")
    empty = Boundary(None, None, None, risk, None, len(data), evidence, single)
    if not data:
        empty.note = "no run says anything about stability (none stable, diverged or stalled above the band)"
        return empty, None
    x = np.log(np.array([lr for lr, _ in data], dtype=float))
    y = np.array([f for _, f in data], dtype=int)
    fit = _fit(x, y, c)
    if fit is None:
        empty.note = ("every run failed" if y.all() else "no run failed") + ": the boundary is outside the lrs tried"
        return empty, None
    if fit.b <= 0:
        empty.note = "failures do not rise with the lr here: no boundary in this range"
        return empty, fit
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(bootstrap):
        i = rng.integers(0, len(x), len(x))
        f = _fit(x[i], y[i], c)
        lr = f.lr_at(risk) if f is not None else None
        if lr is not None:
            draws.append(lr)
    interval = (float(np.percentile(draws, 5)), float(np.percentile(draws, 95))) if len(draws) >= 10 else None
    note = "single-seed estimate: one run an lr; replicate (--replicates K) for a probability" if single else ""
    note = "; ".join(x for x in (note, left_out) if x)
    return Boundary(fit.lr_at(risk), interval, fit.lr_at(0.5), risk, fit.b, len(data), evidence, single, note), fit


def replicate_lrs(max_stable: float | None, min_diverged: float | None, points: int = 3) -> list[float]:
    """Where replicates pay: inside the bracket and at its two ends (geometric), so the K seeds go
    where the outcome is uncertain, not far below or above the boundary."""
    if max_stable is None or min_diverged is None or not max_stable < min_diverged:
        return [x for x in (max_stable, min_diverged) if x is not None]
    if points <= 2:
        return [max_stable, min_diverged]
    r = (min_diverged / max_stable) ** (1 / (points - 1))
    return [max_stable * r ** i for i in range(points)]


def at_risk_lr(lr_at_risk: float | None, tried: Iterable[float], k: int) -> float | None:
    """Where K more replicates go once the bracket's are fitted: the lr at 5% risk, 3 significant
    digits, so that the refitted lr rests on runs near it. None without such an lr (or k < 1), or
    where an lr within 2% of it already ran K times (`tried`: the lr of every run of the setting)."""
    if k < 1 or lr_at_risk is None:
        return None
    lr = float(f"{lr_at_risk:.3g}")
    return None if sum(math.isclose(x, lr, rel_tol=0.02) for x in tried) >= k else lr


def replicate_runs(max_stable: float | None, min_failed: float | None, k: int, base_seed: int,
                   tried: Iterable[float]) -> list[tuple[float, int]]:
    """The (lr, seed) replicates of one setting: seeds base_seed .. base_seed + k - 1 at
    `replicate_lrs(max_stable, min_failed)`, less the pairs already run (`tried`: the lrs its own
    runs took, at base_seed). [] without a bracket (either end unknown)."""
    if max_stable is None or min_failed is None or k < 1:
        return []
    tried = list(tried)

    def seen(lr: float) -> float | None:
        return next((t for t in tried if math.isclose(t, lr, rel_tol=1e-9)), None)

    # the ends exactly as run (a rounding of the geometric points would split the evidence per lr)
    lrs = [seen(lr) or lr for lr in replicate_lrs(max_stable, min_failed)]
    return [(lr, base_seed + i) for lr in lrs for i in range(k) if not (i == 0 and seen(lr) is not None)]
