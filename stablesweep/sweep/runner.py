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
from stablesweep.sweep.stopper import (DIVERGED, ERROR, FINISHED_KEY, PRUNED, STABLE, VERDICTS, Outcome,
                                       final_verdict)

logger = logging.getLogger(__name__)

DEFAULT_SAMPLES = 16
UNFINISHED = "unfinished"  # only in an interrupted sweep's table: resumable, no verdict yet
STATE_FILE = "sweep.json"
# Tune's bookkeeping keys: not metrics of the run
_TUNE_KEYS = {"timestamp", "checkpoint_dir_name", "done", "training_iteration", "trial_id", "date",
              "time_this_iter_s", "pid", "hostname", "node_ip", "config", "time_since_restore",
              "iterations_since_restore", "experiment_tag", "should_checkpoint"}
# result keys that are tags or params, not metrics
_NOT_METRICS = {"step", "first_bad_step", "budget_steps", FINISHED_KEY, "verdict", "reason", "node_id", "device"}


class InputError(ValueError):
    """Bad input to a sweep that is neither a config nor a space error (named, exit status 2)."""


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
                        ("--max-concurrent", opts.max_concurrent, lambda x: x >= 1),
                        ("--cpus-per-trial", opts.cpus_per_trial, lambda x: x > 0),
                        ("--gpus-per-trial", opts.gpus_per_trial, lambda x: x >= 0),
                        ("--asha-grace", opts.asha_grace, lambda x: x >= 1),
                        ("--asha-rf", opts.asha_rf, lambda x: x > 1)):
        if v is not None and not ok(v):
            raise InputError(f"{flag} {v}: out of range")
    g = opts.gpus_per_trial
    if g > 1 and not float(g).is_integer():
        raise InputError(f"--gpus-per-trial {g}: more than one GPU a trial must be a whole number")
    if opts.address and opts.num_cpus:
        raise InputError("num_cpus applies to a local Ray only; not with --address")

    overrides = list(opts.overrides) + ([f"training.steps={opts.steps}"] if opts.steps else [])
    cfg = load_config(opts.config, overrides)
    space = load_space(opts.space)
    space.validate(cfg)
    base = cfg.to_dict()
    out = Path(opts.out).expanduser().resolve()

    if opts.resume:
        sweep_dir = _find_sweep(out, opts.name)
        state = json.loads((sweep_dir / STATE_FILE).read_text())
        _check_same(state, base, space, opts, sweep_dir)
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
    return SweepPlan(opts=opts, name=name, out=out, sweep_dir=sweep_dir, cfg=cfg, base=base, space=space,
                     sampler=sampler, samples=samples, seed=seed, asha=asha, asha_grace=grace, asha_rf=rf,
                     n_reports=n_reports, tracking_uri=uri, resume=opts.resume, state=state, notes=notes)


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
        max_concurrent = _check_resources(opts)
        return _run(plan, max_concurrent, echo, started)
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


def _check_resources(opts: SweepOptions) -> int:
    """A trial must fit one node; GPUs asked for must exist. The default concurrency is the number
    of trials the cluster fits now."""
    import ray

    total = ray.cluster_resources()
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    cpus, gpus = opts.cpus_per_trial, opts.gpus_per_trial
    if gpus > 0 and total.get("GPU", 0) <= 0:
        raise InputError(f"--gpus-per-trial {gpus}: the Ray cluster has no GPUs "
                         f"(resources: {int(total.get('CPU', 0))} CPUs, 0 GPUs); leave --gpus-per-trial out to "
                         "train on CPU, or connect to a cluster with GPUs (--address)")
    if nodes and not any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        biggest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)))
        raise InputError(f"--cpus-per-trial {cpus} --gpus-per-trial {gpus}: no node of the cluster is that big "
                         f"(largest: {biggest.get('CPU', 0):g} CPUs, {biggest.get('GPU', 0):g} GPUs)")
    if opts.max_concurrent:
        return opts.max_concurrent
    fit = math.floor(total.get("CPU", 1) / cpus + 1e-9)
    if gpus > 0:
        fit = min(fit, math.floor(total.get("GPU", 0) / gpus + 1e-9))
    return max(1, fit)


def _run(plan: SweepPlan, max_concurrent: int, echo: Callable[[str], None], started: float) -> SweepResult:
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
    trainable = tune.with_resources(
        tune.with_parameters(sweep_trial, base=plan.base, base_dir=plan.cfg.base_dir, source=plan.cfg.source),
        {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial})
    echo(f"sweep {plan.name}: {plan.samples} trials, sampler {plan.sampler}, "
         f"{'ASHA' if plan.asha else 'no ASHA'}, up to {max_concurrent} at once "
         f"({opts.cpus_per_trial:g} CPU{', %g GPU' % opts.gpus_per_trial if opts.gpus_per_trial else ''} a trial), "
         f"budget {plan.cfg.training.steps or '?'} steps, report every {plan.cfg.training.report_interval}")
    progress = ProgressCallback(plan.samples, space.keys)
    progress.echo = echo
    callbacks = [MlflowCallback(tracker, parent, space.keys, plan.name), progress]
    exp_dir = plan.sweep_dir
    if plan.resume and tune.Tuner.can_restore(str(exp_dir)) and list(exp_dir.glob("experiment_state-*.json")):
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True, resume_errored=False)
        _swap_echo(tuner, echo)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={},
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=plan.samples,
                                        max_concurrent_trials=max_concurrent, trial_dirname_creator=trial_dirname,
                                        reuse_actors=True),
            run_config=tune.RunConfig(
                name=plan.name, storage_path=str(plan.out), stop=DivergenceStopper(), callbacks=callbacks,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=0), verbose=0),
        )
    results = tuner.fit()
    return _collect(plan, results, tracker, parent, echo, started)


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
    parent = tracker.start_sweep(plan.name, params, tags={"sweep_dir": str(plan.sweep_dir)},
                                 texts={"config.yaml": config_yaml, "space.yaml": space_yaml})
    state = {"version": 1, "name": plan.name, "created": _dt.datetime.now().astimezone().isoformat(),
             "config_file": str(Path(opts.config).resolve()), "base_dir": plan.cfg.base_dir,
             "source": plan.cfg.source, "config": plan.base,
             "space_file": str(Path(opts.space).resolve()),
             "space": {k: a.spec() for k, a in plan.space.axes.items()},
             "sampler": plan.sampler, "samples": plan.samples, "seed": plan.seed, "asha": plan.asha,
             "asha_grace": plan.asha_grace, "asha_rf": plan.asha_rf, "tracking_uri": plan.tracking_uri,
             "experiment": opts.experiment,
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
        return bool(r.get(FINISHED_KEY)) or r.get("verdict") == DIVERGED or bool(r.get("done"))


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
        params = {k: _py(r[k]) for k in plan.space.keys}
        run_id = tracker.trial_run(parent, r["trial_id"], r["name"], params, tags={"stablesweep.sweep": plan.name})
        summary = {k: _py(r[k]) for k in ("objective", "initial_loss", "final_loss", "train_flops", "steps")
                   if _py(r.get(k)) is not None}
        tags = {"node_id": str(r.get("node_id") or ""), "budget_steps": str(_py(r.get("budget_steps")) or ""),
                "optuna_number": str(r.get("optuna_number"))}
        if o.verdict == ERROR and o.reason:
            tags["error"] = o.reason[:5000]
        tracker.finish_trial(run_id, o.verdict, o.reason, o.first_bad_step, summary, tags)


def _py(v: Any) -> Any:
    if v is None:
        return None
    if hasattr(v, "item") and not isinstance(v, str):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


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
