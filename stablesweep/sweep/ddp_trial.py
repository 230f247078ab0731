"""A data-parallel trial: with `--workers-per-trial N` (N > 1), a trial is a Ray Train
`TorchTrainer` run of N workers (DDP: gloo on CPU, NCCL on GPUs) inside Tune, as Ray Train V2 has
it: the Tune trial is a driver that builds and fits the TorchTrainer; each worker runs the same
training loop (`run_training`), which finds the process group Ray Train made (stablesweep.ddp, the
loop's side of data parallelism: torch alone).

Reports: every worker calls the loop's `report(metrics, checkpoint_dir)`, made here as in a
one-process trial (`tune_result`), through `ray.train.report` (rank 0 passes its checkpoint; the
metrics are reduced, alike on every rank). A controller callback hands rank 0's report, with the
checkpoint Train persisted, to the trial's driver through a queue, and the driver passes it to
`tune.report`, so Tune sees the same results and checkpoints as from a one-process trial: the
stopper, ASHA, the sweep's retries and --resume (`tune.get_checkpoint()`), and the ramp's continue
mode (`WARM_START`) work as they do there. Ray Train itself does not retry (Tune does).

A stopped trial (diverged, or pruned by ASHA) ends its driver's actor, which owns the Train
controller and so its workers: the Tuner of a data-parallel trial does not reuse actors. The
workers' placement group is not the controller's to take along: Ray keeps it until the job ends
(Train's own cleaner of it needs the dashboard's state API, which a sweep's Ray runs without), and
the trials after would wait for its CPUs and GPUs forever. So the trial's stop (`cleanup`, which
Tune runs and waits for before it ends the actor) aborts a Train run still going, which removes it.
"""
from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from typing import Any

import ray
import ray.train
from ray import tune
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.trainable.function_trainable import wrap_function
from ray.util.queue import Queue

from stablesweep.sweep.space import apply_params
from stablesweep.sweep.trainable import WARM_START, tune_result


class _ToDriver(ray.train.UserCallback):
    """In the Train controller: rank 0's report and its persisted checkpoint, to the trial's driver."""

    def __init__(self, queue: Queue):
        self.queue = queue

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        self.queue.put((metrics[0], checkpoint, ray.get_runtime_context().current_actor))


_RUNNING: list = []  # in a trial's actor: the controller of its Train run while the run goes on


def _abort_running() -> None:
    """In a trial's actor: abort its Train run if one goes on (waiting a minute at most)."""
    for controller in _RUNNING:
        ray.wait([controller.abort.remote()], timeout=60)


def ddp_trainable(**kwargs) -> type:
    """The Tune trainable of a data-parallel trial: `run_ddp_trial` with `kwargs`, whose stop
    aborts its Train run, which frees the workers' placement group."""

    class DataParallelTrial(wrap_function(tune.with_parameters(run_ddp_trial, **kwargs))):
        def cleanup(self):
            _abort_running()
            super().cleanup()

    return DataParallelTrial


def run_ddp_trial(config: dict[str, Any], *, base: dict, base_dir: str = ".", source: str = "<sweep>",
                  checkpoints: bool = True, workers: int = 2, cpus_per_worker: float = 1.0,
                  gpus_per_worker: float = 0.0, custom_per_worker: dict[str, float] | None = None) -> None:
    """The Tune trial function of a data-parallel trial: `run_trial`'s contract (see trainable.py),
    trained by `workers` DDP workers of `cpus_per_worker` CPUs, `gpus_per_worker` GPUs and
    `custom_per_worker` Ray resources each."""
    params = dict(config)
    warm_from = params.pop(WARM_START, None)
    apply_params(base, params, source=source, base_dir=base_dir)  # a bad key fails here, before any worker starts
    start, warm = tune.get_checkpoint(), False
    if start is None and warm_from:
        start, warm = tune.Checkpoint(warm_from), True
    use_gpu = gpus_per_worker > 0
    loop_config = dict(params=params, base=base, base_dir=base_dir, source=source, checkpoints=checkpoints,
                       start=start, warm=warm, use_gpu=use_gpu)
    storage = ray.train._internal.session.get_session().storage  # this trial's directory in Tune's storage
    name = f"ddp-{uuid.uuid4().hex[:8]}"
    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    trainer = TorchTrainer(
        _worker, train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                               resources_per_worker={"CPU": cpus_per_worker, "GPU": gpus_per_worker,
                                                                     **(custom_per_worker or {})}),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=ray.train.RunConfig(name=name, storage_path=storage.trial_fs_path,
                                       storage_filesystem=storage.storage_filesystem, callbacks=[_ToDriver(queue)],
                                       failure_config=ray.train.FailureConfig(max_failures=0),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1)))
    failed: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as e:  # raised in the trial, below
            failed.append(e)
        finally:
            queue.put(None)

    thread = threading.Thread(target=fit, name="stablesweep-ddp-fit", daemon=True)
    thread.start()
    try:
        while (item := queue.get()) is not None:
            metrics, checkpoint, controller = item
            _RUNNING[:] = [controller]
            tune.report(metrics, checkpoint=checkpoint)  # Tune keeps its own copy of the checkpoint
        thread.join()
    finally:
        _RUNNING.clear()
    storage.storage_filesystem.delete_dir(f"{storage.trial_fs_path}/{name}")  # Train's copies
    if failed:
        raise failed[0]


def _worker(c: dict[str, Any]) -> None:
    """One rank of a data-parallel trial (in a Ray Train worker; the process group is up)."""
    from stablesweep.train import run_training  # torch is imported in the worker only

    cfg = apply_params(c["base"], c["params"], source=c["source"], base_dir=c["base_dir"])
    device = "cuda" if c["use_gpu"] else "cpu"
    node_id = ray.get_runtime_context().get_node_id()

    def report(metrics: dict, checkpoint: str | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(checkpoint) if checkpoint else None
        ray.train.report(tune_result(metrics, node_id, device), checkpoint=ckpt)

    work = tempfile.mkdtemp(prefix="stablesweep-ddp-")
    try:
        start = c["start"].to_directory(f"{work}/start") if c["start"] is not None else None
        run_training(cfg, report=report, device=str(ray.train.torch.get_device()) if c["use_gpu"] else "cpu",
                     checkpoint_dir=f"{work}/checkpoints" if c["checkpoints"] else None,
                     resume_from=start, warm_start=c["warm"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
