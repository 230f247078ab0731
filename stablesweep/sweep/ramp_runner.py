"""Run the lr ramp: the planner's probes as Tune trials, round by round, logged to MLflow.

Layout, under `--out` (default runs/ramps):

    OUT/mlflow.db                   MLflow store (a parent run per ramp, a child run per probe; runs/mlflow.db for the default OUT)
    OUT/NAME/ramp.json, ramp.md     per setting: the stable band, min diverged lr, min failed lr (diverged or
                                    stalled above the band), the stalls, recommended lr, probes, compute
    OUT/NAME/ramp.png               each setting's probes on a log-lr axis, coloured by verdict
    OUT/NAME/ramp_boundary.png      with --replicates: P(fails | lr) per setting, points at the replicates
    OUT/NAME/recommended/<setting>.yaml   a complete config per setting at the recommended lr
    OUT/NAME/tune/round_NNN/        Tune's experiment of each round: probe results and checkpoints

On a cluster the rules are the sweep's (`cluster.cluster_checks`): probes run on the worker nodes
and write their checkpoints to Tune's storage themselves, so on more than one node `--out` must
be shared storage (a path declared with `--shared-storage`, or a bucket URI, with the ramp's own
files then under `--local-dir`, Tune's experiments at OUT/NAME/tune). Continue mode warm-starts a
rung from the last stable rung's checkpoint in that storage, wherever either probe ran; a probe
whose node is lost is retried (`--max-failures`) from its last checkpoint.
"""
from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from stablesweep.analysis.answer import (
    RAMP_MD_COLUMNS,
    RAMP_TEXT_COLUMNS,
    RAMP_WORDS,
    SettingAnswer,
    answers_markdown,
    answers_text,
    boundary_markdown,
    boundary_text,
)
from stablesweep.analysis.text import sig3_text
from stablesweep.cluster.storage import storage_paths, uri_scheme
from stablesweep.config import ConfigError, load_config
from stablesweep.sweep.options import RampOptions
from stablesweep.sweep.placement import check_run_options, cluster_checks, ephemeral_path_notes
from stablesweep.sweep.ramp import (
    CLIMBS,
    LADDERS,
    RUNNING,
    SAMPLE,
    Probe,
    Setting,
    boundary_runs,
    ladder,
    next_probes,
    replicate_probes,
    sample_lrs,
    seed_from_range_test,
)
from stablesweep.sweep.space import SearchSpace, apply_params, load_space
from stablesweep.vocab import (
    BUDGET_STEPS,
    DIVERGED,
    ERROR,
    FIRST_BAD_STEP,
    FLOPS_PER_STEP,
    HISTORY,
    INITIAL_LOSS,
    LR_KEY,
    OBJECTIVE,
    REASON,
    REPLICATE,
    SEED_KEY,
    STABLE,
    STEP,
    STEPS,
    TRAIN_FLOPS,
    VERDICT,
    InputError,
    short_name,
)

MODES = ("restart", "continue")


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
    answers: list[SettingAnswer] = field(default_factory=list)  # per setting, as `summary`


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
    if opts.replicates < 0:
        raise InputError(f"--replicates {opts.replicates}: must be at least 0 (0: no replicates)")
    if opts.steps is not None and opts.steps < 1:
        raise InputError(f"--steps {opts.steps}: must be at least 1")
    check_run_options(opts)
    storage_paths(opts.out, opts.local_dir, opts.DEFAULT_DIR)  # refuses a bad --out / --local-dir
    cfg = load_config(opts.config, opts.config_overrides())
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
    from stablesweep.data import build_data  # torch: once every cheaper check has passed

    build_data(cfg)  # train's (and data check's) pre-flight: a data problem named here, not in every probe
    notes += ephemeral_path_notes(opts)
    if opts.mode == "continue" and opts.parallel > 1:
        notes.append("continue mode: each setting climbs one rung at a time (each rung starts from the last "
                     "stable one); settings still run in parallel")
    return base, cfg, settings, notes


