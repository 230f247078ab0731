"""Run a stability sweep: plan (all checks, before Ray), Tune, then the trial table, the Optuna and
MLflow records, and the stable region.

Layout of a sweep, everything under `--out` (default runs/sweeps):

    OUT/mlflow.db                 MLflow store shared by the sweeps in OUT (compare them in one UI)
    OUT/mlartifacts/              its artifacts
    OUT/NAME/sweep.json           what the sweep is (config, space, sampler, seed, samples, run ids)
    OUT/NAME/optuna.db            the Optuna study (the sampler's knowledge; kept by --resume)
    OUT/NAME/tuner.pkl, trial_*/  Tune's experiment (storage_path=OUT, name=NAME)
    OUT/NAME/trials.csv           one row a trial
    OUT/NAME/stable_region.{json,md}, figures/*.png, recommended.yaml

Where `--out` is a URI (s3://bucket/sweeps, gs://..., any pyarrow filesystem URI), only Tune's
experiment (checkpoints, trial results, experiment state) goes there, as OUT/NAME; the rest of the
layout above (sweep.json, optuna.db, trials.csv, the region files, mlflow.db) is written on the
driver's disk under `--local-dir` (default runs/sweeps). Sqlite (Optuna's study, MLflow's store)
needs a local file, and the region is read by people, so neither belongs in a bucket.

On a Ray cluster of more than one node the trials run in workers on other machines and write
their checkpoints to Tune's storage themselves: `--out` must be the same storage for every node, a
bucket URI or a path declared shared with `--shared-storage` (`check_shared_storage`).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from ray.tune import Callback

from stablesweep.config import Config, load_config
from stablesweep.sweep.search import SAMPLERS, StabilitySearcher, reconcile_study, sqlite_url
from stablesweep.sweep.space import SearchSpace, load_space, short_name
from stablesweep.sweep.stopper import Outcome, final_verdict
from stablesweep.vocab import DIVERGED, ERROR, FINISHED, PRUNED, STABLE, VERDICTS, InputError, py

logger = logging.getLogger(__name__)

DEFAULT_SAMPLES = 16
DEFAULT_LOCAL_DIR = "runs/sweeps"  # the sweep's own files when --out is a bucket URI
CLUSTER_MAX_FAILURES = 2  # default retries of a trial from its checkpoint on a multi-node cluster
LOCAL_SCHEMES = {"file", "local"}  # URIs that name this machine's disk, not shared storage
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_BUILTIN_RESOURCES = {"cpu": "--cpus-per-trial", "gpu": "--gpus-per-trial", "memory": None}
UNFINISHED = "unfinished"  # only in an interrupted sweep's table: resumable, no verdict yet
STATE_FILE = "sweep.json"
# Tune's bookkeeping keys: not metrics of the run
_TUNE_KEYS = {"timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date",
              "time_this_iter_s", "pid", "hostname", "node_ip", "config", "time_since_restore",
              "iterations_since_restore", "experiment_tag", "should_checkpoint"}
# result keys that are tags or params, not metrics
_NOT_METRICS = {"step", "first_bad_step", "budget_steps", FINISHED, "verdict", "reason", "node_id", "device"}


@dataclass
class SweepOptions:
    config: str
    space: str
    samples: int | None = None  # default: the grid size for --sampler grid, else 16
    sampler: str | None = None  # default tpe
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None  # default: as many trials as the cluster fits
    address: str | None = None
    out: str = "runs/sweeps"
    mlflow: str | None = None
    name: str | None = None
    resume: bool = False
    overrides: list[str] = field(default_factory=list)
    steps: int | None = None
    asha: bool | None = None  # default on
    asha_grace: int | None = None  # reports before ASHA may stop a trial (default: half the budget)
    asha_rf: float | None = None  # ASHA reduction factor (default 2: the worse half stops)
    seed: int | None = None  # the sampler's seed (default 0)
    num_cpus: int | None = None  # CPUs of a local Ray started here (default: all)
    experiment: str = "stablesweep"  # MLflow experiment
    # ---- on a cluster ----
    shared_storage: bool = False  # the user declares: the --out path is the same storage on every node
    local_dir: str | None = None  # the sweep's own files when --out is a URI (default runs/sweeps)
    max_failures: int | None = None  # retries of a failed trial from its checkpoint (default: 2 on
    #                                  a multi-node cluster, where a worker node may be lost; 0 on one node)
    resources_per_trial: dict[str, float] | None = None  # custom Ray resources a trial needs


@dataclass
class SweepPlan:
    opts: SweepOptions
    name: str
    out: Path
    sweep_dir: Path
    cfg: Config
    base: dict
    space: SearchSpace
    sampler: str
    samples: int
    seed: int
    asha: bool
    asha_grace: int | None
    asha_rf: float
    n_reports: int | None
    tracking_uri: str
    resume: bool
    state: dict
    notes: list[str] = field(default_factory=list)
    storage: str = ""  # Tune's storage_path: str(out), or the --out URI

    @property
    def experiment_path(self) -> str:
        """Tune's experiment: a local directory (the sweep dir) or STORAGE_URI/NAME."""
        return str(self.sweep_dir) if self.storage == str(self.out) else f"{self.storage}/{self.name}"

    @property
    def study_url(self) -> str:
        return sqlite_url(self.sweep_dir / "optuna.db")


