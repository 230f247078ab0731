"""The progressive learning-rate ramp: the largest stable lr of each setting, found with few probes.

The user's own move, automated: once a setting trains, raise its lr along a ladder (1e-6, 2e-6,
5e-6, ...) until a rung diverges, then bisect in log space between the last stable and the first
diverged lr until their ratio is at most `resolution`. Each probe is a real short training run
judged by the same monitor as everything else.

Two ways up the ladder. `step` tries every rung in turn (the user's way, and the only sensible one
when each rung continues from the last stable one). `gallop` (exponential search, the default for
probes trained from scratch) tries rungs 0, 1, 3, 7, 15, ... (strides doubling) and the top rung,
so a boundary six decades up is reached in about six probes instead of eighteen; the bisection
that follows narrows the wider bracket in log space, a halving a probe. Stable probes cost a whole
budget and diverged ones stop early, so skipping the stable rungs is where the compute goes down.

A stalled probe (finite, but its loss did not fall enough: `monitor.min_progress`) is not a rung
to climb from. Below every stable probe it means the lr is too small (climb on past it); above a
stable probe (above the band) it is the edge, as a divergence is. The bracket lies between the largest lr that
trained and the smallest that did not (diverged, or stalled above a stable lr).

With `--replicates K`, once a setting is bracketed, K seeds run at `analysis.boundary.
replicate_lrs(max stable, min failed)` (inside the bracket and at its ends; a (lr, seed) pair the
bracket already ran is not run again), and P(fails | lr) is fitted over all its probes; then K more
at the lr at 5% risk so fitted (`at_risk_probes`), where the answer is read, and the fit is made
again: the lr at 5% risk then sets the recommended lr. Replicates never move the single-seed
bracket.

The recommended lr is the best-training safe lr (`analysis.answer.recommend`): the lowest
objective at the budget among stable probes trained from scratch at base seed at or below the
largest safe lr (`safety` x the edge). A climb's stable probes are the ladder below the edge, too
sparse to tell the best lr, so once a setting is bracketed (and its replicates fitted) the ramp
trains `sample_lrs` (phase `sample`): K lrs, geometric from the smallest stable lr up to the largest
safe lr, from scratch at the budget. Samples count as probes of the bracket: one that fails lowers
the edge.

The answer is for a target budget (`Budgets`: the user's run, by default the config's own length),
while probes start short. Above the probes' budget the ramp measures each setting again at x4 the
budget, rung by rung up to the target (as ASHA and Hyperband promote): a rung is the same setting
at a longer budget (`Setting.longer`), seeded with the lrs that bound the bracket below it
(`promote_lrs`, phase `promote`); its climb and bisection then go on from those, so a stall that
was "not trained yet" trains and the bracket moves up, and a late divergence moves it down. Its
replicates and samples run at its budget; the answer is the last rung's (`Setting.at_target`),
and its recommended lr is confirmed there with fresh seeds (`Confirmation`, phase `confirm`).

This module is the planner: plain data in, the next probes out, no Ray. `stablesweep.sweep.
ramp_runner` runs the probes as Tune trials and logs them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from stablesweep.analysis.answer import SettingAnswer, recommend
from stablesweep.analysis.recommended import setting_file_name
from stablesweep.sweep.budgets import RUNG_FACTOR, Budgets  # noqa: F401 (the ramp's budgets, re-exported)
from stablesweep.vocab import (
    BUDGET_STEPS,
    DIVERGED,
    ERROR,
    REPLICATE,
    STABLE,
    STALLED,
    TRAIN_FLOPS,
    VERDICTS,
    short_name,
)

LADDERS = ("1-2-5", "x2", "x10")
SAMPLE = "sample"  # the phase of a probe sampled below the largest safe lr
PROMOTE = "promote"  # a probe at a longer rung of an lr that bounded the bracket at the rung below
CONFIRM = "confirm"  # a run of the recommended lr at the target budget with a fresh seed
CONFIRM_SEED = 1000  # confirmation seeds: training.seed + 1000 + i (never a replicate's)
CLIMBS = ("gallop", "step")

# status of a setting
RUNNING, BRACKETED, NEVER_DIVERGED, DIVERGED_AT_START, NEVER_TRAINED, FAILED = (
    "running", "bracketed", "never_diverged", "diverged_at_start", "never_trained", "error")


def ladder(start: float, stop: float, kind: str = "1-2-5") -> list[float]:
    """The rungs from `start` to `stop` (both included): 1-2-5 per decade, doubling, or decades."""
    if not (0 < start < stop):
        raise ValueError(f"the ladder needs 0 < lr-start < lr-stop, got {start} and {stop}")
    eps = 1e-9
    if kind == "x2" or kind == "x10":
        f = 2.0 if kind == "x2" else 10.0
        rungs, k = [], 0
        while start * f ** k <= stop * (1 + eps):
            rungs.append(float(f"{start * f ** k:.12g}"))
            k += 1
    elif kind == "1-2-5":
        rungs = [start]
        decade = 10.0 ** math.floor(math.log10(start))
        while decade <= stop * 10:
            for m in (1.0, 2.0, 5.0):
                v = float(f"{m * decade:.6g}")
                if start * (1 + eps) < v <= stop * (1 + eps):
                    rungs.append(v)
            decade *= 10
    else:
        raise ValueError(f"unknown ladder {kind!r}; expected one of {', '.join(LADDERS)}")
    if rungs[-1] < stop * (1 - eps):
        rungs.append(stop)
    return rungs


def geometric_points(lo: float, hi: float, k: int) -> list[float]:
    """k points splitting [lo, hi] into k + 1 equal parts in log space."""
    r = math.log(hi / lo)
    return [lo * math.exp(r * i / (k + 1)) for i in range(1, k + 1)]


def range_test_lr(lr_start: float, lr_stop: float, steps: int, step: int) -> float:
    """The lr at `step` of an exponential range test from lr_start to lr_stop over `steps`."""
    return lr_start * (lr_stop / lr_start) ** (min(step, steps - 1) / max(1, steps - 1))


@dataclass
class Confirmation:
    """The recommended lr run at the target with fresh seeds: each lr tried, its runs' verdicts."""

    budget: int
    tried: list[tuple[float, list[str]]] = field(default_factory=list)  # (lr, verdicts), in order

    @property
    def lr(self) -> float | None:
        """The confirmed lr: the last one tried, where every seed trained; None when none was."""
        if self.tried and all(v == STABLE for v in self.tried[-1][1]):
            return self.tried[-1][0]
        return None

    def words(self) -> str:
        """e.g. "confirmed: 2/2 trained at 480 steps", with the lrs it moved down from."""
        if not self.tried:
            return "not confirmed"
        parts = [f"lr {lr:.3g}: {sum(v == STABLE for v in vs)}/{len(vs)} trained" for lr, vs in self.tried]
        if self.lr is None:
            return f"not confirmed: no lr trained on every seed at {self.budget} steps ({'; '.join(parts)})"
        n = len(self.tried[-1][1])
        return f"confirmed: {n}/{n} trained at {self.budget} steps" + (
            f" (moved down from {'; '.join(parts[:-1])})" if len(parts) > 1 else "")


