"""The lr ramp as one Tune run: `RampSearcher`, Tune's searcher, hands out each setting's next probes
as the planner (`sweep.ramp`) proposes them; `RampCallback`, on the driver, logs each probe to
MLflow and hands the searcher what Tune does not give a searcher (a stable probe's checkpoint, a
failed probe's error).

Each setting goes its own way through the phases: the range test (--first-pass range-test), the
climb and bisection, the replicates (--replicates K: K seeds in the bracket, then K at the lr at 5%
risk fitted to them), the samples (--samples K). Within a phase a
setting runs in batches, the planner's next probes of it (at most --parallel; one at a time in
continue mode, where each rung starts from the last stable rung's checkpoint), and every probe of
a batch has its verdict (from its last report, `on_trial_result`) before its next batch is planned,
so a setting gets the probes that the ramp's rounds gave it when each round was a Tune run of its
own, and the next batch takes the workers of the last one (Tune's `reuse_actors`). Settings do not wait for each other;
--max-concurrent bounds the probes at once (Tune's ConcurrencyLimiter). `suggest` returns the next
probe's trial config, None while a setting's batch still runs (Tune asks again), FINISHED once
every setting is done.

The searcher's state (the settings and their probes, the batches, the probes handed out) is saved
with Tune's experiment (`save`, `restore`: Tune calls them at each snapshot of its experiment and
at `Tuner.restore`), so a restored ramp (`ramp --resume`) goes on where it was: the probes that
ended are not run again, those that were running are resumed by Tune under their trial ids.
"""
from __future__ import annotations

import logging
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ray.tune.search import Searcher

from stablesweep.analysis.text import sig3_text
from stablesweep.cluster.storage import uri_scheme
from stablesweep.sweep.callbacks import MlflowCallback, trial_error
from stablesweep.sweep.faults import probe_output, storage_fault
from stablesweep.sweep.options import batch_of, samples_of
from stablesweep.sweep.ramp import (
    CONFIRM,
    CONFIRM_SEED,
    PROMOTE,
    RUNNING,
    SAMPLE,
    Budgets,
    Confirmation,
    Probe,
    Setting,
    at_risk_probes,
    boundary_runs,
    next_probes,
    promote_lrs,
    replicate_probes,
    sample_lrs,
    seed_from_range_test,
)
from stablesweep.sweep.records import error_text
from stablesweep.vocab import (
    BUDGET_STEPS,
    DIVERGED,
    ERROR,
    FINISHED,
    FIRST_BAD_STEP,
    FLOPS_PER_STEP,
    INITIAL_LOSS,
    LR_KEY,
    OBJECTIVE,
    REASON,
    REPLICATE,
    REPORTED_AT,
    SEED_KEY,
    STABLE,
    STEP,
    STEPS,
    TRAIN_FLOPS,
    VERDICT,
    short_name,
)

logger = logging.getLogger(__name__)

RANGE, CLIMB, REPLICATES, AT_RISK, PROMOTING, SAMPLES, CONFIRMING, DONE = (
    "range-test", "climb", "replicates", "at-risk", "promote", "samples", "confirm", "done")
_NEXT = {RANGE: CLIMB, CLIMB: REPLICATES, REPLICATES: AT_RISK, AT_RISK: PROMOTING, PROMOTING: SAMPLES,
         SAMPLES: CONFIRMING, CONFIRMING: DONE}


@dataclass
class Request:
    """One probe: its setting, lr and phase, its trial config, and once handed out and ended, its
    Tune trial and its Probe."""

    setting: Setting
    lr: float
    phase: str
    config: dict[str, Any]  # the trial config of `trainable.run_trial`: dotted config keys (and WARM_START)
    start_step: int = 0  # continue mode: the step its warm start begins at
    trial_id: str | None = None
    probe: Probe | None = None
    summary: dict[str, float] | None = None  # its MLflow run's final numbers (`finish_probe_run`)
    ended_at: float | None = None  # when its last report was made (epoch seconds)


def label(s: Setting) -> str:
    return short_name(s.params) or "config"