@dataclass
class SweepResult:
    name: str
    sweep_dir: Path
    table: pd.DataFrame
    region: Any  # stablesweep.analysis.region.Region
    files: dict[str, Path]
    tracking_uri: str
    parent_run_id: str
    counts: dict[str, int]
    interrupted: bool
    wall_s: float


# ---- planning: every check before Ray starts ------------------------------------------------

def plan_sweep(opts: SweepOptions) -> SweepPlan:
    """Check the config, the space and the options; decide names and paths. Writes nothing."""
    if opts.sampler is not None and opts.sampler not in SAMPLERS:
        raise InputError(f"--sampler {opts.sampler!r}: expected one of {', '.join(SAMPLERS)}")
    for flag, v, ok in (("--samples", opts.samples, lambda x: x >= 1), ("--steps", opts.steps, lambda x: x >= 1),
                        ("--asha-grace", opts.asha_grace, lambda x: x >= 1),
                        ("--asha-rf", opts.asha_rf, lambda x: x > 1)):
        if v is not None and not ok(v):
            raise InputError(f"{flag} {v}: out of range")
    check_run_options(opts)

    overrides = list(opts.overrides) + ([f"training.steps={opts.steps}"] if opts.steps else [])
    cfg = load_config(opts.config, overrides)
    space = load_space(opts.space)
    space.validate(cfg)
    base = cfg.to_dict()
    out, storage = storage_paths(opts.out, opts.local_dir)

    if opts.resume:
        sweep_dir = _find_sweep(out, opts.name)
        state = json.loads((sweep_dir / STATE_FILE).read_text())
        _check_same(state, base, space, opts, sweep_dir)
        if state.get("storage", storage) != storage:
            raise InputError(f"--resume: sweep {sweep_dir.name} keeps Tune's experiment in {state['storage']}, "
                             f"not {storage}; resume with --out {state['storage']}")
        name = state["name"]
        sampler, samples, seed = state["sampler"], int(state["samples"]), int(state["seed"])
        asha, grace, rf = bool(state["asha"]), state.get("asha_grace"), float(state.get("asha_rf", 2.0))
    else:
        name = opts.name or f"{Path(opts.config).stem}-{Path(opts.space).stem}-" \
                            f"{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise InputError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only")
        sweep_dir = out / name
        if (sweep_dir / STATE_FILE).exists():
            raise InputError(f"--name {name}: a sweep already exists at {sweep_dir}; pass --resume to continue it, "
                             "or choose another --name")
        sampler = opts.sampler or "tpe"
        seed = 0 if opts.seed is None else int(opts.seed)
        asha = True if opts.asha is None else bool(opts.asha)
        grace, rf = opts.asha_grace, float(opts.asha_rf or 2.0)
        samples = opts.samples or DEFAULT_SAMPLES
        state = {}
    notes = []
    if sampler == "grid":
        size = space.grid_size()  # refuses continuous axes
        if opts.resume:
            pass
        elif opts.samples is None:
            samples = size
        elif opts.samples > size:
            notes.append(f"--samples {opts.samples} is more than the {size} grid points: running {size}")
            samples = size
    t = cfg.training
    n_reports = math.ceil(t.steps / t.report_interval) if t.steps else None
    uri = opts.mlflow or (state.get("tracking_uri") if opts.resume else None) or _default_uri(out)
    notes += _ephemeral_notes(opts)
    return SweepPlan(opts=opts, name=name, out=out, sweep_dir=sweep_dir, cfg=cfg, base=base, space=space,
                     sampler=sampler, samples=samples, seed=seed, asha=asha, asha_grace=grace, asha_rf=rf,
                     n_reports=n_reports, tracking_uri=uri, resume=opts.resume, state=state, notes=notes,
                     storage=storage)


