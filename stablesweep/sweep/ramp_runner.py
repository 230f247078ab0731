"""Run the lr ramp: the planner's probes as Tune trials, round by round, logged to MLflow.

Layout, under `--out` (default runs/ramps):

    OUT/mlflow.db                   MLflow store (a parent run per ramp, a child run per probe)
    OUT/NAME/ramp.json, ramp.md     per setting: max stable lr, min diverged lr, recommended lr, probes, compute
    OUT/NAME/ramp.png               each setting's probes on a log-lr axis, coloured by verdict
    OUT/NAME/recommended/<setting>.yaml   a complete config per setting at the recommended lr
    OUT/NAME/tune/round_NNN/        Tune's experiment of each round: probe results and checkpoints

On a cluster the rules are the sweep's (`runner.cluster_checks`): probes run on the worker nodes
and write their checkpoints to Tune's storage themselves, so on more than one node `--out` must
be shared storage (a path declared with `--shared-storage`, or a bucket URI, with the ramp's own
files then under `--local-dir`, Tune's experiments at OUT/NAME/tune). Continue mode warm-starts a
rung from the last stable rung's checkpoint in that storage, wherever either probe ran; a probe
whose node is lost is retried (`--max-failures`) from its last checkpoint.
"""
from __future__ import annotations

import datetime as _dt
import itertools
import json
import math
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from stablesweep.config import ConfigError, load_config
from stablesweep.sweep.ramp import (CLIMBS, LADDERS, RUNNING, Probe, Setting, ladder, next_probes,
                                    seed_from_range_test)
from stablesweep.sweep.runner import (_ephemeral_notes, check_run_options, cluster_checks, storage_paths,
                                      trial_resources, uri_scheme)
from stablesweep.sweep.space import SearchSpace, apply_params, load_space, short_name
from stablesweep.vocab import LR_KEY, SAFETY, InputError

MODES = ("restart", "continue")
DEFAULT_LOCAL_DIR = "runs/ramps"  # the ramp's own files when --out is a bucket URI
VERDICT_COLORS = {"stable": "tab:green", "diverged": "tab:red", "error": "tab:gray"}


@dataclass
class RampOptions:
    config: str
    space: str | None = None
    lr_start: float = 1e-6
    lr_stop: float = 1.0
    ladder: str = "1-2-5"
    climb: str | None = None  # gallop | step (default: gallop in restart mode, step in continue mode)
    resolution: float = 1.25
    parallel: int = 2
    safety: float = SAFETY
    steps: int | None = None
    mode: str = "restart"
    first_pass: str | None = None  # "range-test"
    range_steps: int | None = None  # steps of the range test (default: the probe budget)
    out: str = "runs/ramps"
    mlflow: str | None = None
    address: str | None = None
    name: str | None = None
    overrides: list[str] = field(default_factory=list)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    num_cpus: int | None = None
    experiment: str = "stablesweep"
    evaluate: bool = False  # evaluate each probe at its end (off: the verdict needs no eval)
    # ---- on a cluster (as SweepOptions) ----
    shared_storage: bool = False  # the user declares: the --out path is the same storage on every node
    local_dir: str | None = None  # the ramp's own files when --out is a URI (default runs/ramps)
    max_failures: int | None = None  # retries of a probe (default: 2 on a multi-node cluster, else 0)
    resources_per_trial: dict[str, float] | None = None  # custom Ray resources a probe needs


@dataclass
class RampResult:
    name: str
    ramp_dir: Path
    settings: list[Setting]
    summary: list[dict]
    files: dict[str, Path]
    tracking_uri: str
    parent_run_id: str
    wall_s: float


# ---- planning (no Ray) -----------------------------------------------------------------------

