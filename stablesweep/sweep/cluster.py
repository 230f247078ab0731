"""Where trials may run and write: the Ray cluster's shape, what a trial needs of it, and the
storage every trial's node shares. The checks of the run options that a sweep and a ramp share,
before Ray starts (`check_run_options`) and once it runs (`cluster_checks`).

On a Ray cluster of more than one node the trials run in workers on other machines and write
their checkpoints to Tune's storage themselves: `--out` must be the same storage for every node, a
bucket URI or a path declared shared with `--shared-storage` (`check_shared_storage`). Where
`--out` is a URI, only Tune's experiment goes there; the run's own files (sqlite stores, the
region, the ramp's tables) are written on the driver's disk under `--local-dir`
(`storage_paths`).
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from stablesweep.config import check_output_dir
from stablesweep.sweep.options import RunOptions
from stablesweep.vocab import InputError

logger = logging.getLogger(__name__)

DRIVER_CPUS = 0.01  # the Tune trial that drives a data-parallel trial's workers (Tune refuses 0)
CLUSTER_MAX_FAILURES = 2  # default retries of a trial from its checkpoint on a multi-node cluster
LOCAL_MAX_FAILURES = 1  # on one node: a trial whose worker process died is retried once
LOCAL_SCHEMES = {"file", "local"}  # URIs that name this machine's disk, not shared storage
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_BUILTIN_RESOURCES = {"cpu": "--cpus-per-trial", "gpu": "--gpus-per-trial", "memory": None}


# ---- storage ----------------------------------------------------------------------------------

def uri_scheme(out: str) -> str | None:
    """The scheme of a URI (`s3` of s3://bucket/x), or None for a plain path."""
    m = _URI.match(str(out))
    return m.group(1).lower() if m else None


def is_shared_uri(out: str) -> bool:
    """A URI of storage every node reaches by itself (s3://, gs://, abfs://, hdfs://, ...); not
    file:// or local://, which name each machine's own disk."""
    scheme = uri_scheme(out)
    return scheme is not None and scheme not in LOCAL_SCHEMES


def storage_paths(out: str, local_dir: str | None = None,
                  default_local: str = RunOptions.DEFAULT_DIR) -> tuple[Path, str]:
    """(the directory for the run's own files, Tune's storage_path).

    A plain --out is both (the one-machine layout). A URI --out is Tune's storage only; the run's
    own files go to --local-dir (default `default_local`) on the driver."""
    if uri_scheme(out) is None:
        if local_dir is not None:
            raise InputError(f"--local-dir {local_dir}: only with a URI --out (s3://..., gs://...); with a path "
                             f"--out ({out}) its files are written there")
        path = Path(out).expanduser().resolve()
        return path, str(path)
    storage = str(out).rstrip("/")
    if uri_scheme(out) in LOCAL_SCHEMES and not storage.split("://", 1)[1].strip("/"):
        raise InputError(f"--out {out}: a URI needs a path after the scheme")
    return Path(local_dir or default_local).expanduser().resolve(), storage


def check_shared_storage(out: str, n_nodes: int, declared: bool) -> None:
    """Refuse a plain local --out on a cluster of more than one node (see the module docstring).

    `n_nodes`: the nodes trials may run on (alive nodes, plus those an autoscaler may add);
    `declared`: the user said the path is the same storage on every node (--shared-storage)."""
    if n_nodes <= 1 or declared or is_shared_uri(out):
        return
    kind = "a file:// URI of each machine's own disk" if uri_scheme(out) else "a plain local path"
    raise InputError(
        f"--out {out}: {kind}, but the Ray cluster has {n_nodes} nodes (alive, or that its autoscaler may add). "
        "Trials run on worker nodes and write "
        "their checkpoints to --out themselves, so each node would write its own copy on its own disk: the "
        "driver would not see the trials' files, and a trial retried on another node (after its node is lost) "
        "or continued by --resume could not be restored from its checkpoint. Use shared storage: an NFS (or "
        "other network) path mounted at the same place on every node, declared with --shared-storage (e.g. "
        "--out /mnt/shared/sweeps --shared-storage), or a bucket URI (e.g. --out s3://my-bucket/sweeps, the "
        "sweep's own files then go to --local-dir on this machine).")


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
    out, _ = storage_paths(opts.out, opts.local_dir, opts.DEFAULT_DIR)  # refuses a bad --out / --local-dir
    check_output_dir(out, "--out" if uri_scheme(opts.out) is None else "--local-dir")
    if opts.mlflow and opts.mlflow.startswith(("http://", "https://")):
        from stablesweep.tracking import probe_store

        why = probe_store(opts.mlflow)  # seconds, not MLflow's minutes of retries
        if why:
            raise InputError(f"--mlflow {opts.mlflow}: {why}")


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

@dataclass
class ClusterShape:
    """What trials can use: the alive nodes' resources and, where an autoscaler may add nodes,
    its node types as (resources, most nodes of that type). Plain data (tested without Ray)."""

    nodes: list[dict[str, float]]
    node_types: list[tuple[dict[str, float], int]] = field(default_factory=list)

    @staticmethod
    def fits(node: dict[str, float], need: dict[str, float]) -> int:
        """How many trials of `need` fit this node (a node type of unknown resources: any number)."""
        if not node:
            return 10 ** 6
        n = 10 ** 6
        for k, v in need.items():
            if v > 0:
                n = min(n, math.floor(node.get(k, 0) / v + 1e-9))
        return n

    def trial_fit(self, need: dict[str, float]) -> int:
        """Trials that fit at once: on the alive nodes, plus on the nodes an autoscaler may add."""
        now = sum(self.fits(n, need) for n in self.nodes if n)
        later = sum(min(self.fits(r, need), 10 ** 6) * m for r, m in self.node_types if m > 0)
        return min(now + later, 10 ** 6)

    @property
    def n_nodes(self) -> int:
        """Nodes that trials may run on: alive ones, plus the most an autoscaler may add."""
        return len(self.nodes) + sum(m for _, m in self.node_types if m > 0)


def cluster_shape(autoscaling: bool = True) -> ClusterShape:
    """The shape of the Ray cluster this process is connected to; with `autoscaling`, the node
    types its autoscaler may start too (a Ray this process started has none)."""
    import ray

    nodes = [_ray_names(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
    return ClusterShape(nodes=nodes, node_types=autoscaler_node_types() if autoscaling else [])


def joins_a_cluster(opts: RunOptions) -> bool:
    """The driver joins a running cluster (--address, or RAY_ADDRESS as inside a Ray Job) rather
    than starting a Ray of its own."""
    env = os.environ.get("RAY_ADDRESS", "")
    return bool(opts.address) or (bool(env) and env != "local")


def _ray_names(res: dict) -> dict[str, float]:
    """Ray's resource names (CPU, GPU) as tune.with_resources spells them (cpu, gpu)."""
    return {{"CPU": "cpu", "GPU": "gpu"}.get(k, k): float(v) for k, v in res.items()}


def autoscaler_node_types() -> list[tuple[dict[str, float], int]]:
    """The worker node types an autoscaler may start: from the cluster config in the GCS (autoscaler
    v2, KubeRay), else from the cluster launcher's bootstrap config on the head (`ray up`), where
    this driver runs for `ray job submit` and `ray submit`. Empty for a fixed cluster."""
    types: list[tuple[dict[str, float], int]] = []
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
        if config is not None:
            for g in config.node_group_configs:
                if g.max_count != 0:
                    types.append((_ray_names(dict(g.resources)), g.max_count if g.max_count > 0 else 10 ** 6))
            return types
    except Exception as e:  # an internal API: never fail a sweep over it
        logger.debug("no cluster config from the GCS: %s", e)
    path = Path(os.environ.get("STABLESWEEP_AUTOSCALING_CONFIG", "~/ray_bootstrap_config.yaml")).expanduser()
    try:
        import yaml

        config = yaml.safe_load(path.read_text()) if path.is_file() else None
        if not isinstance(config, dict):
            return types
        head = config.get("head_node_type")
        for name, t in (config.get("available_node_types") or {}).items():
            if name != head and int(t.get("max_workers", 0) or 0) > 0:
                types.append((_ray_names(t.get("resources") or {}), int(t["max_workers"])))
    except Exception as e:
        logger.debug("no autoscaling config at %s: %s", path, e)
    return types


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