def _default_uri(out: Path) -> str:
    from stablesweep.tracking import default_tracking_uri

    return default_tracking_uri(out)


def _find_sweep(out: Path, name: str | None) -> Path:
    if name:
        d = out / name
        if not (d / STATE_FILE).exists():
            raise InputError(f"--resume --name {name}: no sweep at {d} (no {STATE_FILE})")
        return d
    found = sorted(out.glob(f"*/{STATE_FILE}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise InputError(f"--resume: no sweep in {out}; pass --out and --name of the sweep to continue")
    return found[-1].parent


def _check_same(state: dict, base: dict, space: SearchSpace, opts: SweepOptions, sweep_dir: Path) -> None:
    def norm(x: Any) -> str:
        return json.dumps(x, sort_keys=True, default=str)

    if norm(state["config"]) != norm(base):
        raise InputError(f"--resume: the config (with --set/--steps) differs from the one sweep {sweep_dir.name} "
                         f"started with ({sweep_dir / 'config.yaml'}); resume with the same, or start a new sweep")
    spec = {k: a.spec() for k, a in space.axes.items()}
    if norm(state["space"]) != norm(spec):
        raise InputError(f"--resume: the search space {opts.space} differs from the one sweep {sweep_dir.name} "
                         f"started with ({sweep_dir / 'space.yaml'})")
    for flag, mine, theirs in (("--sampler", opts.sampler, state["sampler"]), ("--samples", opts.samples, state["samples"]),
                               ("--seed", opts.seed, state["seed"]), ("--no-asha", opts.asha, state["asha"])):
        if mine is not None and mine != theirs:
            raise InputError(f"--resume: {flag} differs from the sweep's own ({theirs}); leave it out to resume")


# ---- storage and resources on a cluster -----------------------------------------------------

def uri_scheme(out: str) -> str | None:
    """The scheme of a URI (`s3` of s3://bucket/x), or None for a plain path."""
    m = _URI.match(str(out))
    return m.group(1).lower() if m else None


def is_shared_uri(out: str) -> bool:
    """A URI of storage every node reaches by itself (s3://, gs://, abfs://, hdfs://, ...); not
    file:// or local://, which name each machine's own disk."""
    scheme = uri_scheme(out)
    return scheme is not None and scheme not in LOCAL_SCHEMES


def storage_paths(out: str, local_dir: str | None = None, default_local: str = DEFAULT_LOCAL_DIR) -> tuple[Path, str]:
    """(the directory for the sweep's own files, Tune's storage_path).

    A plain --out is both (the one-machine layout). A URI --out is Tune's storage only; the sweep's
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


def trial_resources(opts) -> dict[str, float]:
    """The resources of one trial for `tune.with_resources`: CPUs, GPUs and --resources-per-trial."""
    res: dict[str, float] = {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial}
    extra = getattr(opts, "resources_per_trial", None) or {}
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
        res[k] = float(v)
    return res


def check_run_options(opts) -> None:
    """The options of where and how trials run, shared by sweeps and ramps (before Ray starts)."""
    for flag, v, ok in (("--max-concurrent", opts.max_concurrent, lambda x: x >= 1),
                        ("--cpus-per-trial", opts.cpus_per_trial, lambda x: x > 0),
                        ("--gpus-per-trial", opts.gpus_per_trial, lambda x: x >= 0),
                        ("--max-failures", opts.max_failures, lambda x: x >= 0)):
        if v is not None and not ok(v):
            raise InputError(f"{flag} {v}: out of range")
    g = opts.gpus_per_trial
    if g > 1 and not float(g).is_integer():
        raise InputError(f"--gpus-per-trial {g}: more than one GPU a trial must be a whole number")
    if opts.address and opts.num_cpus:
        raise InputError("num_cpus applies to a local Ray only; not with --address")
    trial_resources(opts)  # refuses a bad --resources-per-trial


def _ephemeral_notes(opts, default_local: str = DEFAULT_LOCAL_DIR) -> list[str]:
    """Relative paths in a Ray Job land in the job's copy of --working-dir, which Ray deletes."""
    if "runtime_resources" not in os.getcwd():
        return []
    notes = []
    for flag, value in (("--out", opts.out), ("--local-dir", getattr(opts, "local_dir", None) or
                                                (default_local if uri_scheme(opts.out) else None))):
        if value and uri_scheme(value) is None and not Path(value).expanduser().is_absolute():
            notes.append(f"{flag} {value} is relative to this Ray Job's working directory ({os.getcwd()}), which "
                         "Ray deletes with the job's files: pass an absolute path to keep the results")
    return notes


@dataclass
class ClusterShape:
    """What the sweep can use: the alive nodes' resources and, where an autoscaler may add nodes,
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
    return ClusterShape(nodes=nodes, node_types=_autoscaler_node_types() if autoscaling else [])


def joins_a_cluster(opts) -> bool:
    """The driver joins a running cluster (--address, or RAY_ADDRESS as inside a Ray Job) rather
    than starting a Ray of its own."""
    env = os.environ.get("RAY_ADDRESS", "")
    return bool(getattr(opts, "address", None)) or (bool(env) and env != "local")


def _ray_names(res: dict) -> dict[str, float]:
    """Ray's resource names (CPU, GPU) as tune.with_resources spells them (cpu, gpu)."""
    return {{"CPU": "cpu", "GPU": "gpu"}.get(k, k): float(v) for k, v in res.items()}


def _autoscaler_node_types() -> list[tuple[dict[str, float], int]]:
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


def cluster_checks(opts, shape: ClusterShape | None = None) -> tuple[int, int, ClusterShape]:
    """After ray.init, before anything is written: the trial fits the cluster, --out is storage
    every trial's node shares, the retries. Returns (max concurrent trials, max failures, shape)."""
    shape = shape or cluster_shape(autoscaling=joins_a_cluster(opts))
    max_concurrent = _check_resources(opts, shape)
    check_shared_storage(opts.out, shape.n_nodes, bool(getattr(opts, "shared_storage", False)))
    mf = getattr(opts, "max_failures", None)
    max_failures = mf if mf is not None else (CLUSTER_MAX_FAILURES if shape.n_nodes > 1 else 0)
    return max_concurrent, max_failures, shape


# ---- running ----------------------------------------------------------------------------------

def run_sweep(opts: SweepOptions, echo: Callable[[str], None] = print) -> SweepResult:
    """Plan, start (or join) Ray, run the Tuner, and write the region. See the module docstring."""
    plan = plan_sweep(opts)  # raises ConfigError / SpaceError / InputError before Ray starts
    started = time.time()
    for n in plan.notes:
        echo(f"note: {n}")
    _quiet_tune()
    import ray

    started_ray = _init_ray(opts)
    try:
        max_concurrent, max_failures, shape = cluster_checks(opts)
        return _run(plan, max_concurrent, echo, started, max_failures=max_failures, n_nodes=shape.n_nodes)
    finally:
        if started_ray:
            ray.shutdown()


def _quiet_tune() -> None:
    """Progress is ours (one line a finished trial); Tune's own tables and the warning about the
    experiment snapshot that follows every trial checkpoint (which is what makes --resume lose
    nothing) are noise here. Only set where the user has not chosen."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _init_ray(opts: SweepOptions) -> bool:
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    if opts.address:
        _check_reachable(opts.address)
        try:
            ray.init(address=opts.address, **kwargs)
        except (ConnectionError, ValueError) as e:
            raise InputError(f"--address {opts.address}: cannot join that Ray cluster: {e}") from None
    else:
        ray.init(num_cpus=opts.num_cpus, **kwargs)
    return True


def _check_reachable(address: str) -> None:
    """A HOST:PORT that nothing answers on is refused at once (Ray would retry for minutes)."""
    import socket

    m = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d+)", address)
    if "://" in address or m is None:
        return  # auto, local, ray://... : Ray resolves those itself
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=5).close()
    except OSError as e:
        raise InputError(f"--address {address}: nothing answers there ({e.strerror or e}); is the Ray head "
                         "running (`ray start --head`)?") from None


def _check_resources(opts, shape: ClusterShape | None = None) -> int:
    """A trial must fit one node; GPUs and custom resources asked for must exist (on an alive
    node, or on a node type an autoscaler may start). The default concurrency is the number of
    trials the cluster fits: its alive nodes, plus the nodes an autoscaler may add (pending trials
    are what makes it add them)."""
    shape = shape or cluster_shape(autoscaling=joins_a_cluster(opts))
    need = trial_resources(opts)
    cpus, gpus = opts.cpus_per_trial, opts.gpus_per_trial
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


def _run(plan: SweepPlan, max_concurrent: int, echo: Callable[[str], None], started: float, *,
         max_failures: int = 0, n_nodes: int = 1) -> SweepResult:
    from ray import tune

    from stablesweep.sweep.stopper import DivergenceStopper, asha_for
    from stablesweep.sweep.trainable import sweep_trial
    from stablesweep.tracking import Tracker

    opts, space = plan.opts, plan.space
    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(plan.tracking_uri, experiment=plan.state.get("experiment", opts.experiment))
    if plan.resume:
        parent = plan.state["parent_run_id"]
        tracker.resume_sweep(parent)
        echo(f"resuming sweep {plan.name} ({plan.sweep_dir})")
    else:
        parent = _start_parent(plan, tracker, max_concurrent)
    searcher = StabilitySearcher(space, plan.study_url, plan.name, plan.sampler, plan.seed)
    scheduler = asha_for(plan.n_reports, grace=plan.asha_grace, reduction_factor=plan.asha_rf) if plan.asha else None
    resources = trial_resources(opts)
    trainable = tune.with_resources(
        tune.with_parameters(sweep_trial, base=plan.base, base_dir=plan.cfg.base_dir, source=plan.cfg.source),
        resources)
    custom = "".join(f", {v:g} {k}" for k, v in resources.items() if k not in ("cpu", "gpu"))
    echo(f"sweep {plan.name}: {plan.samples} trials, sampler {plan.sampler}, "
         f"{'ASHA' if plan.asha else 'no ASHA'}, up to {max_concurrent} at once "
         f"({opts.cpus_per_trial:g} CPU{', %g GPU' % opts.gpus_per_trial if opts.gpus_per_trial else ''}{custom} "
         f"a trial), budget {plan.cfg.training.steps or '?'} steps, report every {plan.cfg.training.report_interval}")
    if n_nodes > 1 or plan.storage != str(plan.out):
        echo(f"cluster: {n_nodes} nodes; Tune's storage {plan.experiment_path}; the sweep's files in {plan.sweep_dir}; "
             f"a failed trial is retried {max_failures} time{'s' if max_failures != 1 else ''} from its checkpoint")
    progress = ProgressCallback(plan.samples, space.keys)
    progress.echo = echo
    callbacks = [MlflowCallback(tracker, parent, space.keys, plan.name), progress]
    if plan.resume and _can_restore(plan):
        tuner = tune.Tuner.restore(plan.experiment_path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=False)
        _swap_echo(tuner, echo)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={},
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=plan.samples,
                                        max_concurrent_trials=max_concurrent, trial_dirname_creator=trial_dirname,
                                        reuse_actors=True),
            run_config=tune.RunConfig(
                name=plan.name, storage_path=plan.storage, stop=DivergenceStopper(), callbacks=callbacks,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=max_failures), verbose=0),
        )
    results = tuner.fit()
    return _collect(plan, results, tracker, parent, echo, started)


def _can_restore(plan: SweepPlan) -> bool:
    """Tune's experiment of this sweep exists, with its state (a kill before Tune's first snapshot
    leaves none: the sweep then starts Tune afresh, the Optuna study keeps what it knew)."""
    from ray import tune

    if plan.storage == str(plan.out):
        exp_dir = plan.sweep_dir
        return tune.Tuner.can_restore(str(exp_dir)) and bool(list(exp_dir.glob("experiment_state-*.json")))
    try:
        import pyarrow.fs as pafs

        if not tune.Tuner.can_restore(plan.experiment_path):
            return False
        fs, path = pafs.FileSystem.from_uri(plan.experiment_path)
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return any(Path(i.path).name.startswith("experiment_state-") for i in infos)
    except Exception as e:
        logger.warning("cannot read Tune's experiment at %s (%s); starting Tune afresh", plan.experiment_path, e)
        return False


def _swap_echo(tuner, echo) -> None:
    """Restored callbacks come from tuner.pkl; point the progress printer at this process's echo."""
    try:
        for cb in tuner._local_tuner.get_run_config().callbacks or []:
            if isinstance(cb, ProgressCallback):
                cb.echo = echo
    except AttributeError:
        pass


def trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"


def _start_parent(plan: SweepPlan, tracker, max_concurrent: int) -> str:
    import yaml

    opts = plan.opts
    space_yaml = plan.space.to_yaml()
    config_yaml = yaml.safe_dump(plan.base, sort_keys=False)
    params = {"sampler": plan.sampler, "samples": plan.samples, "seed": plan.seed, "asha": plan.asha,
              "budget_steps": plan.cfg.training.steps, "report_interval": plan.cfg.training.report_interval,
              "cpus_per_trial": opts.cpus_per_trial, "gpus_per_trial": opts.gpus_per_trial,
              "max_concurrent": max_concurrent, "config_file": str(Path(opts.config).resolve()),
              "space_file": str(Path(opts.space).resolve()), "space_keys": ",".join(plan.space.keys)}
    if opts.resources_per_trial:
        params["resources_per_trial"] = json.dumps(opts.resources_per_trial, sort_keys=True)
    parent = tracker.start_sweep(plan.name, params,
                                 tags={"sweep_dir": str(plan.sweep_dir), "tune_experiment": plan.experiment_path},
                                 texts={"config.yaml": config_yaml, "space.yaml": space_yaml})
    state = {"version": 1, "name": plan.name, "created": _dt.datetime.now().astimezone().isoformat(),
             "config_file": str(Path(opts.config).resolve()), "base_dir": plan.cfg.base_dir,
             "source": plan.cfg.source, "config": plan.base,
             "space_file": str(Path(opts.space).resolve()),
             "space": {k: a.spec() for k, a in plan.space.axes.items()},
             "sampler": plan.sampler, "samples": plan.samples, "seed": plan.seed, "asha": plan.asha,
             "asha_grace": plan.asha_grace, "asha_rf": plan.asha_rf, "tracking_uri": plan.tracking_uri,
             "experiment": opts.experiment, "storage": plan.storage, "experiment_path": plan.experiment_path,
             "parent_run_id": parent, "study_name": plan.name, "study_url": plan.study_url}
    (plan.sweep_dir / "config.yaml").write_text(config_yaml)
    (plan.sweep_dir / "space.yaml").write_text(space_yaml)
    tmp = plan.sweep_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str) + "\n")
    tmp.replace(plan.sweep_dir / STATE_FILE)
    plan.state = state
    return parent