@dataclass
class Probe:
    lr: float
    verdict: str  # stable | stalled | diverged | error
    reason: str | None = None
    first_bad_step: int = -1
    steps: int = 0
    train_flops: float = 0.0
    wall_s: float = 0.0
    phase: str = "ladder"  # ladder | bisect | verify | range-test | replicate | sample
    objective: float = math.nan
    start_step: int = 0  # continue mode: the step the warm start began at
    checkpoint: str | None = None  # continue mode: where this probe's last state lies (path or URI)
    trial_id: str | None = None
    node_id: str | None = None  # the Ray node it ran on
    seed: int | None = None  # training.seed of a replicate (None: the config's seed)
    budget: int | None = None  # the rung's budget it ran at (None: the ramp's only budget)


@dataclass
class Setting:
    """One combination of the categorical axes, and everything probed for it."""

    key: str
    params: dict[str, Any]
    rungs: list[float]
    probes: list[Probe] = field(default_factory=list)
    range_test: Probe | None = None
    status: str = RUNNING
    climb: str = "gallop"  # gallop | step (see the module docstring)
    budget: int | None = None  # a longer rung's budget (None: the first probes')
    longer: list["Setting"] = field(default_factory=list)  # the same setting at the longer rungs, in order
    confirmation: Confirmation | None = None  # at the target (on the last rung)
    confirm_probes: list[Probe] = field(default_factory=list)  # the confirmation's runs

    @property
    def at_target(self) -> "Setting":
        """The rung whose answer is the setting's: the longest measured."""
        return self.longer[-1] if self.longer else self

    @property
    def every_probe(self) -> list[Probe]:
        """Its probes at every rung, each rung's confirmation runs after its own (ramp.json's list)."""
        return [p for r in (self, *self.longer) for p in (*r.probes, *r.confirm_probes)]

    # -- what is known ------------------------------------------------------------------------
    @property
    def tested(self) -> list[Probe]:
        """The probes of the bracket (not the range test, not the replicates)."""
        return [p for p in self.probes if p.phase not in ("range-test", REPLICATE)]

    @property
    def replicates(self) -> list[Probe]:
        return [p for p in self.probes if p.phase == REPLICATE]

    def _lrs(self, verdict: str) -> list[float]:
        return sorted(p.lr for p in self.tested if p.verdict == verdict)

    @property
    def min_diverged(self) -> float | None:
        d = self._lrs(DIVERGED)
        return d[0] if d else None

    @property
    def stalled_above(self) -> list[float]:
        """Stalls above the stable band: the edge of stability (finite, no longer learning). As in
        `analysis.boundary.failures`; a stall inside the band is noise and bounds nothing."""
        st = self._lrs(STABLE)
        return [x for x in self._lrs(STALLED) if st and x > st[-1]]

    @property
    def stalled_below(self) -> list[float]:
        """Stalls below every stable lr (or with none yet): the lr is too small to learn."""
        st = self._lrs(STABLE)
        return [x for x in self._lrs(STALLED) if not st or x < st[0]]

    @property
    def min_failed(self) -> float | None:
        """The smallest lr that did not train: diverged, or stalled above a stable lr."""
        f = [x for x in (self.min_diverged, *self.stalled_above) if x is not None]
        return min(f) if f else None

    @property
    def min_stable(self) -> float | None:
        st = self._lrs(STABLE)
        return st[0] if st else None

    @property
    def max_stable(self) -> float | None:
        """The largest stable lr below the smallest failed one (a stable probe above a failed
        one, which noise near the boundary can give, does not widen the bracket)."""
        hi = self.min_failed
        s = [x for x in self._lrs(STABLE) if hi is None or x < hi]
        return s[-1] if s else None

    def last_stable_probe(self) -> Probe | None:
        lo = self.max_stable
        return next((p for p in self.tested if p.lr == lo and p.verdict == STABLE), None)

    def has(self, lr: float) -> bool:
        return any(math.isclose(p.lr, lr, rel_tol=1e-9) for p in self.tested)

    def answer(self, safety: float, boundary: dict[str, Any] | None = None) -> SettingAnswer:
        """What its probes say (`analysis.answer`): the bracket's probes, and with `boundary`
        (`analysis.boundary.Boundary.to_dict()` of its probes and replicates) the probability
        boundary, whose 5%-risk lr is then the edge of the recommended lr."""
        lo, hi = self.max_stable, self.min_failed
        b = boundary or {}
        rec = self.recommendation(safety, b)
        plain = [p for p in self.probes if p.phase != REPLICATE]
        rt = [self.range_test] if self.range_test else []
        return SettingAnswer(
            params=self.params, label=short_name(self.params) or "config",
            budget_steps=self.budget or max((p.steps - p.start_step for p in self.tested), default=0),
            counts={v: sum(p.verdict == v for p in self.tested) for v in VERDICTS},
            min_stable_lr=self.min_stable, max_stable_lr=lo, min_diverged_lr=self.min_diverged, min_failed_lr=hi,
            stalled_below=self.stalled_below, stalled_above=self.stalled_above, best_lr=self.best_lr(),
            safety=safety, lr_at_5pct_risk=b.get("lr_at_risk"),
            lr_at_5pct_risk_interval=b.get("lr_at_risk_interval"), lr_at_50pct=b.get("lr_at_50"),
            single_seed=b.get("single_seed"), evidence=b.get("evidence"), boundary_note=b.get("note"),
            replicates=len(self.replicates), replicate_flops=sum(p.train_flops for p in self.replicates),
            train_flops=sum(p.train_flops for p in plain + rt), status=self.status,
            probes=len(self.tested) + len(rt), compute_s=sum(p.wall_s for p in plain + rt)).recommendation(rec)

    def recommendation(self, safety: float, boundary: dict[str, Any] | None = None):
        """`analysis.answer.recommend` over its comparable probes; once confirmed at the target, the
        confirmed lr (a failed confirmation moved it down), or none where no lr was confirmed."""
        lo, hi, b = self.max_stable, self.min_failed, boundary or {}
        rec = recommend(self.comparable(), max_stable=lo, min_failed=hi, at_risk=b.get("lr_at_risk"), safety=safety)
        if rec.lr is not None and not any(p.phase == SAMPLE for p in self.tested):
            rec = replace(rec, note="; ".join(x for x in (rec.note, "no lr sampled below the largest safe lr: "
                                                          "chosen among the climb's probes") if x))
        c = self.confirmation
        if c is not None and c.tried and c.tried[0][0] == rec.lr and c.lr != rec.lr:
            objective = dict(self.comparable()).get(c.lr) if c.lr is not None else None
            rec = replace(rec, lr=c.lr, objective=objective, note="; ".join(x for x in (rec.note, c.words()) if x))
        return rec

    def comparable(self) -> list[tuple[float, float | None]]:
        """(lr, objective) of its stable probes whose objectives compare: from scratch, at the
        config's seed, over the whole budget (not a warm-started rung, not a replicate). A promoted
        probe continued from its own lr's checkpoint is the same run, longer: it compares."""
        return [(p.lr, p.objective if math.isfinite(p.objective) else None) for p in self.tested
                if p.verdict == STABLE and (p.start_step == 0 or p.phase == PROMOTE) and p.seed is None]

    def safe_below(self, lr: float) -> float | None:
        """The next lower measured-safe lr: its largest comparable stable lr below `lr`."""
        below = [x for x, _ in self.comparable() if x < lr * (1 - 1e-9)]
        return max(below) if below else None

    def best_lr(self) -> float | None:
        """The comparable stable lr with the best objective, safe or not."""
        scored = [(obj, lr) for lr, obj in self.comparable() if obj is not None]
        return min(scored)[1] if scored else None

    def summary(self, safety: float, boundary: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything known of the setting, as ramp.json says it: its answer (`answer`), its
        range test and its probes."""
        a = self.answer(safety, boundary)
        lo, hi = a.max_stable_lr, a.min_failed_lr
        extra = {} if boundary is None else {
            "lr_at_5pct_risk": a.lr_at_5pct_risk, "lr_at_5pct_risk_interval": a.lr_at_5pct_risk_interval,
            "lr_at_50pct": a.lr_at_50pct, "evidence": a.evidence, "single_seed": a.single_seed,
            "boundary_note": a.boundary_note, "replicates": a.replicates, "replicate_flops": a.replicate_flops,
            "replicate_compute_s": sum(p.wall_s for p in self.replicates)}
        return {
            "setting": self.key, "params": self.params, "status": a.status,
            "min_stable_lr": a.min_stable_lr, "max_stable_lr": lo, "min_diverged_lr": a.min_diverged_lr,
            "min_failed_lr": hi, "stalled_below": a.stalled_below, "stalled_above": a.stalled_above,
            "ratio": (hi / lo) if lo and hi else None, "largest_safe_lr": a.largest_safe_lr, "rule": a.rule,
            "recommended_lr": a.recommended_lr, "recommended_objective": a.recommended_objective,
            "recommend_note": a.recommend_note, "single_seed": a.single_seed if boundary else True,
            "recommended_file": f"recommended/{setting_file_name(self.params)}" if a.recommended_lr is not None else None,
            "probes": a.probes, "compute_s": a.compute_s, TRAIN_FLOPS: a.train_flops, BUDGET_STEPS: a.budget_steps,
            "range_test": asdict(self.range_test) if self.range_test else None,
            "probe_list": [asdict(p) for p in self.probes],
            **extra,
        }


def promote_lrs(s: Setting, at_risk: float | None = None) -> list[float]:
    """The lrs of a rung promoted to the next: those that bound its bracket (its max stable and
    min failed lr; one of them where it has only one), and with replicates its lr at 5% risk."""
    lrs = [x for x in (s.max_stable, s.min_failed) if x is not None]
    if at_risk is not None:
        x = float(f"{at_risk:.3g}")
        if not any(math.isclose(x, y, rel_tol=0.02) for y in lrs):
            lrs.append(x)
    return sorted(lrs)


def replicate_probes(s: Setting, k: int, base_seed: int) -> list[tuple[float, int]]:
    """The (lr, seed) replicates of a bracketed setting: seeds base_seed .. base_seed + k - 1 at
    `replicate_lrs(max stable, min failed)`, less those the bracket already ran (its probes ran
    at base_seed). [] when the setting has no bracket."""
    from stablesweep.analysis.boundary import replicate_runs

    return replicate_runs(s.max_stable, s.min_failed, k, base_seed, [p.lr for p in s.tested])


def at_risk_probes(s: Setting, k: int, base_seed: int, at_risk: float | None) -> list[tuple[float, int]]:
    """K more replicates (seeds base_seed .. base_seed + k - 1) where the answer is read:
    `boundary.at_risk_lr` of the lr at 5% risk the bracket's replicates fitted, so that the refitted
    5%-risk lr rests on runs near it rather than on the tail of a slope fitted 2-5x above it (the
    bracket's replicates fail 25-100%). [] where that gives no lr."""
    from stablesweep.analysis.boundary import at_risk_lr

    lr = at_risk_lr(at_risk, [p.lr for p in s.tested + s.replicates], k)
    return [] if lr is None else [(lr, base_seed + i) for i in range(k)]


def sample_lrs(s: Setting, k: int, safety: float, at_risk: float | None = None, whole: int = 1) -> list[float]:
    """K lrs to train below a setting's largest safe lr (`safety` x the lr at 5% risk, else x the
    smallest failed lr, else its largest stable lr): geometric from its smallest stable lr (a decade
    below the cap where that is not below it, above any stall below the band) up to the cap itself,
    3 significant digits, less those within 2% of an lr it already ran from scratch. `whole`: where
    that leaves a number that is not a multiple of it (a batch with a slot idle), the widest gaps
    between the lrs (those it ran included) are split in the middle, the highest first, until it is.
    [] when it has no stable lr or k is 0."""
    if k <= 0 or s.max_stable is None:
        return []
    edge = at_risk if at_risk is not None else s.min_failed
    cap = safety * edge if edge is not None else s.max_stable
    lo = s.min_stable if s.min_stable < cap * (1 - 1e-9) else cap / 10
    floor = max(s.stalled_below, default=None)
    if floor is not None and lo < floor:
        lo = floor
    if lo >= cap:
        return []
    ran = [p.lr for p in s.tested if p.start_step == 0 and p.seed is None]
    points = [float(f"{lo * (cap / lo) ** (i / k):.3g}") for i in range(1, k + 1)]
    out = [x for x in dict.fromkeys(points) if not any(math.isclose(x, r, rel_tol=0.02) for r in ran)]
    while out and len(out) % whole:
        edges = sorted({lo, *out, *(r for r in ran if lo < r <= cap)})
        a, b = max(zip(edges, edges[1:]), key=lambda ab: (ab[1] / ab[0], ab[1]))
        out.append(float(f"{math.sqrt(a * b):.3g}"))
    return sorted(out)


def boundary_runs(s: Setting, base_seed: int) -> list:
    """Every probe of the setting's fixed-lr runs (bracket and replicates) as `boundary.Run`s."""
    from stablesweep.analysis.boundary import Run

    return [Run(p.lr, p.verdict, base_seed if p.seed is None else p.seed) for p in s.tested + s.replicates]


def next_probes(s: Setting, parallel: int, resolution: float) -> list[tuple[float, str]]:
    """The next (lr, phase) probes of a setting, at most `parallel` of them; [] when it is done
    (and `s.status` then says how it ended)."""
    if s.status != RUNNING:
        return []
    if any(p.verdict == ERROR for p in s.tested):
        s.status = FAILED
        return []
    lo, hi = s.max_stable, s.min_failed
    first = s.rungs[0]
    # stalls below any stable lr: the lr is too small, so nothing at or below them is worth a probe
    floor = max(s.stalled_below, default=None) if lo is None else None
    if hi is None:  # climbing: the next untested rungs above the last stable one (or the last stall)
        base = lo if lo is not None else floor
        up = [r for r in _climb_rungs(s) if (base is None or r > base * (1 + 1e-9)) and not s.has(r)]
        if not up:
            s.status = NEVER_DIVERGED if lo is not None else NEVER_TRAINED
            return []
        return [(r, "ladder") for r in up[:parallel]]
    if lo is None:  # nothing trained below the first failed lr: step down the ladder (above any stall)
        if hi <= first * (1 + 1e-9):
            s.status = DIVERGED_AT_START
            return []
        down = [r for r in s.rungs if r < hi * (1 - 1e-9) and (floor is None or r > floor * (1 + 1e-9))
                and not s.has(r)]
        if not down and floor is not None:
            # with nothing trained yet a stall may be the edge (too large to train in the budget: a
            # range test's verification starts there), not too small: the rungs below the lowest stall
            down = [r for r in s.rungs if r < min(s.stalled_below) * (1 - 1e-9) and not s.has(r)]
        if not down:
            s.status = NEVER_TRAINED  # every lr tried either stalled (too small) or diverged
            return []
        return [(r, "ladder") for r in sorted(down, reverse=True)[:parallel]]
    if hi / lo <= resolution * (1 + 1e-9):
        s.status = BRACKETED
        return []
    # bisect: the fewest points that split the bracket, at most `parallel`
    k = 1
    while k < parallel and (hi / lo) ** (1 / (k + 1)) > resolution:
        k += 1
    return [(lr, "bisect") for lr in geometric_points(lo, hi, k)]


def _climb_rungs(s: Setting) -> list[float]:
    """The rungs the climb may try, in order: all of them (step), or those at positions 2^j - 1
    and the top one (gallop)."""
    if s.climb == "step":
        return s.rungs
    picks, j = [], 0
    while (1 << j) - 1 < len(s.rungs):
        picks.append(s.rungs[(1 << j) - 1])
        j += 1
    if picks[-1] != s.rungs[-1]:
        picks.append(s.rungs[-1])
    return picks


def seed_from_range_test(s: Setting, rt: Probe, lr_start: float, lr_stop: float, rt_steps: int,
                         parallel: int) -> list[tuple[float, str]]:
    """Probes that verify the bracket proposed by a range test (instead of climbing from the bottom).

    The range test spends few steps at each lr, so the lr where it blew up is an upper guess of the
    fixed-lr boundary: verify it and a decade below it (plus points between when running more in
    parallel). A range test that never diverged proposes the top of the ladder.
    """
    s.range_test = rt
    if rt.verdict == DIVERGED and rt.first_bad_step >= 0:
        hi = range_test_lr(lr_start, lr_stop, rt_steps, rt.first_bad_step)
    else:
        hi = lr_stop
    hi = min(max(hi, lr_start), lr_stop)
    lo = max(hi / 10, lr_start)
    inner = geometric_points(lo, hi, parallel - 2) if parallel > 2 and hi > lo else []
    points = [lo, *inner, hi] if hi > lo else [lo]
    return [(lr, "verify") for lr in points]
