"""Ray and Tune as a sweep and a ramp both use them: Ray started here or a cluster joined
(`ray_session`), Tune's own output quieted, and the Tuner of a run of trials (`trial_trainable`,
`make_tuner`): the one trial function with its base config and resources, stopped at divergence,
a ring of checkpoints kept, retried from the last.
"""
from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import optuna  # here, not in a run: imported before the store's and tensorboardX's threads start, never beside them
import ray
from ray import tune
from ray.tune.search import Searcher

from stablesweep.cluster.live import check_reachable
from stablesweep.config import Config
from stablesweep.signals import keep_handlers_through_ray, signals_held, sigterm_through_ray_start, take_sigterm
from stablesweep.sweep.options import RunOptions
from stablesweep.sweep.placement import DRIVER_CPUS, trial_resources
from stablesweep.sweep.stopper import DivergenceStopper
from stablesweep.sweep.trainable import run_trial
from stablesweep.vocab import InputError


class RaySession:
    """What `ray_session` yields: `release()` once the run's last Tune run has ended."""

    def __init__(self, started: bool):
        self.started = started
        self._down: threading.Event | None = None

    def release(self) -> None:
        """No more trials: a local Ray this run started is shut down in a thread while the run writes
        its tables, figures and MLflow runs (Ray's shutdown waits up to a second for each of its
        processes to end: 1.4 s on 2 cores); the session's end waits for it."""
        if not self.started or self._down is not None:
            return
        self._down = threading.Event()

        def down() -> None:
            try:
                ray.shutdown()
            finally:
                self._down.set()

        threading.Thread(target=down, name="stablesweep-ray-shutdown", daemon=True).start()

    def end(self) -> None:
        if self._down is None:
            ray.shutdown()
        else:
            self._down.wait()  # an Event, not a join that a stop could cut short


@contextmanager
def ray_session(opts: RunOptions) -> Iterator[RaySession]:
    """Ray for a run: a cluster joined (--address, or RAY_ADDRESS as inside a Ray Job), or a local
    Ray started here and shut down at the end (or from `RaySession.release()` on); a Ray this process
    already runs is used as it is. An --address that nothing answers on is refused before it starts."""
    quiet_tune()
    if opts.address:
        check_reachable(opts.address)
    # Tune's TensorBoard logger imports tensorboardX, and with it torch (1.4 s on 2 cores), as the first
    # trials start; imported here while ray.init waits for the processes it launched
    threading.Thread(target=_import_tensorboardx, name="stablesweep-imports", daemon=True).start()
    session = RaySession(start_ray(opts))
    take_sigterm()  # after Ray: ray.init set its own (stablesweep.signals)
    ended = False
    try:
        yield session
        ended = True
    finally:
        if session.started:
            # a Ctrl-C or SIGTERM during the shutdown is delivered once it has ended (after a run that
            # ended: a stop then, exit 130 or 143 with the resume command); our handlers are put back
            with signals_held(deliver=ended):
                session.end()


def _import_tensorboardx() -> None:
    try:
        import tensorboardX  # noqa: F401
    except ImportError:  # Tune then logs no TensorBoard files
        pass


def quiet_tune() -> None:
    """Progress is ours (one line a finished trial); Tune's own tables and the warning about the
    experiment snapshot that follows every trial checkpoint (which is what makes --resume lose
    nothing) are noise here. Only set where the user has not chosen."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def start_ray(opts: RunOptions) -> bool:
    """Join or start Ray unless it runs already; True when this call started or joined it."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    keep_handlers_through_ray()
    if opts.address:
        check_reachable(opts.address)
        try:
            with sigterm_through_ray_start():
                ray.init(address=opts.address, **kwargs)
        except (ConnectionError, ValueError) as e:
            raise InputError(f"--address {opts.address}: cannot join that Ray cluster: {e}") from None
    else:
        # STABLESWEEP_RAY_NODE_IP: the address this machine's Ray registers its node under (Ray's own
        # choice by default: the interface of its default route; Ray rewrites 127.0.0.1 to that, so a
        # loopback-only Ray, as the test suite runs, takes another 127.0.0.x)
        if os.environ.get("STABLESWEEP_RAY_NODE_IP"):
            kwargs["_node_ip_address"] = os.environ["STABLESWEEP_RAY_NODE_IP"]
        with sigterm_through_ray_start():
            ray.init(num_cpus=opts.num_cpus, **kwargs)
    return True