# ---- after the run: one table, one truth ------------------------------------------------------

def _collect(plan: SweepPlan, results, tracker, parent: str, echo, started: float) -> SweepResult:
    from stablesweep.analysis.region import analyze, write_region

    table, outcomes = trials_table(trial_records(results), plan.space)
    finished = {k: v for k, v in outcomes.items() if v.verdict in VERDICTS}
    numbers = reconcile_study(plan.study_url, plan.name, finished, owned=set(outcomes),
                              final=len(finished) == len(outcomes))
    table.insert(1, "optuna_number", table["trial_id"].map(lambda t: numbers.get(t, -1)).astype(int))
    # Fill params of trials that errored before reporting (their config is in the study)
    _finish_mlflow(table, outcomes, tracker, parent, plan)
    interrupted = bool((table["verdict"] == UNFINISHED).any()) if len(table) else False
    done = table[table["verdict"].isin(VERDICTS)] if len(table) else table
    region = analyze(done, lr_key=plan.space.lr_key, group_keys=plan.space.categorical_keys,
                     param_keys=plan.space.keys, distributions=plan.space.to_optuna())
    title = f"Stable region: sweep {plan.name}"
    files = write_region(region, table, plan.sweep_dir, base=plan.base, title=title,
                         extra={"sweep": plan.name, "sampler": plan.sampler, "samples": plan.samples,
                                "config": plan.state.get("config_file"), "space": plan.state.get("space_file"),
                                "interrupted": interrupted})
    counts = {v: int((table["verdict"] == v).sum()) for v in (*VERDICTS, UNFINISHED)} if len(table) else {}
    metrics = {f"trials_{k}": float(v) for k, v in counts.items()}
    if region.best:
        metrics["best_objective"] = region.best["objective"]
    for g in region.groups:
        if g.max_stable_lr is not None:
            metrics[f"max_stable_lr/{g.label.replace('=', '_').replace(' ', '/')}"] = g.max_stable_lr
    tracker.end_sweep(parent, metrics, tags={"interrupted": str(interrupted).lower()},
                      artifacts=list(files.values()), status="KILLED" if interrupted else "FINISHED")
    return SweepResult(name=plan.name, sweep_dir=plan.sweep_dir, table=table, region=region, files=files,
                       tracking_uri=plan.tracking_uri, parent_run_id=parent, counts=counts,
                       interrupted=interrupted, wall_s=time.time() - started)


