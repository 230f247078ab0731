"""An Optuna-backed Tune searcher that records divergence properly.

Why not Ray's `OptunaSearch`: it tells every stopped trial COMPLETE with its last value (a
diverged trial would be COMPLETE with a stand-in loss, or, with NaN, the tell raises and the
Optuna trial is left RUNNING forever), and it pickles the whole study. This searcher tells Optuna
exactly what happened (see `StabilitySearcher`), keeps its study in sqlite beside the sweep so
`--resume` keeps the sampler's knowledge, and handles concurrency itself so that its bookkeeping
survives a restore (Tune's `ConcurrencyLimiter` does not save its live-trial set, and after a
restore silently drops the completion of every trial that was running).
"""
from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from stablesweep.sweep.faults import probe_output
from stablesweep.sweep.space import SearchSpace, SpaceError
from stablesweep.sweep.stopper import Outcome, final_verdict
from stablesweep.vocab import (
    DIVERGED,
    FIRST_BAD_STEP,
    OBJECTIVE,
    PRUNED,
    REASON,
    SAMPLERS,
    STABLE,
    STALLED,
    STEP,
    STEPS,
    VERDICT,
    short_name,
)

logger = logging.getLogger(__name__)

DIVERGED_CONSTRAINT = "diverged"  # Optuna constraint: > 0 means the trial diverged (infeasible)
STALLED_CONSTRAINT = "stalled"    # Optuna constraint: > 0 means the trial ran its budget but did not learn
# The constraints as Optuna's samplers store theirs: one list under the system attribute
# `constraints` (optuna.samplers._base._CONSTRAINTS_KEY), in this order. Every Optuna tool reads
# that attribute (FrozenTrial.constraints, the feasibility helpers, optuna-dashboard); the
# per-name keys of `Trial.set_constraint` (`constraints:<name>`) are read by Optuna 5 alone.
CONSTRAINTS = (DIVERGED_CONSTRAINT, STALLED_CONSTRAINT)
CONSTRAINTS_KEY = "constraints"
ABANDONED = "abandoned"  # the verdict user attr of a trial asked by an interrupted run and never run (no verdict of vocab)