def _settings_from_space(space: SearchSpace | None) -> list[dict[str, Any]]:
    if space is None:
        return [{}]
    keys = space.categorical_keys
    values = [space.axes[k].grid_values(space.where(k)) for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def plan_ramp(opts: RampOptions) -> tuple[dict, Any, list[Setting], list[str]]:
    """Check everything before Ray starts; returns (base raw config, Config, settings, notes)."""
    notes: list[str] = []
    if opts.ladder not in LADDERS:
        raise InputError(f"--ladder {opts.ladder}: expected one of {', '.join(LADDERS)}")
    if not (0 < opts.lr_start < opts.lr_stop):
        raise InputError(f"--lr-start {opts.lr_start} --lr-stop {opts.lr_stop}: need 0 < lr-start < lr-stop")
    if opts.resolution <= 1:
        raise InputError(f"--resolution {opts.resolution}: must be above 1 (1.25: the bracket ends within 25%)")
    if opts.parallel < 1:
        raise InputError(f"--parallel {opts.parallel}: must be at least 1")
    if not (0 < opts.safety <= 1):
        raise InputError(f"--safety {opts.safety}: must be in (0, 1] (recommended lr = safety x the smallest diverged lr)")
    if opts.mode not in MODES:
        raise InputError(f"--mode {opts.mode}: expected restart or continue")
    if opts.climb is not None and opts.climb not in CLIMBS:
        raise InputError(f"--climb {opts.climb}: expected one of {', '.join(CLIMBS)}")
    if opts.first_pass not in (None, "range-test"):
        raise InputError(f"--first-pass {opts.first_pass}: the only first pass is range-test")
    if opts.steps is not None and opts.steps < 1:
        raise InputError(f"--steps {opts.steps}: must be at least 1")
    check_run_options(opts)
    storage_paths(opts.out, opts.local_dir, DEFAULT_LOCAL_DIR)  # refuses a bad --out / --local-dir
    cfg = load_config(opts.config, opts.overrides + ([f"training.steps={opts.steps}"] if opts.steps else []))
    if cfg.training.steps is None:
        raise InputError(f"{opts.config}: the ramp needs a step budget: set training.steps or pass --steps")
    base = cfg.to_dict()
    space = None
    if opts.space:
        space = load_space(opts.space)
        space.validate(cfg)
        ignored = [k for k in space.keys if k != LR_KEY and k not in space.categorical_keys]
        if ignored:
            notes.append(f"the ramp sweeps training.lr itself; continuous axes {', '.join(ignored)} of "
                         f"{opts.space} are left at the config's values")
        if LR_KEY in space.keys:
            notes.append(f"{opts.space}: training.lr is ignored; the ramp runs --lr-start..--lr-stop")
    combos = _settings_from_space(space)
    rungs = ladder(opts.lr_start, opts.lr_stop, opts.ladder)
    settings = []
    for i, params in enumerate(combos):
        try:
            apply_params(base, {**params, LR_KEY: opts.lr_start}, source=cfg.source, base_dir=cfg.base_dir)
        except ConfigError as e:
            raise InputError(f"setting {short_name(params) or 'the config'}: {e}") from None
        settings.append(Setting(key=f"s{i:02d}", params=params, rungs=rungs, climb=climb_of(opts)))
    notes += _ephemeral_notes(opts, DEFAULT_LOCAL_DIR)
    if opts.mode == "continue" and opts.parallel > 1:
        notes.append("continue mode: each setting climbs one rung at a time (each rung starts from the last "
                     "stable one); settings still run in parallel")
    return base, cfg, settings, notes


def ramp_paths(opts: RampOptions, name: str) -> tuple[Path, Path, str]:
    """(the directory for the ramp's own files, the ramp's directory in it, Tune's storage for its
    rounds): OUT/NAME and OUT/NAME/tune for a path --out; --local-dir/NAME and OUT_URI/NAME/tune for
    a URI --out."""
    out, storage = storage_paths(opts.out, opts.local_dir, DEFAULT_LOCAL_DIR)
    ramp_dir = out / name
    return out, ramp_dir, (str(ramp_dir / "tune") if uri_scheme(opts.out) is None else f"{storage}/{name}/tune")


def climb_of(opts: RampOptions) -> str:
    """--climb, or its default: gallop when probes train from scratch, every rung in continue mode
    (where each rung starts from the last stable one, the user's raise-it-step-by-step)."""
    return opts.climb or ("step" if opts.mode == "continue" else "gallop")


# ---- the trial ----------------------------------------------------------------------------------

def ramp_probe(config: dict[str, Any], *, base: dict, base_dir: str, source: str, evaluate: bool) -> None:
    """One probe in a Ray worker: a short real training run at one lr (or an lr range test)."""
    import ray
    from ray import tune

    from stablesweep.vocab import FINISHED
    from stablesweep.sweep.trainable import trial_device
    from stablesweep.train import run_training

    req = config["probe"]
    params = dict(req["params"])
    params[LR_KEY] = req["lr"]
    params["training.steps"] = req["steps"]
    if req["phase"] == "range-test":
        params.update({"training.schedule": "exponential", "training.lr_final": req["lr_final"],
                       "training.warmup_steps": 0})
    if not evaluate:
        params["datasets.skip_evaluation"] = True
    cfg = apply_params(base, params, source=source, base_dir=base_dir)
    node_id = ray.get_runtime_context().get_node_id()
    device = trial_device()
    work = tempfile.mkdtemp(prefix="stablesweep-probe-")

    def report(metrics: dict, checkpoint: str | None) -> None:
        m = dict(metrics)
        m[FINISHED] = bool(m.pop("done", False))
        m.update(node_id=node_id, device=device)
        tune.report(m, checkpoint=tune.Checkpoint.from_directory(checkpoint) if checkpoint else None)

    try:
        resume_from, warm = None, False
        restored = tune.get_checkpoint()
        if restored is not None:  # a retry (its node was lost): go on from this probe's own last state
            resume_from = restored.to_directory(f"{work}/restored")
        elif req.get("warm_from"):  # continue mode: from the last stable rung's checkpoint, in Tune's storage
            resume_from, warm = tune.Checkpoint(req["warm_from"]).to_directory(f"{work}/warm"), True
        # checkpoints only where something reads them: the next rung (continue mode), a retry (a cluster)
        run_training(cfg, report=report, device=device,
                     checkpoint_dir=f"{work}/checkpoints" if req.get("checkpoints") else None,
                     resume_from=resume_from, warm_start=warm)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---- the loop -----------------------------------------------------------------------------------

def run_ramp(opts: RampOptions, echo: Callable[[str], None] = print) -> RampResult:
    import ray

    from stablesweep.sweep.runner import _init_ray, _quiet_tune
    from stablesweep.tracking import KIND_TAG, Tracker, default_tracking_uri

    base, cfg, settings, notes = plan_ramp(opts)
    started = time.time()
    name = opts.name or f"{Path(opts.config).stem}-ramp-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise InputError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only")
    out, ramp_dir, storage = ramp_paths(opts, name)
    if ramp_dir.exists() and any(ramp_dir.iterdir()):
        raise InputError(f"--name {name}: {ramp_dir} already holds a ramp; choose another --name or --out")
    for n in notes:
        echo(f"note: {n}")
    _quiet_tune()
    started_ray = _init_ray(opts)
    try:
        max_concurrent, max_failures, shape = cluster_checks(opts)  # before anything is written
        ramp_dir.mkdir(parents=True, exist_ok=True)
        uri = opts.mlflow or default_tracking_uri(out)
        tracker = Tracker(uri, experiment=opts.experiment)
        budget = cfg.training.steps
        params = {"lr_start": opts.lr_start, "lr_stop": opts.lr_stop, "ladder": opts.ladder,
                  "climb": climb_of(opts), "resolution": opts.resolution, "parallel": opts.parallel,
                  "safety": opts.safety,
                  "mode": opts.mode, "first_pass": opts.first_pass or "none", "budget_steps": budget,
                  "settings": len(settings), "config_file": str(Path(opts.config).resolve()),
                  "space_file": str(Path(opts.space).resolve()) if opts.space else "none"}
        parent = tracker.start_sweep(name, params, tags={"sweep_dir": str(ramp_dir)},
                                     texts={"config.yaml": yaml.safe_dump(base, sort_keys=False)})
        tracker.client.set_tag(parent, KIND_TAG, "ramp")
        echo(f"ramp {name}: {len(settings)} setting(s), lr {opts.lr_start:.1e}..{opts.lr_stop:.1e} on the "
             f"{opts.ladder} ladder ({climb_of(opts)} climb), resolution {opts.resolution}, {opts.parallel} "
             f"probe(s) a setting at once, {opts.mode} mode, budget {budget} steps a probe")
        if shape.n_nodes > 1 or storage != str(ramp_dir / "tune"):
            echo(f"cluster: {shape.n_nodes} nodes; Tune's storage {storage}; the ramp's files in {ramp_dir}; "
                 f"a failed probe is retried {max_failures} time{'s' if max_failures != 1 else ''}"
                 + (" from its checkpoint" if max_failures else ""))
        runner = _Rounds(opts, base, cfg, ramp_dir, tracker, parent, echo, max_concurrent=max_concurrent,
                         max_failures=max_failures, storage=storage)
        runner.run(settings)
        summary = [s.summary(opts.safety) for s in settings]
        files = write_ramp(settings, summary, opts, base, cfg, ramp_dir, name)
        total_probes = sum(x["probes"] for x in summary)
        tracker.end_sweep(parent, {"probes": float(total_probes),
                                   "train_flops": float(sum(x["train_flops"] for x in summary)),
                                   "compute_s": float(sum(x["compute_s"] for x in summary))},
                          tags={"budget_steps": str(budget)}, artifacts=list(files.values()))
        echo(format_table(summary, budget))
        echo(f"files: {ramp_dir}  (ramp.json, ramp.md, ramp.png, recommended/)")
        from stablesweep.tracking import ui_command

        echo(f"MLflow: {ui_command(uri)}")
        return RampResult(name, ramp_dir, settings, summary, files, uri, parent, time.time() - started)
    finally:
        if started_ray:
            ray.shutdown()