class RampSearcher(Searcher):
    """The ramp's probes, setting by setting and batch by batch (see the module docstring)."""

    def __init__(self, settings: list[Setting], opts, *, budget: int, base_seed: int,
                 echo: Callable[[str], None] | None = print, folder: str | None = None,
                 budgets: Budgets | None = None, continues: bool = False, confirm: int = 0,
                 entry: str | None = None):
        super().__init__()
        self.settings, self.opts, self.budget, self.base_seed = settings, opts, budget, base_seed
        self.budgets = budgets or Budgets(budget, budget, budget)
        self.continues = continues  # a promoted probe goes on from its own lr's checkpoint (constant lr)
        self.confirm = confirm  # seeds at the target for the recommended lr (0: not confirmed)
        self.folder = folder  # the ramp's folder: a probe's error while it refuses writes is the disk's
        self.per_setting = 1 if opts.mode == "continue" else opts.parallel
        self.echo = echo
        self.stage: dict[str, str] = {}
        self.batch: dict[str, list[Request]] = {}
        self.trials: dict[str, Request] = {}  # Tune trial id -> its probe, every probe handed out
        self.tune_trials: set[str] | None = None  # set before a restore: the trials Tune's state holds
        # where each setting starts: the range test or the climb; a sweep's settings, whose trials
        # bracketed them at the first budget already, at PROMOTING (`sweep.sweep_rungs`)
        for s in settings:
            self._enter(s, entry or (RANGE if opts.first_pass == "range-test" else CLIMB))

    # ---- Tune's side -----------------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        for s in self.settings:  # batches whose probes have all ended: the next ones
            reqs = self.batch.get(s.key)
            if reqs and all(r.probe is not None for r in reqs):
                self._complete(s)
        for s in self.settings:
            for r in self.batch.get(s.key, []):
                if r.trial_id is None:
                    r.trial_id = trial_id
                    self.trials[trial_id] = r
                    return dict(r.config)
        return Searcher.FINISHED if self.finished else None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """A probe's last report (the loop's `finished`) is its verdict: taken now, the setting's next
        probes are handed out while Tune ends the trial, and Tune gives its worker to one of them
        (Tune keeps one idle worker; another would be ended before the batch's last probe ends, and
        the next probe would import torch again in a new one). A stable probe whose checkpoint the
        next probes may start from waits for its end (`RampCallback` hands the checkpoint over)."""
        if result.get(FINISHED) and not (result.get(VERDICT) == STABLE and self.reads_checkpoints):
            self.on_trial_complete(trial_id, result)

    @property
    def reads_checkpoints(self) -> bool:
        """Whether a later probe may start from a stable probe's checkpoint: continue mode's climb,
        a promotion that goes on from its lr's checkpoint."""
        return self.continues or self.opts.mode == "continue"

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """The probe of a trial that ended, as the planner reads it. A stable probe's checkpoint and
        an error's text come after, from `RampCallback`, before the next `suggest`."""
        req = self.trials.get(trial_id)
        if req is None or req.probe is not None:
            return
        m = result or {}
        why = probe_output(Path(self.folder)) if error and self.folder else None
        if why is not None:  # the disk broke it, not its lr: no verdict; the ramp stops, --resume runs it again
            raise OSError(f"probe {trial_id} failed while the ramp's folder {self.folder} refuses writes ({why})")
        if error or VERDICT not in m:
            probe = Probe(req.lr, ERROR, phase=req.phase, reason="the probe raised an exception" if error else None)
        else:
            bad = m.get(FIRST_BAD_STEP)  # None (Tune's rows hold no -1) until a step went bad
            probe = Probe(req.lr, m[VERDICT], m.get(REASON), -1 if bad is None else int(bad),
                          int(m.get(STEP, 0)), float(m.get(TRAIN_FLOPS, 0.0)),
                          float(m.get("time_total_s", 0.0)), req.phase, float(m.get(OBJECTIVE, math.nan)),
                          start_step=req.start_step, trial_id=m.get("trial_id", trial_id), node_id=m.get("node_id"))
        probe.seed = req.config.get(SEED_KEY)
        req.summary = _summary(m)
        ended = m.get(REPORTED_AT, m.get("timestamp"))  # Tune's timestamp is whole seconds
        req.ended_at = ended if isinstance(ended, (int, float)) and not error else None
        req.probe = probe

    @property
    def finished(self) -> bool:
        return all(self.stage.get(s.key) == DONE for s in self.settings)

    def probes(self) -> list[Request]:
        """Every probe that ended, in the order handed out."""
        return [r for r in self.trials.values() if r.probe is not None]

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"settings": self.settings, "stage": self.stage, "batch": self.batch,
                         "trials": self.trials}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        self.settings, self.stage, self.batch, self.trials = (state["settings"], state["stage"], state["batch"],
                                                              state["trials"])
        if self.tune_trials is not None:  # handed out, but not in Tune's state (saved apart) or ended there
            # without a verdict here (an output fault broke it): hand out again
            for trial_id, req in list(self.trials.items()):
                if req.probe is None and trial_id not in self.tune_trials:
                    del self.trials[trial_id]
                    req.trial_id = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["echo"] = None  # a printer of this process; the restoring one sets its own
        return state

    # ---- the phases --------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        if self.echo is not None:
            self.echo(text)

    def _complete(self, s: Setting) -> None:
        """A setting's batch has ended: its probes into the setting, then its next batch."""
        reqs, stage = self.batch[s.key], self.stage[s.key]
        if stage == RANGE:  # the range test proposes the bracket that the first probes verify
            o = self.opts
            probe = reqs[0].probe
            probe.lr = o.lr_start
            todo = seed_from_range_test(s, probe, o.lr_start, o.lr_stop, o.range_steps or self.budget,
                                        self.per_setting)
            where = f"blew up at step {probe.first_bad_step}" if probe.verdict == DIVERGED else "never diverged"
            self._say(f"  range test {label(s)}: {where}; verifying " + ", ".join(f"{lr:.2e}" for lr, _ in todo))
            self._set(s, CLIMB, [self._request(s, lr, phase) for lr, phase in todo])
            return
        cur = s.at_target
        if stage == CONFIRMING:
            cur.confirm_probes.extend(r.probe for r in reqs)
            cur.confirmation.tried.append((reqs[0].lr, [r.probe.verdict for r in reqs]))
            self._enter(s, CONFIRMING)  # moved down, or done
            return
        for r in reqs:
            r.probe.budget = cur.budget
        cur.probes.extend(r.probe for r in reqs)
        self._enter(s, CLIMB if stage in (CLIMB, PROMOTING) else _NEXT[stage])

    def _enter(self, s: Setting, stage: str) -> None:
        """The setting's next batch from `stage` on: the first phase that has probes to run."""
        while stage != DONE:
            reqs = self._plan(s, stage)
            if reqs:
                self._set(s, stage, reqs)
                return
            stage = _NEXT[stage]
        self._set(s, DONE, [])

    def _set(self, s: Setting, stage: str, reqs: list[Request]) -> None:
        self.stage[s.key], self.batch[s.key] = stage, reqs
        if reqs:
            self._say(f"{label(s)}: {len(reqs)} probe(s) [{reqs[0].phase}] at lr "
                      + ", ".join(f"{r.lr:.2e}" for r in reqs))

    def _plan(self, base: Setting, stage: str) -> list[Request]:
        o, s = self.opts, base.at_target
        if stage == RANGE:
            return [self._request(s, o.lr_start, "range-test", steps=o.range_steps or self.budget)]
        if stage == CLIMB:
            reqs = [self._request(s, lr, phase) for lr, phase in next_probes(s, self.per_setting, o.resolution)]
            if not reqs and s.status != RUNNING:
                self._say(f"  done {label(s)}: {s.status}, max stable {sig3_text(s.max_stable)}, min failed "
                          f"{sig3_text(s.min_failed)}, {len(s.probes)} probes")
            return reqs
        if stage == REPLICATES:  # K seeds around the bracket, from scratch
            return self._replicates(s, replicate_probes(s, o.replicates, self.base_seed) if o.replicates else [])
        if stage == AT_RISK:  # K seeds where the answer is read: at the fitted 5%-risk lr, then refitted
            return self._replicates(s, at_risk_probes(s, o.replicates, self.base_seed, self._at_risk(s))
                                    if o.replicates else [])
        if stage == SAMPLES:  # the best-training lr below the edge (the 5%-risk lr's, with replicates)
            k = samples_of(o)
            if not k and not s.budget:
                return []
            at_risk = self._at_risk(s)
            if not k and s.budget and s.max_stable is not None and \
                    s.recommendation(o.safety, {"lr_at_risk": at_risk}).lr is None:
                k = 1  # a longer rung ran nothing at or below its largest safe lr: that lr itself, once
            # the default fills whole batches (`samples_of`), also where an lr is left out beside one run
            whole = batch_of(o) if o.samples is None else 1
            return [self._request(s, lr, SAMPLE) for lr in sample_lrs(s, k, o.safety, at_risk, whole)]
        if stage == PROMOTING:
            return self._promote(base)
        if stage == CONFIRMING:
            return self._confirm(base)
        raise ValueError(stage)

    def _replicates(self, s: Setting, pairs: list[tuple[float, int]]) -> list[Request]:
        """Replicate probes of `s` at (lr, seed) `pairs`, from scratch."""
        reqs = []
        for lr, seed in pairs:
            req = self._request(s, lr, REPLICATE)
            req.config[SEED_KEY] = seed
            reqs.append(req)
        return reqs

    def _at_risk(self, s: Setting) -> float | None:
        if not self.opts.replicates:
            return None
        from stablesweep.analysis.boundary import fit_boundary

        return fit_boundary(boundary_runs(s, self.base_seed))[0].lr_at_risk

    def _promote(self, base: Setting) -> list[Request]:
        """The next rung (x4 the budget, at most the reach) of a setting, seeded with the lrs that
        bound its bracket at the rung below; [] at the last rung."""
        s, rungs = base.at_target, self.budgets.rungs
        now = s.budget or self.budget
        longer = [b for b in rungs if b > now]
        lrs = promote_lrs(s, self._at_risk(s)) if longer else []
        if not lrs:
            return []
        rung = Setting(key=base.key, params=base.params, rungs=base.rungs, climb=base.climb, budget=longer[0])
        base.longer.append(rung)
        self._say(f"  {label(base)}: {now} -> {rung.budget} steps, promoting lr " + ", ".join(f"{x:.3g}" for x in lrs))
        reqs = []
        for lr in lrs:
            req = self._request(rung, lr, PROMOTE)
            was = next((p for p in s.tested if p.lr == lr and p.verdict == STABLE and p.checkpoint), None)
            if self.continues and was is not None:  # the same run, longer: its checkpoint goes on
                from stablesweep.sweep.trainable import WARM_START

                req.config[WARM_START] = was.checkpoint
                req.start_step = was.steps
            reqs.append(req)
        return reqs

    def _confirm(self, base: Setting) -> list[Request]:
        """K fresh seeds at the target at the recommended lr; after a failure, at the next lower
        measured-safe lr; [] once one trained on every seed, or none is left (or it is off)."""
        s = base.at_target
        if not self.confirm or self.budgets.extrapolated or (s.budget or self.budget) < self.budgets.target:
            return []
        c = s.confirmation = s.confirmation or Confirmation(self.budgets.target)
        if not c.tried:
            b = None
            if self.opts.replicates:
                from stablesweep.analysis.boundary import fit_boundary

                b = fit_boundary(boundary_runs(s, self.base_seed))[0].to_dict()
            lr = s.recommendation(self.opts.safety, b).lr
        elif c.lr is not None:
            self._say(f"  {label(base)}: {c.words()}")
            return []
        else:
            lr = s.safe_below(c.tried[-1][0])
        if lr is None:
            if c.tried:
                self._say(f"  {label(base)}: {c.words()}")
            return []
        reqs = []
        for i in range(self.confirm):
            req = self._request(s, lr, CONFIRM)
            req.config[SEED_KEY] = self.base_seed + CONFIRM_SEED + i
            reqs.append(req)
        return reqs

    def _request(self, s: Setting, lr: float, phase: str, steps: int | None = None) -> Request:
        o = self.opts
        config: dict[str, Any] = {**s.params, LR_KEY: float(lr), "training.steps": steps or s.budget or self.budget}
        start_step = 0
        if phase in (REPLICATE, SAMPLE, PROMOTE, CONFIRM) or s.budget:
            pass  # from scratch, whatever the mode: replicates, samples, confirmations and longer rungs
        elif phase == "range-test":
            config.update({"training.schedule": "exponential", "training.lr_final": o.lr_stop,
                           "training.warmup_steps": 0})
        elif o.mode == "continue":  # from the last stable rung's checkpoint, in Tune's storage
            from stablesweep.sweep.trainable import WARM_START

            warm = s.last_stable_probe()
            if warm is not None and warm.checkpoint:
                config[WARM_START] = warm.checkpoint
                config["training.steps"] = warm.steps + self.budget
                start_step = warm.steps
        if not o.evaluate:
            config["datasets.skip_evaluation"] = True
        return Request(s, float(lr), phase, config, start_step)