@dataclass
class TrialRecord:
    """What the table needs of one Tune trial."""

    trial_id: str
    status: str  # TERMINATED, ERROR, RUNNING, PENDING, PAUSED
    config: dict
    last_result: dict
    error: Any = None
    path: str | None = None

    @property
    def ended(self) -> bool:
        """Ended for real: errored; or the training loop said so (finished, or diverged); or a
        scheduler stop, which Tune records with `done` in the last result. Tune also marks the
        trials it merely shuts down at an interrupt TERMINATED, but without `done`: those are
        resumable. (`done` alone is no proof either way: Tune does not persist it for trials that
        ended on their own, so a restored trial shows it False; `finished` is ours and is kept.)"""
        r = self.last_result
        if self.status == "ERROR":
            return True
        if self.status != "TERMINATED":
            return False
        return bool(r.get(FINISHED)) or r.get("verdict") == DIVERGED or bool(r.get("done"))


def trial_records(results) -> list[TrialRecord]:
    """The trials of a ResultGrid with their own status and config. Tune's Trial objects (behind
    the grid) carry both; a Result alone cannot tell an interrupted trial from a finished one."""
    trials = getattr(getattr(results, "_experiment_analysis", None), "trials", None)
    records = []
    for i, r in enumerate(results):
        t = trials[i] if trials is not None else None
        tid = t.trial_id if t is not None else Path(r.path).name.removeprefix("trial_")
        last = dict(r.metrics or {})
        if last.get("trial_id") not in (None, tid):  # a default result of someone else's actor
            last = {}
        if t is not None:
            status, config = t.status, dict(t.config)
        else:  # without Tune's trials: the grid's own view (cannot see interrupts)
            status, config = ("ERROR" if r.error is not None else "TERMINATED"), dict(r.config or {})
            last.setdefault("done", True)
        records.append(TrialRecord(tid, status, config or _params_from_dir(r.path), last, r.error, r.path))
    return records


