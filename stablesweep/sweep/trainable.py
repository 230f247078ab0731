"""The trial function: one sweep trial or one ramp probe is one `run_training` call on the base
config with the trial's keys applied.

Runs in a Ray worker. It adapts the training loop's `report(metrics, checkpoint_dir)` to
`ray.tune.report` (`tune_result`), goes on from `ray.tune.get_checkpoint()` when Tune retries the
trial, and adds the node id. It logs to nothing else: MLflow is written by the driver.

A trial's Tune config is its dotted config keys (`training.lr: 0.01`, as a searcher samples them,
or as the ramp sets a probe's lr, budget and schedule), plus, for a ramp probe in continue mode,
`WARM_START`: the checkpoint of the last stable rung, whose model, optimizer and step the probe
continues at its own lr.

Tune reuses a trial's worker process for the next trial of the same resources (`make_tuner`), so
torch is imported once a worker and the data are built once for the trials that share them
(`worker_data`). What a trial owns is made new in every `run_training` call: seed, model,
optimizer, scheduler, monitor, loss, and the data order (a function of the seed and the step), so
a trial in a reused worker trains bit for bit as in a fresh one (tests/sweep/test_reuse.py). What
the process keeps is checked here: torch's threads are set to the trial's CPUs (`use_cpus`), and
on a GPU the last trial's objects are collected before the next builds its own.
"""
from __future__ import annotations

import gc
import json
import math
import os
import shutil
import tempfile
import time
from typing import Any

import ray
from ray import tune

from stablesweep.sweep.space import apply_params
from stablesweep.vocab import (
    AT_RISK_STEP,
    DIVERGED,
    FINISHED,
    FIRST_BAD_STEP,
    OBJECTIVE_IS_STAND_IN,
    REPORTED_AT,
    STEP,
    VERDICT,
)

WARN_STEP = "warn_step/"  # monitor.warning_key's prefix (the monitor imports torch; this module must not)

WARM_START = "warm_start"  # a trial config key (not a config key): a checkpoint path or URI to start from
THREADS = "torch_threads"  # a result key: torch's intra-op threads in the trial (its CPUs, at least 1)

# config keys that decide nothing about the data: trials that differ only in these share the data a
# worker built (every other key, a dataset's or the step budget's, builds them anew)
_NOT_DATA = {"training": ("lr", "lr_final", "max_grad_norm", "precision", "optimizer", "weight_decay", "momentum",
                          "betas", "warmup_steps", "schedule", "seed", "tf32", "report_interval", "checkpoint_every",
                          "keep_checkpoints", "eval_every"),
             "loss": ("masking", "type", "label_smoothing", "mask_value", "mask_in", "z_loss", "logit_clip"),
             "model": None, "monitor": None}
_WORKER: dict[str, Any] = {}  # this worker process's state, kept across the trials Tune runs in it


def trial_device() -> str:
    """cuda when Ray gave this trial a GPU (or a fraction of one), else cpu."""
    try:
        return "cuda" if ray.get_gpu_ids() else "cpu"
    except Exception:  # outside a Ray worker
        return "cpu"


def tune_result(metrics: dict[str, Any], node_id: str, device: str) -> dict[str, Any]:
    """A training report as a Tune result (a row of Tune's result.json, progress.csv and
    TensorBoard): the loop's `done` is `finished` (Tune owns `done`, and
    sets it on every stopped trial), and the node and device the trial ran on, and when it was
    reported (the last report's time is the trial's end, for its MLflow run), are added."""
    result = dict(metrics)
    result[FINISHED] = bool(result.pop("done", False))
    # Tune's own files: TensorBoard charts `timesteps_total` when set (else Tune's iteration): the
    # step; a step that does not exist yet (first bad step, warning steps: -1) is None, not a
    # point at -1; a diverged report's objective is its stand-in (a finite number the searcher and
    # ASHA need), and says so
    result["timesteps_total"] = result.get(STEP)
    for k, v in result.items():
        if (k in (FIRST_BAD_STEP, AT_RISK_STEP) or k.startswith(WARN_STEP)) and isinstance(v, (int, float)) and v < 0:
            result[k] = None
    result[OBJECTIVE_IS_STAND_IN] = result.get(VERDICT) == DIVERGED
    result["node_id"] = node_id
    result["device"] = device
    result[REPORTED_AT] = time.time()  # Tune's own `timestamp` is whole seconds
    return result