def ramp_paths(opts: RampOptions, name: str) -> tuple[Path, Path, str]:
    """(the directory for the ramp's own files, the ramp's directory in it, Tune's storage for its
    rounds): OUT/NAME and OUT/NAME/tune for a path --out; --local-dir/NAME and OUT_URI/NAME/tune for
    a URI --out."""
    out, storage = storage_paths(opts.out, opts.local_dir, opts.DEFAULT_DIR)
    ramp_dir = out / name
    return out, ramp_dir, (str(ramp_dir / "tune") if uri_scheme(opts.out) is None else f"{storage}/{name}/tune")


def climb_of(opts: RampOptions) -> str:
    """--climb, or its default: gallop when probes train from scratch, every rung in continue mode
    (where each rung starts from the last stable one, the user's raise-it-step-by-step)."""
    return opts.climb or ("step" if opts.mode == "continue" else "gallop")


# ---- the loop -----------------------------------------------------------------------------------

def run_ramp(opts: RampOptions, echo: Callable[[str], None] = print) -> RampResult:
    base, cfg, settings, notes = plan_ramp(opts)
    started = time.time()
    name = opts.run_name("ramp")
    out, ramp_dir, storage = ramp_paths(opts, name)
    if ramp_dir.exists() and any(ramp_dir.iterdir()):
        raise InputError(f"--name {name}: {ramp_dir} already holds a ramp; choose another --name or --out")
    # Ray, torch, MLflow and matplotlib only once the plan's checks have passed (a refusal in milliseconds)
    from stablesweep.analysis.boundary import fit_boundary
    from stablesweep.analysis.plots import boundary_data, plot_boundary
    from stablesweep.sweep.session import ray_session
    from stablesweep.tracking import Tracker, create_store, stable_trials_link, ui_command

    for n in notes:
        echo(f"note: {n}")
    with ray_session(opts):
        max_concurrent, max_failures, shape = cluster_checks(opts)  # before anything is written
        ramp_dir.mkdir(parents=True, exist_ok=True)
        uri = opts.mlflow or opts.default_tracking_uri(out)
        create_store(uri)
        tracker = Tracker(uri, experiment=opts.experiment)
        budget = cfg.training.steps
        params = {"lr_start": opts.lr_start, "lr_stop": opts.lr_stop, "ladder": opts.ladder,
                  "climb": climb_of(opts), "resolution": opts.resolution, "parallel": opts.parallel,
                  "safety": opts.safety,
                  "mode": opts.mode, "first_pass": opts.first_pass or "none", BUDGET_STEPS: budget,
                  "settings": len(settings), "config_file": str(Path(opts.config).resolve()),
                  "space_file": str(Path(opts.space).resolve()) if opts.space else "none"}
        parent = tracker.start_sweep(name, params, tags={"sweep_dir": str(ramp_dir)},
                                     texts={"config.yaml": yaml.safe_dump(base, sort_keys=False)}, kind="ramp")
        echo(f"ramp {name}: {len(settings)} setting(s), lr {opts.lr_start:.1e}..{opts.lr_stop:.1e} on the "
             f"{opts.ladder} ladder ({climb_of(opts)} climb), resolution {opts.resolution}, {opts.parallel} "
             f"probe(s) a setting at once, {opts.mode} mode, budget {budget} steps a probe")
        if shape.n_nodes > 1 or storage != str(ramp_dir / "tune"):
            echo(f"cluster: {shape.n_nodes} nodes; Tune's storage {storage}; the ramp's files in {ramp_dir}; "
                 f"a failed probe is retried {max_failures} time{'s' if max_failures != 1 else ''}"
                 + (" from its checkpoint" if max_failures else ""))
        runner = _Rounds(opts, cfg, tracker, parent, echo, max_concurrent=max_concurrent,
                         max_failures=max_failures, storage=storage)
        runner.run(settings)
        fits = None
        if opts.replicates:
            runner.replicate(settings, opts.replicates, cfg.training.seed)
            fits = [fit_boundary(boundary_runs(s, cfg.training.seed)) for s in settings]
        if opts.samples:  # the best-training lr below each edge, then the fit again over every probe
            runner.sample(settings, opts.samples, [f[0].lr_at_risk for f in fits] if fits else None)
            if fits:
                fits = [fit_boundary(boundary_runs(s, cfg.training.seed)) for s in settings]
        bounds = [fits[i][0].to_dict() if fits else None for i in range(len(settings))]
        answers = [s.answer(opts.safety, b) for s, b in zip(settings, bounds)]
        summary = [s.summary(opts.safety, b) for s, b in zip(settings, bounds)]
        files = write_ramp(settings, answers, summary, opts, base, cfg, ramp_dir, name)
        if fits:
            files["ramp_boundary.png"] = plot_boundary(
                boundary_data([a.label for a in answers], fits),
                ramp_dir / "ramp_boundary.png", budget)
        total_probes = sum(x["probes"] for x in summary)
        tracker.end_sweep(parent, {"probes": float(total_probes),
                                   TRAIN_FLOPS: float(sum(x[TRAIN_FLOPS] for x in summary)),
                                   "compute_s": float(sum(x["compute_s"] for x in summary))},
                          tags={BUDGET_STEPS: str(budget)}, artifacts=list(files.values()))
        tracker.log_setting_metrics(parent, (a.setting_metrics() for a in answers))
        for s, lr, run in runner.runs:  # as a sweep's trials: lr over the setting's smallest diverged lr
            tracker.set_margin(run, lr / s.min_diverged if s.min_diverged else None)
        echo(f"largest stable lr per setting (budget {budget} steps a probe)\n"
             + answers_text(answers, RAMP_TEXT_COLUMNS))
        if fits:
            echo(boundary_text(answers, RAMP_WORDS))
        echo(f"files: {ramp_dir}  (ramp.json, ramp.md, ramp.png, recommended/)")
        echo(f"MLflow: {ui_command(uri)}")
        link = stable_trials_link(uri, parent, params=[LR_KEY, *(settings[0].params if settings else {})])
        if link:
            echo(f"  the stable probes, best first: {link}")
        return RampResult(name, ramp_dir, settings, summary, files, uri, parent, time.time() - started, answers)