def _summary(m: dict) -> dict[str, float]:
    return {k: m[k] for k in (OBJECTIVE, INITIAL_LOSS, FLOPS_PER_STEP, BUDGET_STEPS) if isinstance(m.get(k), (int, float))}


def describe(req: Request, setting_keys: list[str] | None = None) -> tuple[str, dict, dict | None]:
    """A probe's MLflow run: its name, its params (its setting, lr, phase and seed) and its setting
    (its params, or those of `setting_keys`: a sweep's categorical axes)."""
    s = req.setting
    params = {**s.params, LR_KEY: req.lr, "phase": req.phase}
    name = f"{short_name({**s.params, LR_KEY: req.lr})} {req.phase}"
    seed = req.config.get(SEED_KEY)
    if seed is not None:
        params[SEED_KEY] = seed
        name += f" seed {seed}"
    return name, params, s.params if setting_keys is None else {k: s.params.get(k) for k in setting_keys}


def finish_probe_run(tracker, parent: str, req: Request, run_id: str | None = None) -> None:
    """A probe's MLflow run ended with its verdict: live (`RampCallback`), and again at the ramp's
    end for every probe, as a sweep's `_finish_mlflow` does, so that a write the live callback
    missed (a full disk, a probe that ended before a --resume) is made once the store takes it."""
    probe = req.probe
    if run_id is None:
        name, params, setting = describe(req)
        run_id = tracker.trial_run(parent, req.trial_id, name, params, setting=setting)
    summary = {**(req.summary or {}), STEPS: probe.steps, TRAIN_FLOPS: probe.train_flops}
    tracker.finish_trial(run_id, probe.verdict, probe.reason, probe.first_bad_step, summary,
                         {"node_id": probe.node_id} if probe.node_id else None, ended_at=req.ended_at)