def use_cpus(cpus: float | None) -> int:
    """torch's threads for a trial of `cpus` CPUs: floor(cpus), at least 1. Ray sets OMP_NUM_THREADS
    so only where the environment has not (an OMP_NUM_THREADS exported where Ray started wins), and
    torch's inter-op threads stay at every core; trials side by side would oversubscribe the CPUs.
    Inter-op threads are set too, where torch still allows it (once a process, before its first
    parallel work). Returns the intra-op threads."""
    import torch

    n = max(1, math.floor(cpus + 1e-9)) if cpus else torch.get_num_threads()
    torch.set_num_threads(n)
    if not _WORKER.get("interop_set"):
        _WORKER["interop_set"] = True
        try:
            torch.set_num_interop_threads(n)
        except RuntimeError:  # this process has already run parallel work: torch keeps its pool
            pass
    return n


def data_key(cfg) -> str:
    """What decides a trial's data: its config without the keys that do not (`_NOT_DATA`)."""
    d = cfg.to_dict()
    for section, keys in _NOT_DATA.items():
        if keys is None:
            d.pop(section, None)
        else:
            d[section] = {k: v for k, v in d.get(section, {}).items() if k not in keys}
    return json.dumps([d, cfg.base_dir], sort_keys=True, default=str)


def worker_data(cfg):
    """The trial's data (`build_data`: every check, then the sources), built once a worker for the
    trials whose data keys agree (`data_key`); the batches are drawn afresh in each run."""
    from stablesweep.data import build_data

    key = data_key(cfg)
    if _WORKER.get("data_key") != key:
        _WORKER.pop("data", None)  # the last trial's data go before the next are built
        _WORKER["data"], _WORKER["data_key"] = build_data(cfg), key
    return _WORKER["data"]


def run_trial(config: dict[str, Any], *, base: dict, base_dir: str = ".", source: str = "<sweep>",
              checkpoints: bool = True, cpus: float | None = None) -> None:
    """Train `base` with the trial's config keys; every report goes to Tune.

    `checkpoints`: write a checkpoint with the reports (a retry goes on from the last one, and a
    resumed sweep or the next rung of a continue-mode ramp starts from it). Without, a retried
    trial starts again from step 0. `cpus`: the trial's CPUs, torch's threads (`use_cpus`)."""
    from stablesweep.train import run_training  # torch is imported in the worker only

    # Tune waits this long for a stopped trial's thread to end before it gives its worker to the
    # next trial (2 s by default: a loaded machine then fails the next trial instead)
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")
    params = dict(config)
    warm_from = params.pop(WARM_START, None)
    cfg = apply_params(base, params, source=source, base_dir=base_dir)
    node_id = ray.get_runtime_context().get_node_id()
    device = trial_device()
    if device == "cuda" and _WORKER.get("trials"):
        # the last trial's model and optimizer, which its ended thread's traceback may still hold in a
        # reference cycle, leave the GPU before this trial's are made (on CPU Python's collector frees them)
        gc.collect()
    _WORKER["trials"] = _WORKER.get("trials", 0) + 1
    threads = use_cpus(cpus)

    def report(metrics: dict, checkpoint: str | None) -> None:
        ckpt = tune.Checkpoint.from_directory(checkpoint) if checkpoint else None
        tune.report({**tune_result(metrics, node_id, device), THREADS: threads}, checkpoint=ckpt)

    work = tempfile.mkdtemp(prefix="stablesweep-trial-")
    try:
        resume_from, warm = None, False
        restored = tune.get_checkpoint()
        if restored is not None:  # a retry (its node was lost) or a resumed sweep: this trial's own last state
            resume_from = restored.to_directory(f"{work}/restored")
        elif warm_from:  # the model and optimizer of another trial, wherever it ran, at this trial's lr
            resume_from, warm = tune.Checkpoint(warm_from).to_directory(f"{work}/warm"), True
        run_training(cfg, report=report, device=device, checkpoint_dir=f"{work}/checkpoints" if checkpoints else None,
                     resume_from=resume_from, warm_start=warm, data=worker_data(cfg))
    finally:
        shutil.rmtree(work, ignore_errors=True)