class _Rounds:
    """Round by round: every running setting's next probes, all as one Tune experiment."""

    def __init__(self, opts: RampOptions, base: dict, cfg, ramp_dir: Path, tracker, parent: str,
                 echo: Callable[[str], None], *, max_concurrent: int, max_failures: int = 0, storage: str):
        self.opts, self.base, self.cfg, self.dir = opts, base, cfg, ramp_dir
        self.tracker, self.parent, self.echo = tracker, parent, echo
        self.max_concurrent, self.max_failures, self.storage = max_concurrent, max_failures, storage
        self.round = 0
        self.per_setting = 1 if opts.mode == "continue" else opts.parallel
        self.budget = cfg.training.steps

    def run(self, settings: list[Setting]) -> None:
        todo: dict[str, list[tuple[float, str]]] = {}
        if self.opts.first_pass == "range-test":
            rt_steps = self.opts.range_steps or self.budget
            reqs = [self._request(s, self.opts.lr_start, "range-test", steps=rt_steps) for s in settings]
            for s, probe in zip(settings, self._execute(reqs, settings)):
                probe.lr = self.opts.lr_start
                todo[s.key] = seed_from_range_test(s, probe, self.opts.lr_start, self.opts.lr_stop, rt_steps,
                                                   self.per_setting)
                where = (f"blew up at step {probe.first_bad_step}" if probe.verdict == "diverged"
                         else "never diverged")
                self.echo(f"  range test {short_name(s.params) or 'config'}: {where}; verifying "
                          + ", ".join(f"{lr:.2e}" for lr, _ in todo[s.key]))
        else:
            todo = {s.key: next_probes(s, self.per_setting, self.opts.resolution) for s in settings}
        while any(todo.values()):
            reqs, owners = [], []
            for s in settings:
                for lr, phase in todo.get(s.key, []):
                    reqs.append(self._request(s, lr, phase))
                    owners.append(s)
            for s, probe in zip(owners, self._execute(reqs, owners)):
                s.probes.append(probe)
            todo = {s.key: next_probes(s, self.per_setting, self.opts.resolution) for s in settings}
            for s in settings:
                if s.status != RUNNING and not getattr(s, "_announced", False):
                    s._announced = True  # type: ignore[attr-defined]
                    self.echo(f"  done {short_name(s.params) or 'config'}: {s.status}, max stable "
                              f"{_fmt(s.max_stable)}, min diverged {_fmt(s.min_diverged)}, {len(s.probes)} probes")

    def _request(self, s: Setting, lr: float, phase: str, steps: int | None = None) -> dict:
        req: dict[str, Any] = {"setting": s.key, "params": s.params, "lr": float(lr), "phase": phase,
                               "steps": steps or self.budget, "start_step": 0,
                               "checkpoints": self.max_failures > 0 or self.opts.mode == "continue"}
        if phase == "range-test":
            req["lr_final"] = self.opts.lr_stop
        elif self.opts.mode == "continue":
            warm = s.last_stable_probe()
            if warm is not None and warm.checkpoint:
                req["warm_from"] = warm.checkpoint
                req["start_step"] = warm.steps
                req["steps"] = warm.steps + self.budget
        return req

    def _execute(self, reqs: list[dict], owners: list[Setting]) -> list[Probe]:
        from ray import tune

        from stablesweep.sweep.stopper import DivergenceStopper

        self.round += 1
        self.echo(f"round {self.round}: {len(reqs)} probe(s): "
                  + "; ".join(f"{short_name(r['params']) or 'config'} lr {r['lr']:.2e}" for r in reqs))
        trainable = tune.with_resources(
            tune.with_parameters(ramp_probe, base=self.base, base_dir=self.cfg.base_dir, source=self.cfg.source,
                                 evaluate=self.opts.evaluate),
            trial_resources(self.opts))
        tuner = tune.Tuner(
            trainable, param_space={"probe": tune.grid_search(reqs)},
            tune_config=tune.TuneConfig(max_concurrent_trials=self.max_concurrent, reuse_actors=True),
            run_config=tune.RunConfig(name=f"round_{self.round:03d}", storage_path=self.storage,
                                      stop=DivergenceStopper(), verbose=0,
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                      failure_config=tune.FailureConfig(max_failures=self.max_failures)))
        results = tuner.fit()
        by_key = {}
        for r in results:
            req = r.config["probe"]
            by_key[(req["setting"], req["lr"], req["phase"])] = r
        probes = []
        for req, s in zip(reqs, owners):
            r = by_key[(req["setting"], req["lr"], req["phase"])]
            m = r.metrics or {}
            if r.error is not None or "verdict" not in m:
                probe = Probe(req["lr"], "error", phase=req["phase"], reason=str(r.error)[:200] if r.error else None)
            else:
                probe = Probe(req["lr"], m["verdict"], m.get("reason"), int(m.get("first_bad_step", -1)),
                              int(m.get("step", 0)), float(m.get("train_flops", 0.0)),
                              float(m.get("time_total_s", 0.0)), req["phase"], float(m.get("objective", math.nan)),
                              start_step=req.get("start_step", 0),
                              checkpoint=self._uri(r.checkpoint) if m["verdict"] == "stable" else None,
                              trial_id=m.get("trial_id"), node_id=m.get("node_id"))
            probes.append(probe)
            self._log(s, probe, m)
            self.echo(f"    {short_name(s.params) or 'config'} lr {probe.lr:.2e} [{probe.phase}]: {probe.verdict}"
                      + (f" ({probe.reason} at step {probe.first_bad_step})" if probe.verdict == "diverged" else "")
                      + (f" steps {probe.start_step}->{probe.steps}" if probe.start_step else ""))
        return probes

    def _uri(self, checkpoint) -> str | None:
        """Where a probe's last checkpoint lies, as a path or URI any node can open: Tune gives a
        path on its storage's filesystem; a bucket's needs its scheme back."""
        if checkpoint is None:
            return None
        scheme = uri_scheme(self.storage)
        return f"{scheme}://{checkpoint.path}" if scheme else checkpoint.path

    def _log(self, s: Setting, probe: Probe, m: dict) -> None:
        params = {**s.params, LR_KEY: probe.lr, "phase": probe.phase}
        run_name = f"{short_name({**s.params, LR_KEY: probe.lr})} {probe.phase}"
        trial_id = f"{s.key}-{probe.phase}-{probe.lr:.6e}"
        run = self.tracker.trial_run(self.parent, trial_id, run_name, params,
                                     tags={"setting": s.key, "node_id": probe.node_id or ""})
        numeric = {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and k not in ("first_bad_step", "step", "time_this_iter_s", "timestamp", "pid",
                                 "training_iteration", "time_since_restore", "iterations_since_restore")}
        summary = {**numeric, "steps": probe.steps, "train_flops": probe.train_flops}
        self.tracker.finish_trial(run, probe.verdict, probe.reason, probe.first_bad_step, summary)


