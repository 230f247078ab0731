"""Driver-side Tune callbacks of a sweep: live MLflow logging (`MlflowCallback`), one progress
line a finished trial (`ProgressCallback`), and Tune's own loggers (result.json, progress.csv,
TensorBoard) with a last row that carries the trial's final verdict (`tune_loggers`). None may
ever stop a sweep: failures are logged.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from ray.tune import Callback
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

from stablesweep.sweep.records import error_text
from stablesweep.sweep.stopper import final_verdict
from stablesweep.tracking import trial_metrics
from stablesweep.vocab import (
    BUDGET_STEPS,
    DIVERGED,
    ERROR,
    FIRST_BAD_STEP,
    HISTORY,
    INITIAL_LOSS,
    OBJECTIVE,
    PRUNED,
    REASON,
    STABLE,
    STEP,
    STEPS,
    TRAIN_FLOPS,
    VERDICT,
    short_name,
)

logger = logging.getLogger(__name__)

class MlflowCallback(Callback):
    """Live MLflow logging from the driver: a child run when a trial starts, metrics at every
    report step, verdict tags when it ends. Failures to log never stop the sweep (the final
    reconciliation writes the verdicts again from the trial table)."""

    def __init__(self, tracker, parent_run_id: str, param_keys: list[str], sweep: str,
                 setting_keys: list[str] | None = None):
        self.tracker = tracker
        self.parent = parent_run_id
        self.param_keys = list(param_keys)
        self.setting_keys = list(setting_keys or [])  # the categorical axes: a trial's `setting` tag
        self.sweep = sweep
        self._last: dict[str, int] = {}

    core = False  # log only the numbers every report holds (`trial_metrics(core=True)`), no early warning

    def describe(self, trial) -> tuple[str, dict, dict | None]:
        """A trial's child run: its name, its params and its setting (the categorical values)."""
        params = {k: trial.config.get(k) for k in self.param_keys}
        return short_name(params), params, {k: params.get(k) for k in self.setting_keys}

    def _run(self, trial) -> str:
        name, params, setting = self.describe(trial)
        run_id = self.tracker.trial_run(self.parent, trial.trial_id, name, params, setting=setting)
        if trial.trial_id not in self._last:
            self._last[trial.trial_id] = self.tracker.last_step(run_id)
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self._safe(self._run, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        def log(trial):
            run_id = self._run(trial)
            step = result.get(STEP)
            if not isinstance(step, int) or step <= self._last.get(trial.trial_id, -1):
                return  # a step an earlier (interrupted) run already logged
            self.tracker.log_trial_metrics(run_id, trial_metrics(result, core=self.core), step)
            if not self.core:
                self.tracker.log_at_risk(run_id, result, step)  # a bool: `trial_metrics` leaves it out
            if result.get(HISTORY):  # the last report of a diverged trial: the steps that led there
                self.tracker.log_trial_history(run_id, result[HISTORY], result.get(FIRST_BAD_STEP))
            self._last[trial.trial_id] = step

        self._safe(log, trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._safe(self._finish, trial, False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._safe(self._finish, trial, True)

    def _finish(self, trial, errored: bool) -> None:
        run_id = self._run(trial)
        res = trial.last_result or {}
        o = final_verdict(res, errored=errored, error=error_text(trial_error(trial)) if errored else None)
        summary = {k: res[k] for k in (OBJECTIVE, INITIAL_LOSS, TRAIN_FLOPS) if isinstance(res.get(k), (int, float))}
        summary[STEPS] = o.steps
        self.tracker.finish_trial(run_id, o.verdict, o.reason, o.first_bad_step, summary, ended_at=o.ended_at)

    @staticmethod
    def _safe(fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # tracking must never kill a sweep
            logger.warning("MLflow logging failed (%s: %s); the sweep goes on", type(e).__name__, e)


def trial_error(trial) -> str | None:
    """The error text of a failed trial: the driver's local error file (written before the
    callbacks run; the copy in storage comes later), else the stored one."""
    try:
        path = trial.error_file
        if path and Path(path).exists():
            return Path(path).read_text()
        return trial.get_error()
    except Exception:
        return None


class ProgressCallback(Callback):
    """One line per finished trial: count, verdict, params, steps, objective, time."""

    def __init__(self, total: int, param_keys: list[str]):
        self.total = total
        self.param_keys = list(param_keys)
        self.echo: Callable[[str], None] | None = None
        self._seen: set[str] = set()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["echo"] = None
        return state

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._line(trials, trial, False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trials, trial, True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A failed trial that Tune retries (FailureConfig.max_failures): its worker or node was
        lost. Not a verdict: the trial goes on from its last checkpoint and is counted once, when
        it ends."""
        try:
            step = (trial.last_result or {}).get(STEP)
            n = getattr(getattr(trial, "run_metadata", None), "num_failures", None)
            name = short_name({k: trial.config.get(k) for k in self.param_keys})
            why = error_text(trial_error(trial)) or "its worker failed"
            (self.echo or print)(f"[retry]  {name}  failed ({why[:200]}); retrying"
                                 + (f" from its checkpoint at step {step}" if step else " from the start")
                                 + (f" (failure {n} of at most {trial.max_failures})" if n else "")
                                 + f"  (trial {trial.trial_id})")
        except Exception as e:  # printing must never kill a sweep
            logger.debug("retry line failed: %s", e)

    def _line(self, trials, trial, errored: bool) -> None:
        try:
            self._seen.add(trial.trial_id)
            n = len({t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")} | self._seen)
            res = trial.last_result or {}
            o = final_verdict(res, errored=errored, error=error_text(trial_error(trial)) if errored else None)
            name = short_name({k: trial.config.get(k) for k in self.param_keys})
            budget = res.get(BUDGET_STEPS)
            what = f"steps {o.steps}" + (f"/{budget}" if budget else "")
            if o.verdict == DIVERGED:
                what += f"  {o.reason} at step {o.first_bad_step}"
            elif o.verdict == ERROR:
                what = o.reason or "error"
            if o.objective is not None and o.verdict in (STABLE, PRUNED):
                what += f"  objective {o.objective:.4g}"
            wall = res.get("time_total_s")
            tail = f"  {wall:.1f}s" if isinstance(wall, (int, float)) else ""
            width = len(str(self.total))
            (self.echo or print)(f"[{n:>{width}}/{self.total}] {o.verdict:<8}  {name}  {what}{tail}"
                                 f"  (trial {trial.trial_id})")
        except Exception as e:  # printing must never kill a sweep
            logger.debug("progress line failed: %s", e)


def final_row(result: dict | None, errored: bool = False) -> dict | None:
    """The row that closes a trial in Tune's files when its last report does not carry its final
    verdict (a scheduler stop: the report said `stable` so far, the trial is `pruned`; a crash:
    `error`), else None."""
    if not result:
        return None
    o = final_verdict(result, errored=errored)
    if o.verdict == result.get(VERDICT):
        return None
    return {**result, VERDICT: o.verdict, REASON: o.reason}


class _FinalRow:
    """Mixin for Tune's logger callbacks: one more row, with the final verdict, when a trial ends."""

    def log_trial_end(self, trial, failed: bool = False):
        try:
            row = final_row(trial.last_result, errored=failed)
            if row is not None:
                self.log_trial_result(row.get("training_iteration") or 0, trial, row)
        except Exception as e:  # Tune's files must never stop a sweep
            logger.warning("the final row of trial %s failed (%s)", trial.trial_id, e)
        super().log_trial_end(trial, failed)


class JsonLogger(_FinalRow, JsonLoggerCallback):
    pass


class CSVLogger(_FinalRow, CSVLoggerCallback):
    pass


class TBXLogger(_FinalRow, TBXLoggerCallback):
    pass


def tune_loggers() -> list[Callback]:
    """Tune's default loggers (it adds none of a kind it is given), each closing a trial with its
    final verdict."""
    return [JsonLogger(), CSVLogger(), TBXLogger()]