@dataclass
class _Request:
    """One probe to run: its setting, lr and phase, and its trial's config."""

    setting: Setting
    lr: float
    phase: str
    config: dict[str, Any]  # the trial config of `trainable.run_trial`: dotted config keys (and WARM_START)
    start_step: int = 0  # continue mode: the step its warm start begins at


def _config_key(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, default=str)


class _Rounds:
    """Round by round: every running setting's next probes, all as one Tune experiment."""

    def __init__(self, opts: RampOptions, cfg, tracker, parent: str, echo: Callable[[str], None], *,
                 max_concurrent: int, max_failures: int = 0, storage: str):
        self.opts, self.tracker, self.parent, self.echo = opts, tracker, parent, echo
        self.max_concurrent, self.max_failures, self.storage = max_concurrent, max_failures, storage
        self.round = 0
        self.runs: list[tuple[Setting, float, str]] = []  # each probe's setting, lr and MLflow run
        self.per_setting = 1 if opts.mode == "continue" else opts.parallel
        self.budget = cfg.training.steps
        from stablesweep.sweep.session import trial_trainable

        # checkpoints only where something reads them: the next rung (continue mode), a retry (a cluster)
        self.trainable = trial_trainable(cfg, opts, checkpoints=max_failures > 0 or opts.mode == "continue")

    def run(self, settings: list[Setting]) -> None:
        todo: dict[str, list[tuple[float, str]]] = {}
        if self.opts.first_pass == "range-test":
            rt_steps = self.opts.range_steps or self.budget
            reqs = [self._request(s, self.opts.lr_start, "range-test", steps=rt_steps) for s in settings]
            for s, probe in zip(settings, self._execute(reqs)):
                probe.lr = self.opts.lr_start
                todo[s.key] = seed_from_range_test(s, probe, self.opts.lr_start, self.opts.lr_stop, rt_steps,
                                                   self.per_setting)
                where = (f"blew up at step {probe.first_bad_step}" if probe.verdict == DIVERGED
                         else "never diverged")
                self.echo(f"  range test {short_name(s.params) or 'config'}: {where}; verifying "
                          + ", ".join(f"{lr:.2e}" for lr, _ in todo[s.key]))
        else:
            todo = {s.key: next_probes(s, self.per_setting, self.opts.resolution) for s in settings}
        announced: set[str] = set()
        while any(todo.values()):
            reqs = [self._request(s, lr, phase) for s in settings for lr, phase in todo.get(s.key, [])]
            for req, probe in zip(reqs, self._execute(reqs)):
                req.setting.probes.append(probe)
            todo = {s.key: next_probes(s, self.per_setting, self.opts.resolution) for s in settings}
            for s in settings:
                if s.status != RUNNING and s.key not in announced:
                    announced.add(s.key)
                    self.echo(f"  done {short_name(s.params) or 'config'}: {s.status}, max stable "
                              f"{sig3_text(s.max_stable)}, min failed {sig3_text(s.min_failed)}, {len(s.probes)} probes")

    def replicate(self, settings: list[Setting], k: int, base_seed: int) -> None:
        """K seeds at the lrs around each bracketed setting's boundary, in one round, from scratch."""
        reqs = []
        for s in settings:
            for lr, seed in replicate_probes(s, k, base_seed):
                req = self._request(s, lr, REPLICATE)
                req.config[SEED_KEY] = seed
                reqs.append(req)
        if not reqs:
            return
        for req, probe in zip(reqs, self._execute(reqs)):
            req.setting.probes.append(probe)

    def sample(self, settings: list[Setting], k: int, at_risk: list[float | None] | None) -> None:
        """K lrs below each setting's largest safe lr (`ramp.sample_lrs`), in one round, from scratch."""
        reqs = [self._request(s, lr, SAMPLE) for i, s in enumerate(settings)
                for lr in sample_lrs(s, k, self.opts.safety, at_risk[i] if at_risk else None)]
        if reqs:
            for req, probe in zip(reqs, self._execute(reqs)):
                req.setting.probes.append(probe)

    def _request(self, s: Setting, lr: float, phase: str, steps: int | None = None) -> _Request:
        config: dict[str, Any] = {**s.params, LR_KEY: float(lr), "training.steps": steps or self.budget}
        start_step = 0
        if phase in (REPLICATE, SAMPLE):
            pass  # from scratch, whatever the mode: replicates and samples are independent runs
        elif phase == "range-test":
            config.update({"training.schedule": "exponential", "training.lr_final": self.opts.lr_stop,
                           "training.warmup_steps": 0})
        elif self.opts.mode == "continue":  # from the last stable rung's checkpoint, in Tune's storage
            from stablesweep.sweep.trainable import WARM_START

            warm = s.last_stable_probe()
            if warm is not None and warm.checkpoint:
                config[WARM_START] = warm.checkpoint
                config["training.steps"] = warm.steps + self.budget
                start_step = warm.steps
        if not self.opts.evaluate:
            config["datasets.skip_evaluation"] = True
        return _Request(s, float(lr), phase, config, start_step)

    def _execute(self, reqs: list[_Request]) -> list[Probe]:
        from stablesweep.sweep.session import ListedSearcher, make_tuner

        self.round += 1
        self.echo(f"round {self.round}: {len(reqs)} probe(s): "
                  + "; ".join(f"{short_name(r.setting.params) or 'config'} lr {r.lr:.2e}" for r in reqs))
        tuner = make_tuner(self.trainable, name=f"round_{self.round:03d}", storage=self.storage,
                           search_alg=ListedSearcher([r.config for r in reqs]), num_samples=len(reqs),
                           max_concurrent=self.max_concurrent, max_failures=self.max_failures)
        results = {_config_key(r.config): r for r in tuner.fit()}
        probes = []
        for req in reqs:
            r = results[_config_key(req.config)]
            m = r.metrics or {}
            if r.error is not None or VERDICT not in m:
                probe = Probe(req.lr, ERROR, phase=req.phase, reason=str(r.error)[:200] if r.error else None)
            else:
                bad = m.get(FIRST_BAD_STEP)  # None (Tune's rows hold no -1) until a step went bad
                probe = Probe(req.lr, m[VERDICT], m.get(REASON), -1 if bad is None else int(bad),
                              int(m.get(STEP, 0)), float(m.get(TRAIN_FLOPS, 0.0)),
                              float(m.get("time_total_s", 0.0)), req.phase, float(m.get(OBJECTIVE, math.nan)),
                              start_step=req.start_step,
                              checkpoint=self._uri(r.checkpoint) if m[VERDICT] == STABLE else None,
                              trial_id=m.get("trial_id"), node_id=m.get("node_id"))
            probe.seed = req.config.get(SEED_KEY)
            probes.append(probe)
            s = req.setting
            self._log(s, probe, m, r)
            self.echo(f"    {short_name(s.params) or 'config'} lr {probe.lr:.2e} [{probe.phase}]: {probe.verdict}"
                      + (f" ({probe.reason} at step {probe.first_bad_step})" if probe.verdict == DIVERGED else "")
                      + (f" steps {probe.start_step}->{probe.steps}" if probe.start_step else ""))
        return probes

    def _uri(self, checkpoint) -> str | None:
        """Where a probe's last checkpoint lies, as a path or URI any node can open: Tune gives a
        path on its storage's filesystem; a bucket's needs its scheme back."""
        if checkpoint is None:
            return None
        scheme = uri_scheme(self.storage)
        return f"{scheme}://{checkpoint.path}" if scheme else checkpoint.path

    def _log(self, s: Setting, probe: Probe, m: dict, result) -> None:
        """A probe's child run, logged after its round: its params, setting and sweep tags, every
        report at its step and time, a divergence's last steps, its true start and end (its
        `lr_margin` once the ramp is done: `run_ramp`)."""
        from stablesweep.tracking import trial_metrics

        params = {**s.params, LR_KEY: probe.lr, "phase": probe.phase}
        run_name = f"{short_name({**s.params, LR_KEY: probe.lr})} {probe.phase}"
        trial_id = f"{s.key}-{probe.phase}-{probe.lr:.6e}"
        if probe.seed is not None:
            params[SEED_KEY] = probe.seed
            run_name += f" seed {probe.seed}"
            trial_id += f"-seed{probe.seed}"
        ended = m.get("timestamp")
        started = ended - float(m.get("time_total_s", 0.0)) if isinstance(ended, (int, float)) else None
        run = self.tracker.trial_run(self.parent, trial_id, run_name, params, tags={"node_id": probe.node_id} if probe.node_id else {},
                                     setting=s.params, started_at=started)
        reports = getattr(result, "metrics_dataframe", None)
        for _, row in (reports.iterrows() if reports is not None else ()):
            if isinstance(row.get(STEP), (int, float)):
                self.tracker.log_trial_metrics(run, trial_metrics(row, core=True), int(row[STEP]),
                                               timestamp=row.get("timestamp"))
        if m.get(HISTORY):
            self.tracker.log_trial_history(run, m[HISTORY], probe.first_bad_step)
        summary = {k: m[k] for k in (OBJECTIVE, INITIAL_LOSS, FLOPS_PER_STEP, BUDGET_STEPS)
                   if isinstance(m.get(k), (int, float))}
        summary.update({STEPS: probe.steps, TRAIN_FLOPS: probe.train_flops})
        self.tracker.finish_trial(run, probe.verdict, probe.reason, probe.first_bad_step, summary,
                                  ended_at=ended if isinstance(ended, (int, float)) else None)
        self.runs.append((s, probe.lr, run))