# ---- outputs ------------------------------------------------------------------------------------

def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def format_table(summary: list[dict], budget: int) -> str:
    head = ["setting", "status", "max stable lr", "min diverged lr", "recommended lr", "probes", "compute s",
            "train FLOPs"]
    rows = [[short_name(x["params"]) or "config", x["status"], _fmt(x["max_stable_lr"]),
             _fmt(x["min_diverged_lr"]), _fmt(x["recommended_lr"]), str(x["probes"]), f"{x['compute_s']:.1f}",
             f"{x['train_flops']:.3g}"] for x in summary]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = [f"largest stable lr per setting (budget {budget} steps a probe)",
             "  ".join(h.ljust(w) for h, w in zip(head, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


STATUS_TEXT = {
    "bracketed": "bracketed",
    "never_diverged": "never diverged up to --lr-stop",
    "diverged_at_start": "diverged already at --lr-start",
    "error": "a probe crashed",
    "running": "unfinished",
}


def write_ramp(settings: list[Setting], summary: list[dict], opts: RampOptions, base: dict, cfg, ramp_dir: Path,
               name: str) -> dict[str, Path]:
    from stablesweep.config import set_dotted

    files: dict[str, Path] = {}
    budget = cfg.training.steps
    doc = {"kind": "ramp", "name": name, "config": str(Path(opts.config).resolve()),
           "space": str(Path(opts.space).resolve()) if opts.space else None,
           "lr_start": opts.lr_start, "lr_stop": opts.lr_stop, "ladder": opts.ladder, "climb": climb_of(opts),
           "resolution": opts.resolution, "safety": opts.safety, "mode": opts.mode,
           "first_pass": opts.first_pass, "budget_steps": budget,
           "note": f"every verdict holds for a budget of {budget} steps a probe",
           "settings": summary}
    files["ramp.json"] = ramp_dir / "ramp.json"
    files["ramp.json"].write_text(json.dumps(doc, indent=2, default=str) + "\n")
    md = [f"# lr ramp {name}", "", f"Budget: {budget} steps a probe ({opts.mode} mode); ladder {opts.ladder} "
          f"({climb_of(opts)} climb) from "
          f"{opts.lr_start:g} to {opts.lr_stop:g}; resolution {opts.resolution}; recommended = min(max stable, "
          f"{opts.safety} x min diverged), or {opts.safety} x max stable where none diverged.", "",
          "| setting | status | max stable lr | min diverged lr | recommended lr | probes | compute s | train FLOPs |",
          "|---|---|---|---|---|---|---|---|"]
    for x in summary:
        md.append(f"| {short_name(x['params']) or 'config'} | {STATUS_TEXT.get(x['status'], x['status'])} | "
                  f"{_fmt(x['max_stable_lr'])} | {_fmt(x['min_diverged_lr'])} | {_fmt(x['recommended_lr'])} | "
                  f"{x['probes']} | {x['compute_s']:.1f} | {x['train_flops']:.3g} |")
    files["ramp.md"] = ramp_dir / "ramp.md"
    files["ramp.md"].write_text("\n".join(md) + "\n")
    rec_dir = ramp_dir / "recommended"
    rec_dir.mkdir(exist_ok=True)
    for s, x in zip(settings, summary):
        if x["recommended_lr"] is None:
            continue
        raw = json.loads(json.dumps(base))
        for k, v in s.params.items():
            set_dotted(raw, k, v)
        set_dotted(raw, LR_KEY, float(f"{x['recommended_lr']:.3g}"))
        header = (f"# recommended by `stablesweep ramp` ({name}): lr = {x['recommended_lr']:.3g}, at most {opts.safety} x "
                  f"the smallest diverged lr {_fmt(x['min_diverged_lr'])}\n# (largest stable: {x['max_stable_lr']:.3g}; "
                  f"{opts.safety} x it where none diverged), measured with "
                  f"a budget of {budget} steps a probe; stability may not hold for longer runs.\n")
        path = rec_dir / f"{s.key}.yaml"
        path.write_text(header + yaml.safe_dump(raw, sort_keys=False))
        files[f"recommended/{s.key}.yaml"] = path
    files["ramp.png"] = plot_ramp(settings, summary, ramp_dir / "ramp.png", budget)
    return files


def plot_ramp(settings: list[Setting], summary: list[dict], path: Path, budget: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 0.6 * len(settings) + 1.6))
    for i, (s, x) in enumerate(zip(settings, summary)):
        for p in s.tested:
            ax.scatter(p.lr, i, color=VERDICT_COLORS.get(p.verdict, "k"), marker="o" if p.phase != "bisect" else "D",
                       s=36, zorder=3)
        if x["max_stable_lr"] and x["min_diverged_lr"]:
            ax.plot([x["max_stable_lr"], x["min_diverged_lr"]], [i, i], color="k", lw=3, alpha=0.4, zorder=2)
        if x["recommended_lr"]:
            ax.scatter(x["recommended_lr"], i, marker="*", color="tab:blue", s=110, zorder=4)
    ax.set_xscale("log")
    ax.set_yticks(range(len(settings)), [short_name(s.params) or "config" for s in settings])
    ax.set_xlabel("learning rate")
    ax.set_title(f"lr ramp: probes per setting (budget {budget} steps)")
    from matplotlib.lines import Line2D

    seen = {p.verdict for s in settings for p in s.tested}
    handles = [Line2D([], [], marker="o", ls="", color=c, label=v) for v, c in VERDICT_COLORS.items() if v in seen]
    handles.append(Line2D([], [], marker="D", ls="", color="k", label="bisection probe"))
    handles.append(Line2D([], [], marker="*", ls="", color="tab:blue", markersize=10, label="recommended"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.grid(True, which="both", axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