def error_text(err: BaseException | str | None) -> str | None:
    """The line that says what went wrong (e.g. `ConfigError: ...`), not the whole traceback."""
    if err is None:
        return None
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    named = [ln for ln in lines if re.match(r"^[A-Za-z_.]*(Error|Exception|Interrupt)\b", ln)]
    text = (named[-1] if named else (lines[-1] if lines else type(err).__name__))
    return text[:500]


def trials_table(records: list[TrialRecord], space: SearchSpace) -> tuple[pd.DataFrame, dict[str, Outcome]]:
    """One row a trial: id, name, params, verdict fields, losses, FLOPs, node."""
    rows, outcomes = [], {}
    for rec in records:
        m, tid, params = rec.last_result, rec.trial_id, rec.config
        if rec.ended:
            outcome = final_verdict(m, errored=rec.status == "ERROR", error=error_text(rec.error))
        else:
            outcome = Outcome(UNFINISHED, steps=int(m.get("step") or 0))
        outcomes[tid] = outcome
        row = {"trial_id": tid, "name": short_name({k: params.get(k) for k in space.keys})}
        row.update({k: params.get(k) for k in space.keys})
        row.update({
            "verdict": outcome.verdict, "reason": outcome.reason, "first_bad_step": outcome.first_bad_step,
            "steps": outcome.steps, "budget_steps": m.get("budget_steps"), "reports": m.get("training_iteration"),
            "objective": m.get("objective"), "initial_loss": m.get("initial_loss"), "final_loss": m.get("loss"),
            "train_flops": m.get("train_flops"), "flops_per_step": m.get("flops_per_step"),
            "samples_per_s": m.get("samples_per_s"), "nonfinite_steps": m.get("nonfinite_steps"),
            "node_id": m.get("node_id"), "device": m.get("device"), "wall_s": m.get("time_total_s"),
        })
        row.update({k: v for k, v in m.items() if k.startswith(("eval_loss/", "eval_acc/"))})
        rows.append(row)
    table = pd.DataFrame(rows)
    if len(table):
        table = table.sort_values("trial_id", kind="stable").reset_index(drop=True)
    return table, outcomes