# ---- the Tuner -----------------------------------------------------------------------------------

def trial_trainable(cfg: Config, opts: RunOptions, *, checkpoints: bool = True):
    """`run_trial` on the base config `cfg`, with the resources of one trial; with
    --workers-per-trial N > 1, `run_ddp_trial`: a driver that takes DRIVER_CPUS (Tune needs some), whose N
    workers take --cpus-per-trial and --gpus-per-trial each. Its `reuse`: whether its Tuner gives a
    trial's worker to the next trial (`make_tuner`; --no-reuse turns it off)."""
    kwargs = dict(base=cfg.to_dict(), base_dir=cfg.base_dir, source=cfg.source, checkpoints=checkpoints)
    n = opts.workers_per_trial
    if n == 1:
        trainable = tune.with_resources(tune.with_parameters(run_trial, cpus=opts.cpus_per_trial, **kwargs),
                                        trial_resources(opts))
        trainable.reuse = opts.reuse
        return trainable
    if cfg.training.batch_size % n:
        raise InputError(f"--workers-per-trial {n}: training.batch_size {cfg.training.batch_size} is not a multiple "
                         f"of it (each worker trains on an equal share of every batch)")
    from stablesweep.sweep.ddp_trial import ddp_trainable  # Ray Train and torch: only for a data-parallel trial

    worker = trial_resources(opts, per_worker=True)
    trial = ddp_trainable(workers=n, cpus_per_worker=worker.pop("cpu"), gpus_per_worker=worker.pop("gpu"),
                          custom_per_worker=worker, **kwargs)
    trainable = tune.with_resources(trial, {"cpu": DRIVER_CPUS})
    trainable.reuse = False  # its workers end with the trial's actor (ddp_trial.py): never reused
    return trainable


def make_tuner(trainable, *, name: str, storage: str, search_alg, num_samples: int, max_concurrent: int,
               max_failures: int, scheduler=None, callbacks: list | None = None,
               keep_checkpoints: int = 1, stopper: DivergenceStopper | None = None) -> tune.Tuner:
    """The Tuner of a run: trials in `storage`/`name`/trial_<id>, each stopped at its first
    diverged report, keeping its last `keep_checkpoints` checkpoints (a sweep: the config's
    `training.keep_checkpoints`, the ring `stablesweep explain` replays from) and retried from the
    last one up to `max_failures` times; Tune's own output off. A trial's worker process is given to
    the next trial of the same resources (Tune's `reuse_actors`: torch imported and the data built
    once a worker; trainable.py says what is made new each trial) unless the trainable says
    otherwise (`trial_trainable`: --no-reuse, or a data-parallel trial). `stopper`: the ramp's lets
    a trial whose last report diverged end by itself (`DivergenceStopper`)."""
    return tune.Tuner(
        trainable,
        param_space={},
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
                                    max_concurrent_trials=max_concurrent, trial_dirname_creator=trial_dirname,
                                    reuse_actors=getattr(trainable, "reuse", True)),
        run_config=tune.RunConfig(
            name=name, storage_path=storage, stop=stopper or DivergenceStopper(), callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep_checkpoints),
            failure_config=tune.FailureConfig(max_failures=max_failures), verbose=0),
    )


class ListedSearcher(Searcher):
    """Tune's searcher of a listed run (a ramp's round, a sweep's replicates): the given trial
    configs, each once, in order. What is left to hand out is saved with Tune's experiment, so a
    restored run goes on with the rest."""

    def __init__(self, configs: list[dict[str, Any]]):
        super().__init__()
        self.todo = list(configs)

    def suggest(self, trial_id: str) -> dict[str, Any] | str:
        return self.todo.pop(0) if self.todo else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # listed trials do not depend on each other's results

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.todo, f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            self.todo = pickle.load(f)


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"
