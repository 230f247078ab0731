"""When a trial stops, and what its verdict is.

- `DivergenceStopper` ends a trial the moment it reports `verdict: diverged` (ASHA alone would
  not: it compares the objective, and a NaN objective never falls below a cutoff).
- `StabilityASHA` is Tune's ASHA that keeps diverged trials out of its rung statistics: a
  diverged trial reports its initial loss as objective, and recording it would loosen the cutoff
  that finite trials are judged by. Divergence is the stopper's business, not the scheduler's.
- `final_verdict` turns a trial's last result into exactly one of stable, stalled, diverged,
  pruned, error. A stalled trial ran its budget finite but did not learn (the monitor's
  `min_progress` rule); to ASHA it is a finite trial like any other (its objective is real).
  The trainable forwards the training loop's `done` as `finished` (Tune owns the `done` key and
  sets it on every stopped trial), so "stopped before finished and not diverged" means pruned.
  The monitor's verdict comes first: every report's `verdict` is the monitor's judgement of its
  whole state at that step (the explosion rule against the initial loss holds from step 0, before
  `monitor.min_steps`), so a trial the scheduler stopped is `pruned` only when no divergence rule
  held on it, and a blow-up the scheduler cut short ends `diverged` at the step its loss crossed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler
from ray.tune.stopper import Stopper

from stablesweep.vocab import (
    DIVERGED,
    ERROR,
    FINISHED,
    FIRST_BAD_STEP,
    NO_PROGRESS,
    OBJECTIVE,
    PRUNED,
    REASON,
    REPORTED_AT,
    STABLE,
    STALLED,
    STEP,
    VERDICT,
)


@dataclass(frozen=True)
class Outcome:
    verdict: str
    reason: str | None = None
    first_bad_step: int = -1
    objective: float | None = None  # finite, or None
    steps: int = 0
    ended_at: float | None = None  # epoch seconds of its last report: when the trial ended


def final_verdict(result: dict[str, Any] | None, errored: bool = False, error: str | None = None) -> Outcome:
    """The one verdict of a finished trial from its last reported result."""
    result = result or {}
    ended = result.get(REPORTED_AT, result.get("timestamp"))
    o = _verdict(result, errored, error)
    return o if not isinstance(ended, (int, float)) else replace(o, ended_at=float(ended))


def _verdict(result: dict[str, Any], errored: bool, error: str | None) -> Outcome:
    steps = int(result.get(STEP) or 0)
    obj = result.get(OBJECTIVE)
    obj = float(obj) if isinstance(obj, (int, float)) and math.isfinite(obj) else None
    if errored:
        return Outcome(ERROR, reason=error or "trial raised an exception", steps=steps)
    if VERDICT not in result:
        return Outcome(ERROR, reason=error or "no result reported", steps=steps)
    fbs = result.get(FIRST_BAD_STEP)
    fbs = int(fbs) if isinstance(fbs, (int, float)) and math.isfinite(fbs) else -1
    if result[VERDICT] == DIVERGED:
        return Outcome(DIVERGED, reason=result.get(REASON) or "diverged", first_bad_step=fbs,
                       objective=obj, steps=steps)
    if result.get(FINISHED) and result[VERDICT] == STALLED:
        return Outcome(STALLED, reason=result.get(REASON) or NO_PROGRESS, objective=obj, steps=steps)
    if result.get(FINISHED):
        return Outcome(STABLE, objective=obj, steps=steps)
    return Outcome(PRUNED, reason="scheduler", objective=obj, steps=steps)


class DivergenceStopper(Stopper):
    """Stop a trial at the first report whose verdict is `diverged`.

    `let_last_end`: a diverged report that is the loop's last (`finished`: the monitor's
    `stop_on_divergence`) is left to end by itself, a moment later, as a finished trial does. The
    ramp's searcher reads the verdict of that report (`RampSearcher.on_trial_result`, which Tune
    calls only for reports it does not stop) and plans the next probes before the trial ends, so
    Tune hands the trial's worker to one of them rather than ending it."""

    def __init__(self, let_last_end: bool = False):
        self.let_last_end = let_last_end

    def __call__(self, trial_id: str, result: dict) -> bool:
        return result.get(VERDICT) == DIVERGED and not (self.let_last_end and result.get(FINISHED))

    def stop_all(self) -> bool:
        return False


class StabilityASHA(AsyncHyperBandScheduler):
    """ASHA on the finite objective; diverged trials never enter the rungs."""

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if result and result.get(VERDICT) == DIVERGED:
            self._trial_info.pop(trial.trial_id, None)
            return
        super().on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._trial_info.pop(trial.trial_id, None)


def asha_for(n_reports: int | None, *, grace: int | None = None, reduction_factor: float = 2.0,
             metric: str = OBJECTIVE, mode: str = "min") -> StabilityASHA:
    """ASHA over report counts. By default a single pruning rung at half the budget, where the
    worse half (by objective among the trials seen there) stops. Mild on purpose: a pruned trial
    is no evidence of stability at the budget, and the trials ASHA stops are often the slow, noisy
    ones just below the boundary; map a boundary with --no-asha, hunt a best setting with it."""
    max_t = n_reports if n_reports else 10**6
    if grace is None:
        grace = max(1, math.ceil(n_reports / 2)) if n_reports else 5
    grace = max(1, min(int(grace), max_t))
    return StabilityASHA(time_attr="training_iteration", metric=metric, mode=mode, max_t=max_t,
                         grace_period=grace, reduction_factor=reduction_factor, stop_last_trials=False)