def _params_from_dir(path: str | None) -> dict:
    try:
        return json.loads((Path(path) / "params.json").read_text())
    except (OSError, TypeError, ValueError):
        return {}


def _finish_mlflow(table: pd.DataFrame, outcomes: dict[str, Outcome], tracker, parent: str, plan: SweepPlan) -> None:
    """Every trial has exactly one child run with its final verdict tags (the live callback may
    have missed trials that finished in an earlier, interrupted run)."""
    for _, r in table.iterrows():
        o = outcomes.get(r["trial_id"])
        if o is None or o.verdict not in VERDICTS:
            continue
        params = {k: py(r[k]) for k in plan.space.keys}
        run_id = tracker.trial_run(parent, r["trial_id"], r["name"], params, tags={"stablesweep.sweep": plan.name})
        summary = {k: py(r[k]) for k in ("objective", "initial_loss", "final_loss", "train_flops", "steps")
                   if py(r.get(k)) is not None}
        tags = {"node_id": str(r.get("node_id") or ""), "budget_steps": str(py(r.get("budget_steps")) or ""),
                "optuna_number": str(r.get("optuna_number"))}
        if o.verdict == ERROR and o.reason:
            tags["error"] = o.reason[:5000]
        tracker.finish_trial(run_id, o.verdict, o.reason, o.first_bad_step, summary, tags)


