"""Where a run's trials go: what one trial needs (`trial_resources`), and the checks of the run
options that a sweep and a ramp share, before Ray starts (`check_run_options`) and against the
cluster once it runs (`cluster_checks`: the trial fits a node, --out is storage every node shares,
the retries). The cluster itself, its shape and its storage, is `stablesweep.cluster`.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

from stablesweep.cluster.shape import ClusterShape, cluster_shape
from stablesweep.cluster.storage import check_shared_storage, storage_paths, uri_scheme
from stablesweep.config import check_output_dir
from stablesweep.sweep.options import RunOptions
from stablesweep.vocab import InputError

DRIVER_CPUS = 0.01  # the Tune trial that drives a data-parallel trial's workers (Tune refuses 0)
CLUSTER_MAX_FAILURES = 2  # default retries of a trial from its checkpoint on a multi-node cluster
LOCAL_MAX_FAILURES = 1  # on one node: a trial whose worker process died is retried once
_BUILTIN_RESOURCES = {"cpu": "--cpus-per-trial", "gpu": "--gpus-per-trial", "memory": None}


# ---- the run options, before Ray starts ---------------------------------------------------------

def check_run_options(opts: RunOptions) -> None:
    """The options of where and how trials run, shared by sweeps and ramps (before Ray starts)."""
    for flag, v, ok in (("--max-concurrent", opts.max_concurrent, lambda x: x >= 1),
                        ("--cpus-per-trial", opts.cpus_per_trial, lambda x: x > 0),
                        ("--gpus-per-trial", opts.gpus_per_trial, lambda x: x >= 0),
                        ("--workers-per-trial", opts.workers_per_trial, lambda x: x >= 1),
                        ("--max-failures", opts.max_failures, lambda x: x >= 0)):
        if v is not None and not ok(v):
            raise InputError(f"{flag} {v}: out of range")
    g = opts.gpus_per_trial
    if g > 1 and not float(g).is_integer():
        raise InputError(f"--gpus-per-trial {g}: more than one GPU a trial must be a whole number")
    if opts.workers_per_trial > 1 and not float(g).is_integer():
        raise InputError(f"--gpus-per-trial {g} --workers-per-trial {opts.workers_per_trial}: a data-parallel "
                         "worker needs a GPU of its own (NCCL does not share one between ranks); use a whole number")
    if opts.address and opts.num_cpus:
        raise InputError("num_cpus applies to a local Ray only; not with --address")
    trial_resources(opts)  # refuses a bad --resources-per-trial
    _check_local_gpus(opts)
    out, _ = storage_paths(opts.out, opts.local_dir, opts.DEFAULT_DIR)  # refuses a bad --out / --local-dir
    check_output_dir(out, "--out" if uri_scheme(opts.out) is None else "--local-dir")
    if opts.mlflow and opts.mlflow.startswith(("http://", "https://")):
        from stablesweep.tracking import probe_store

        why = probe_store(opts.mlflow)  # seconds, not MLflow's minutes of retries
        if why:
            raise InputError(f"--mlflow {opts.mlflow}: {why}")


def _check_local_gpus(opts: RunOptions) -> None:
    """GPUs asked of a local Ray (one this process will start) that this machine lacks: refused
    now, in milliseconds, not after Ray has started (`cluster_checks` checks a joined cluster)."""
    ray = sys.modules.get("ray")
    if (opts.gpus_per_trial <= 0 or opts.address or os.environ.get("RAY_ADDRESS")
            or (ray is not None and ray.is_initialized())):
        return
    have = local_gpus()
    need = opts.gpus_per_trial if opts.gpus_per_trial >= 1 else 1
    if have is not None and have < need:
        raise InputError(f"--gpus-per-trial {opts.gpus_per_trial:g}: this machine has "
                         f"{'no GPUs' if not have else f'{have} GPU(s)'} (a local Ray; "
                         f"{os.cpu_count()} CPUs); leave --gpus-per-trial out to train on CPU, or connect to "
                         "a cluster with GPUs (--address)")


def local_gpus() -> int | None:
    """The NVIDIA GPUs of this machine that a local Ray would see, found without Ray or torch
    (importing torch alone takes seconds): /proc/driver/nvidia/gpus, else `nvidia-smi -L`, bounded by
    CUDA_VISIBLE_DEVICES where it is set; 0 where there is no NVIDIA driver and no other GPU
    stack (/dev/kfd, ROCm's); None where it cannot tell (Ray then decides)."""
    count: int | None = None
    proc = Path("/proc/driver/nvidia/gpus")
    if proc.is_dir():
        count = sum(1 for _ in proc.iterdir())
    elif shutil.which("nvidia-smi"):
        try:
            p = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        if p.returncode != 0:
            return None
        count = sum(1 for line in p.stdout.splitlines() if line.startswith("GPU "))
    elif Path("/dev/kfd").exists():
        return None
    else:
        count = 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip() and v.strip() != "-1"]
        count = min(count, len(ids))
    return count