# ---- outputs ------------------------------------------------------------------------------------

def write_ramp(settings: list[Setting], answers: list[SettingAnswer], summary: list[dict], opts: RampOptions,
               base: dict, cfg, ramp_dir: Path, name: str) -> dict[str, Path]:
    """ramp.json (`summary`), ramp.md, recommended/<setting>.yaml and ramp.png."""
    from stablesweep.analysis.plots import plot_ramp, ramp_data
    from stablesweep.analysis.recommended import write_recommended_set

    files: dict[str, Path] = {}
    budget = cfg.training.steps
    doc = {"kind": "ramp", "name": name, "config": str(Path(opts.config).resolve()),
           "space": str(Path(opts.space).resolve()) if opts.space else None,
           "lr_start": opts.lr_start, "lr_stop": opts.lr_stop, "ladder": opts.ladder, "climb": climb_of(opts),
           "resolution": opts.resolution, "safety": opts.safety, "mode": opts.mode,
           "first_pass": opts.first_pass, BUDGET_STEPS: budget,
           "note": f"every verdict holds for a budget of {budget} steps a probe",
           "settings": summary}
    files["ramp.json"] = ramp_dir / "ramp.json"
    files["ramp.json"].write_text(json.dumps(doc, indent=2, default=str) + "\n")
    md = [f"# lr ramp {name}", "", f"Budget: {budget} steps a probe ({opts.mode} mode); ladder {opts.ladder} "
          f"({climb_of(opts)} climb) from "
          f"{opts.lr_start:g} to {opts.lr_stop:g}; resolution {opts.resolution}. *largest safe lr*: {opts.safety} x "
          "the lr at 5% risk (with --replicates), else x *min failed lr*, else *max stable lr* where none failed. "
          "*recommended lr*: the lr with the best objective at the budget among the stable probes trained from "
          f"scratch at or below it ({opts.samples} lr(s) sampled below it once bracketed).", "",
          ("Each bracket is P(fails | lr) fitted over replicates (below)." if opts.replicates else
           "Each bracket is a single-seed estimate: one probe an lr; --replicates K measures P(fails | lr)."), "",
          "*min failed lr*: the smallest lr that did not train, diverged or stalled above the stable band "
          "(finite, but the loss fell less than monitor.min_progress of its initial loss). The bracket lies "
          "between *max stable lr* and it. *stalled*: lrs that stalled below the band (too small) and above it.", "",
          *answers_markdown(answers, RAMP_MD_COLUMNS)]
    if answers and opts.replicates:
        md += ["", *boundary_markdown(answers, RAMP_WORDS, seeds=opts.replicates, budget=budget, safety=opts.safety)]
    files["ramp.md"] = ramp_dir / "ramp.md"
    files["ramp.md"].write_text("\n".join(md).rstrip("\n") + "\n")
    files.update(write_recommended_set(
        [(a, {**s.params, LR_KEY: a.recommended_lr}, f"setting {a.label}")
         for s, a in zip(settings, answers) if a.recommended_lr is not None],
        ramp_dir, base, tool="ramp", what=f"the ramp {name}", seeds=opts.replicates,
        source=cfg.source, base_dir=cfg.base_dir))
    labels = [a.label for a in answers]
    probes = [[(p.lr, p.verdict, p.phase) for p in s.tested] for s in settings]
    files["ramp.png"] = plot_ramp(ramp_data(labels, probes, summary, budget), ramp_dir / "ramp.png")
    return files