def make_sampler(name: str, space: SearchSpace, seed: int | None = 0) -> optuna.samplers.BaseSampler:
    """tpe hunts the best stable setting; qmc (scrambled Sobol) fills the space evenly to map the
    region; random is the baseline; grid runs every combination of `grid`/`choice` values."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if name == "qmc":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed,
                                              warn_independent_sampling=False,
                                              warn_asynchronous_seeding=False)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return _GridSampler(space.grid(), seed=seed)
    raise SpaceError(f"--sampler {name!r}: expected one of {', '.join(SAMPLERS)}")


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler calls `study.stop()` after the last grid point is told, which raises
    outside `study.optimize`; here Tune's `num_samples` (the grid size) ends the sweep instead."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


def sqlite_url(path) -> str:
    return f"sqlite:///{path}"


def open_study(storage_url: str, study_name: str, sampler=None, *, create: bool = True) -> optuna.Study:
    storage = optuna.storages.RDBStorage(storage_url)
    if create:
        return optuna.create_study(storage=storage, study_name=study_name, sampler=sampler,
                                   direction="minimize", load_if_exists=True)
    return optuna.load_study(storage=storage, study_name=study_name, sampler=sampler)


class StabilitySearcher(Searcher):
    """Optuna ask/tell behind Tune's Searcher interface, with stability verdicts.

    What Optuna is told when a trial ends:

    - stable: COMPLETE with the objective (finite by the trainable's contract; a non-finite one
      is told FAIL rather than made up).
    - diverged: PRUNED, with user attributes `verdict`, `reason`, `first_bad_step`, and the
      Optuna constraint `diverged = 1` (infeasible; see CONSTRAINTS). PRUNED rather than FAIL because samplers
      read PRUNED trials and skip FAIL ones: with FAIL, TPE would never learn where training
      blows up and would keep proposing it. TPE ranks infeasible trials after every feasible
      one, so a diverged point lands in its "bad" density, whatever stand-in loss it reported;
      GridSampler counts it visited, so nothing is re-suggested. Intermediate values are only
      the real, finite objectives reported before the divergence (the stopping report, which
      carries the stand-in, is never reported to Optuna), so the PRUNED trial's value is a loss
      that was actually observed.
    - stalled (ran its budget finite, the loss did not fall enough): COMPLETE with its final,
      finite objective, and the constraint `stalled = 1` (infeasible). COMPLETE because the value
      is a real loss at the full budget (unlike a diverged trial's stand-in), so the sampler may
      learn from it; infeasible because an lr where the model does not learn is no answer: TPE
      ranks every infeasible trial after every feasible one (so a stall never counts as a good
      point, however low its loss), and GridSampler counts the point visited. Not PRUNED: that
      would say the scheduler stopped it early, and a stall ran its whole budget.
    - pruned (stopped by ASHA, finite): PRUNED with `verdict: pruned`, constraints 0.
    - error: FAIL with `verdict: error` and the error text.

    A trial is never left RUNNING: `reconcile_study` closes any that a crash left open.
    """

    def __init__(self, space: SearchSpace, storage_url: str, study_name: str, sampler: str = "tpe",
                 seed: int | None = 0, metric: str = OBJECTIVE, mode: str = "min",
                 max_concurrent: int = 0):
        super().__init__(metric=metric, mode=mode)
        self._space_keys = space.keys
        self._distributions = space.to_optuna()
        self._sampler_name = sampler
        self._sampler = make_sampler(sampler, space, seed)
        self._storage_url = storage_url
        self._study_name = study_name
        self._max_concurrent = max_concurrent
        self._trials: dict[str, tuple[int, int]] = {}  # tune trial id -> (optuna number, storage id)
        self._finished: set[str] = set()
        self._study: optuna.Study | None = None
        self._live: dict[str, optuna.Trial] = {}
        self._reported: dict[str, int] = {}  # last step reported to Optuna, by Tune trial id

    # ---- state ---------------------------------------------------------------------------
    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            self._study = open_study(self._storage_url, self._study_name, self._sampler)
        return self._study

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_study"] = None
        state["_live"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.__dict__.update(state)
        self._study, self._live = None, {}

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        super().restore_from_dir(checkpoint_dir)
        moved = Path(checkpoint_dir) / "optuna.db"  # the study travels with a moved sweep directory
        if self._storage_url.startswith("sqlite:///") and moved.exists():
            self._storage_url = sqlite_url(moved.resolve())

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return False  # the space is ours (given at construction)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self._max_concurrent = max_concurrent
        return True  # we limit concurrency ourselves, in state that survives a restore

    # ---- Tune interface ------------------------------------------------------------------
    def _running(self) -> int:
        return sum(1 for t in self._trials if t not in self._finished)

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id in self._trials:
            return dict(self._trial(trial_id).params)
        if self._max_concurrent and self._running() >= self._max_concurrent:
            return None
        trial = self._claim_orphan()
        if trial is None:
            trial = self.study.ask(fixed_distributions=self._distributions)
        params = dict(trial.params)
        trial.set_user_attr("tune_trial_id", trial_id)
        trial.set_user_attr("name", short_name(params))
        self._trials[trial_id] = (trial.number, trial._trial_id)
        self._live[trial_id] = trial
        return params

    def _claim_orphan(self) -> optuna.Trial | None:
        """A RUNNING Optuna trial that no Tune trial owns: asked just before a crash, after the
        last experiment checkpoint. Re-using it keeps the study free of dangling trials and keeps
        a grid point from being lost."""
        owned = {sid for _, sid in self._trials.values()}
        for ft in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if ft._trial_id not in owned and set(ft.params) == set(self._distributions):
                logger.info("re-using Optuna trial %d left open by an interrupted run", ft.number)
                return optuna.Trial(self.study, ft._trial_id)
        return None

    def _trial(self, trial_id: str) -> optuna.Trial:
        t = self._live.get(trial_id)
        if t is None:
            t = self._live[trial_id] = optuna.Trial(self.study, self._trials[trial_id][1])
        return t

    def _done_in_study(self, trial_id: str) -> bool:
        """Whether Optuna already holds the end of this Tune trial: told after Tune's last saved
        state (the driver killed in between), Tune restores it unfinished and runs it on from its
        checkpoint. Optuna's first verdict stands (a finished trial cannot change); nothing more is
        told, so a resume never fails with `UpdateFinishedTrialError`."""
        if self.study._storage.get_trial(self._trials[trial_id][1]).state.is_finished():
            self._finished.add(trial_id)
            self._live.pop(trial_id, None)
            return True
        return False

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self._trials or trial_id in self._finished:
            return
        if trial_id not in self._live and self._done_in_study(trial_id):
            return
        if result.get(VERDICT) not in (STABLE, STALLED):
            return  # the stand-in objective of a diverged report is not an observation
        value, step = result.get(self.metric), result.get(STEP)
        if isinstance(value, (int, float)) and math.isfinite(value) and isinstance(step, int):
            if step > self._reported.get(trial_id, -1):
                try:
                    self._trial(trial_id).report(float(value), step)
                except optuna.exceptions.UpdateFinishedTrialError:
                    self._done_in_study(trial_id)
                    return
                self._reported[trial_id] = step

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._trials:
            logger.warning("completion of unknown trial %s ignored", trial_id)
            return
        if trial_id in self._finished:
            return
        self._finished.add(trial_id)
        self._live.pop(trial_id, None)
        self._reported.pop(trial_id, None)
        _, sid = self._trials[trial_id]
        if error and self._storage_url.startswith("sqlite:///"):
            why = probe_output(Path(self._storage_url.removeprefix("sqlite:///")).parent)
            if why is not None:  # the disk broke it, not the setting: left RUNNING, the resume runs it again
                logger.warning("trial %s failed while the sweep folder refuses writes (%s); not told to Optuna",
                               trial_id, why)
                return
        try:
            tell(self.study, sid, final_verdict(result, errored=error))
        except Exception:  # never fail a Tune trial over bookkeeping; reconcile_study closes it later
            logger.exception("telling Optuna about trial %s failed", trial_id)


def tell(study: optuna.Study, storage_trial_id: int, outcome: Outcome) -> TrialState | None:
    """Finish one Optuna trial with a verdict; a trial already finished is left as it is."""
    storage = study._storage
    frozen = storage.get_trial(storage_trial_id)
    if frozen.state.is_finished():
        return None
    trial = optuna.Trial(study, storage_trial_id)
    trial.set_user_attr(VERDICT, outcome.verdict)
    if outcome.reason is not None:  # no attribute where there is nothing to say (no null, no -1)
        trial.set_user_attr(REASON, outcome.reason)
    if outcome.first_bad_step >= 0:
        trial.set_user_attr(FIRST_BAD_STEP, int(outcome.first_bad_step))
    trial.set_user_attr(STEPS, int(outcome.steps))
    if outcome.verdict in (STABLE, STALLED, DIVERGED, PRUNED):
        storage.set_trial_system_attr(storage_trial_id, CONSTRAINTS_KEY,
                                      [1.0 if outcome.verdict == name else 0.0 for name in CONSTRAINTS])
    if outcome.verdict == PRUNED and outcome.objective is not None and outcome.steps > 0:
        # the objective at the report where ASHA stopped it: a real, finite observation
        last = max(frozen.intermediate_values, default=-1)
        if outcome.steps > last:
            trial.report(float(outcome.objective), int(outcome.steps))
    if outcome.verdict in (STABLE, STALLED) and outcome.objective is not None:
        state, values = TrialState.COMPLETE, outcome.objective
    elif outcome.verdict in (DIVERGED, PRUNED):
        state, values = TrialState.PRUNED, None
    else:
        if outcome.verdict in (STABLE, STALLED):
            trial.set_user_attr("note", f"{outcome.verdict} but no finite objective was reported")
        state, values = TrialState.FAIL, None
    study.tell(trial, values, state=state)
    return state


def reconcile_study(storage_url: str, study_name: str, outcomes: dict[str, Outcome],
                    owned: set[str] | None = None, final: bool = True) -> dict[str, int]:
    """After the sweep, make Optuna agree with Tune. Trials still RUNNING get the verdict of their
    Tune trial (`outcomes`, by Tune trial id). Trials of `owned` Tune trials without an outcome
    (an interrupted sweep) stay RUNNING for --resume. When the sweep is `final`, RUNNING trials
    that no Tune trial owns (asked just before a crash, never run) are told FAIL with
    `verdict: abandoned`: nothing is left RUNNING. Returns the Optuna number of each Tune trial."""
    study = open_study(storage_url, study_name, create=False)
    owned = set(outcomes) | set(owned or ())
    numbers: dict[str, int] = {}
    for ft in study.get_trials(deepcopy=False):
        tid = ft.user_attrs.get("tune_trial_id")
        if tid is not None:
            numbers[tid] = ft.number
        if ft.state == TrialState.WAITING and final:  # queued (a rerun) and never asked: close it
            study._storage.set_trial_state_values(ft._trial_id, TrialState.RUNNING)
        elif ft.state != TrialState.RUNNING:
            continue
        if tid in outcomes:
            tell(study, ft._trial_id, outcomes[tid])
        elif tid in owned or not final:
            continue
        else:
            trial = optuna.Trial(study, ft._trial_id)
            trial.set_user_attr(VERDICT, ABANDONED)
            trial.set_user_attr(REASON, "asked by an interrupted run and never run")
            study.tell(ft.number, state=TrialState.FAIL)
    return numbers


def study_summary(storage_url: str, study_name: str) -> list[dict[str, Any]]:
    """One dict a trial (number, state, value, params, user attrs): for reports and tests."""
    study = open_study(storage_url, study_name, create=False)
    return [{"number": t.number, "state": t.state.name, "value": t.value, "params": dict(t.params),
             "constraints": named_constraints(t.system_attrs), **t.user_attrs} for t in study.get_trials(deepcopy=False)]


def named_constraints(system_attrs: dict) -> dict[str, float]:
    """A trial's constraints by name ({} when it has none), from the `constraints` list."""
    return dict(zip(CONSTRAINTS, system_attrs.get(CONSTRAINTS_KEY) or ()))