class RampCallback(MlflowCallback):
    """The ramp's side of Tune on the driver: a child run a probe (`MlflowCallback`: created when
    the probe starts, each report at its step, a divergence's last steps), named and given params
    by its request (its setting, lr, phase and seed); when a probe ends, its checkpoint (a stable
    one: continue mode's next rung starts there) and error text to the searcher, its verdict to
    its run, and one line to the terminal."""

    core = True  # a probe's run charts the numbers every report holds

    def __init__(self, searcher: RampSearcher, tracker, parent_run_id: str, sweep: str, storage: str,
                 echo: Callable[[str], None] | None = print, setting_keys: list[str] | None = None):
        super().__init__(tracker, parent_run_id, [], sweep)
        self.searcher, self.storage, self.echo = searcher, storage, echo
        self.rung_keys = setting_keys  # a sweep's rungs: the `setting` tag of its categorical axes

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["echo"] = None
        return state

    def describe(self, trial) -> tuple[str, dict, dict | None]:
        return describe(self.searcher.trials[trial.trial_id], getattr(self, "rung_keys", None))

    @staticmethod
    def _safe(fn, *args) -> None:
        """As a sweep's, MLflow never stops the ramp, except when the disk is full or read-only: the
        ramp then stops (`ramp_runner` says so, exit 74) rather than run probes it cannot record."""
        try:
            fn(*args)
        except Exception as e:
            if storage_fault(e) is not None:
                raise
            logger.warning("MLflow logging failed (%s: %s); the ramp goes on", type(e).__name__, e)

    def _ours(self, trial) -> bool:
        return trial.trial_id in self.searcher.trials

    def on_trial_start(self, iteration, trials, trial, **info):
        if self._ours(trial):
            super().on_trial_start(iteration, trials, trial, **info)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self._ours(trial):
            super().on_trial_result(iteration, trials, trial, result, **info)

    def _finish(self, trial, errored: bool) -> None:
        """The probe's end (`on_trial_complete`, `on_trial_error`), after the searcher recorded it."""
        req = self.searcher.trials.get(trial.trial_id)
        if req is None or req.probe is None:
            return
        if errored and req.probe.verdict == ERROR:  # not one whose last report gave its verdict before the error
            req.probe.reason = (error_text(trial_error(trial)) or req.probe.reason or "error")[:200]
            req.summary = req.summary or _summary(trial.last_result or {})
        finish_probe_run(self.tracker, self.parent, req, self._run(trial))
        probe = req.probe
        if self.echo is not None:
            self.echo(f"    {label(req.setting)} lr {probe.lr:.2e} [{probe.phase}]: {probe.verdict}"
                      + (f" ({probe.reason} at step {probe.first_bad_step})" if probe.verdict == DIVERGED else "")
                      + (f" steps {probe.start_step}->{probe.steps}" if probe.start_step else ""))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._hand_over(trial, False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._hand_over(trial, True)

    def _hand_over(self, trial, errored: bool) -> None:
        """The checkpoint must reach the searcher whatever MLflow does; logging failures are logged."""
        req = self.searcher.trials.get(trial.trial_id)
        if req is not None and req.probe is not None and req.probe.verdict == STABLE:
            req.probe.checkpoint = self.uri(trial.checkpoint)
        self._safe(self._finish, trial, errored)

    def uri(self, checkpoint) -> str | None:
        """Where a probe's last checkpoint lies, as a path or URI any node can open: Tune gives a
        path on its storage's filesystem; a bucket's needs its scheme back."""
        if checkpoint is None:
            return None
        scheme = uri_scheme(self.storage)
        return f"{scheme}://{checkpoint.path}" if scheme else checkpoint.path