def trial_resources(opts: RunOptions, per_worker: bool = False) -> dict[str, float]:
    """The resources of one trial for `tune.with_resources`: CPUs, GPUs and --resources-per-trial;
    of all its workers (--workers-per-trial) and their driver, or with `per_worker`, of one worker."""
    n = 1 if per_worker else opts.workers_per_trial
    driver = DRIVER_CPUS if n > 1 else 0.0
    res: dict[str, float] = {"cpu": opts.cpus_per_trial * n + driver, "gpu": opts.gpus_per_trial * n}
    extra = opts.resources_per_trial or {}
    if not isinstance(extra, dict):
        raise InputError(f"--resources-per-trial {extra!r}: expected a JSON object of resource names and amounts, "
                         'e.g. \'{"worker_node": 1}\'')
    for k, v in extra.items():
        if not isinstance(k, str) or not k:
            raise InputError(f"--resources-per-trial: resource name {k!r}: expected a non-empty string")
        if k.lower() in _BUILTIN_RESOURCES or k in ("CPU", "GPU"):
            flag = _BUILTIN_RESOURCES.get(k.lower())
            raise InputError(f"--resources-per-trial: {k!r} is one of Ray's own resources"
                             + (f"; use {flag}" if flag else "; not supported per trial"))
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise InputError(f"--resources-per-trial: {k}: {v!r}: expected a number above 0")
        if v > 1 and not float(v).is_integer():
            raise InputError(f"--resources-per-trial: {k}: {v}: more than 1 must be a whole number (Ray's rule)")
        res[k] = float(v) * n
    return res


def ephemeral_path_notes(opts: RunOptions) -> list[str]:
    """Notes on relative paths in a Ray Job: they land in the job's copy of --working-dir, which
    Ray deletes."""
    if "runtime_resources" not in os.getcwd():
        return []
    notes = []
    local_dir = opts.local_dir or (opts.DEFAULT_DIR if uri_scheme(opts.out) else None)
    for flag, value in (("--out", opts.out), ("--local-dir", local_dir)):
        if value and uri_scheme(value) is None and not Path(value).expanduser().is_absolute():
            notes.append(f"{flag} {value} is relative to this Ray Job's working directory ({os.getcwd()}), which "
                         "Ray deletes with the job's files: pass an absolute path to keep the results")
    return notes


# ---- the cluster, once Ray runs ------------------------------------------------------------------

def joins_a_cluster(opts: RunOptions) -> bool:
    """The driver joins a running cluster (--address, or RAY_ADDRESS as inside a Ray Job) rather
    than starting a Ray of its own."""
    env = os.environ.get("RAY_ADDRESS", "")
    return bool(opts.address) or (bool(env) and env != "local")


def cluster_checks(opts: RunOptions, shape: ClusterShape | None = None) -> tuple[int, int, ClusterShape]:
    """After ray.init, before anything is written: the trial fits the cluster, --out is storage
    every trial's node shares, the retries. Returns (max concurrent trials, max failures, shape)."""
    shape = shape or cluster_shape(autoscaling=joins_a_cluster(opts))
    max_concurrent = _check_resources(opts, shape)
    check_shared_storage(opts.out, shape.n_nodes, opts.shared_storage)
    max_failures = opts.max_failures
    if max_failures is None:
        max_failures = CLUSTER_MAX_FAILURES if shape.n_nodes > 1 else LOCAL_MAX_FAILURES
    return max_concurrent, max_failures, shape


def _check_resources(opts: RunOptions, shape: ClusterShape) -> int:
    """A trial must fit one node; GPUs and custom resources asked for must exist (on an alive
    node, or on a node type an autoscaler may start). The default concurrency is the number of
    trials the cluster fits: its alive nodes, plus the nodes an autoscaler may add (pending trials
    are what makes it add them)."""
    need = trial_resources(opts)
    cpus, gpus = need["cpu"], need["gpu"]
    custom = {k: v for k, v in need.items() if k not in ("cpu", "gpu")}
    shapes = shape.nodes + [r for r, _ in shape.node_types]
    known = [n for n in shapes if n]
    total = {k: sum(n.get(k, 0) for n in shape.nodes) for k in set().union(*shape.nodes)} if shape.nodes else {}
    if gpus > 0 and not any(n.get("gpu", 0) > 0 for n in known) and len(known) == len(shapes):
        raise InputError(f"--gpus-per-trial {gpus}: the Ray cluster has no GPUs "
                         f"(resources: {int(total.get('cpu', 0))} CPUs, 0 GPUs); leave --gpus-per-trial out to "
                         "train on CPU, or connect to a cluster with GPUs (--address)")
    for k, v in custom.items():
        if not any(n.get(k, 0) > 0 for n in known) and len(known) == len(shapes):
            have = sorted({r for n in known for r in n if r not in ("cpu", "gpu", "memory", "object_store_memory")
                           and not r.startswith("node:") and not r.startswith("accelerator_type:")})
            raise InputError(f"--resources-per-trial {k}={v:g}: no node of the Ray cluster has the resource {k!r} "
                             f"(custom resources there: {', '.join(have) or 'none'}); start the nodes meant for "
                             f"trials with `ray start ... --resources '{{\"{k}\": N}}'`")
    if shapes and not any(ClusterShape.fits(n, need) >= 1 for n in shapes):
        biggest = max(known, key=lambda n: (n.get("gpu", 0), n.get("cpu", 0)))
        extra = "".join(f", {biggest.get(k, 0):g} {k}" for k in custom)
        raise InputError(f"--cpus-per-trial {cpus} --gpus-per-trial {gpus}"
                         + "".join(f" {k}={v:g}" for k, v in custom.items())
                         + f": no node of the cluster is that big (largest: {biggest.get('cpu', 0):g} CPUs, "
                           f"{biggest.get('gpu', 0):g} GPUs{extra})")
    if opts.max_concurrent:
        return opts.max_concurrent
    return max(1, shape.trial_fit(need))