# ---- driver-side callbacks -----------------------------------------------------------------------



class MlflowCallback(Callback):
    """Live MLflow logging from the driver: a child run when a trial starts, metrics at every
    report step, verdict tags when it ends. Failures to log never stop the sweep (the final
    reconciliation writes the verdicts again from the trial table)."""

    def __init__(self, tracker, parent_run_id: str, param_keys: list[str], sweep: str):
        self.tracker = tracker
        self.parent = parent_run_id
        self.param_keys = list(param_keys)
        self.sweep = sweep
        self._last: dict[str, int] = {}

    def _run(self, trial) -> str:
        params = {k: trial.config.get(k) for k in self.param_keys}
        run_id = self.tracker.trial_run(self.parent, trial.trial_id, short_name(params), params,
                                        tags={"stablesweep.sweep": self.sweep})
        if trial.trial_id not in self._last:
            self._last[trial.trial_id] = self.tracker.last_step(run_id)
        return run_id

    def on_trial_start(self, iteration, trials, trial, **info):
        self._safe(self._run, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        def log(trial):
            run_id = self._run(trial)
            step = result.get("step")
            if not isinstance(step, int) or step <= self._last.get(trial.trial_id, -1):
                return  # a step an earlier (interrupted) run already logged
            metrics = {k: v for k, v in result.items()
                       if k not in _TUNE_KEYS and k not in _NOT_METRICS and isinstance(v, (int, float))
                       and not isinstance(v, bool)}
            self.tracker.log_trial_metrics(run_id, metrics, step)
            self._last[trial.trial_id] = step

        self._safe(log, trial)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._safe(self._finish, trial, False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._safe(self._finish, trial, True)

    def _finish(self, trial, errored: bool) -> None:
        run_id = self._run(trial)
        res = trial.last_result or {}
        o = final_verdict(res, errored=errored, error=error_text(_trial_error(trial)) if errored else None)
        summary = {k: res[k] for k in ("objective", "initial_loss", "train_flops") if isinstance(res.get(k), (int, float))}
        summary["steps"] = o.steps
        self.tracker.finish_trial(run_id, o.verdict, o.reason, o.first_bad_step, summary)

    @staticmethod
    def _safe(fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # tracking must never kill a sweep
            logger.warning("MLflow logging failed (%s: %s); the sweep goes on", type(e).__name__, e)


def _trial_error(trial) -> str | None:
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
            step = (trial.last_result or {}).get("step")
            n = getattr(getattr(trial, "run_metadata", None), "num_failures", None)
            name = short_name({k: trial.config.get(k) for k in self.param_keys})
            why = error_text(_trial_error(trial)) or "its worker failed"
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
            o = final_verdict(res, errored=errored, error=error_text(_trial_error(trial)) if errored else None)
            name = short_name({k: trial.config.get(k) for k in self.param_keys})
            budget = res.get("budget_steps")
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
