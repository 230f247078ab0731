"""Run the lr ramp: its plan (every check before Ray), its probes as one Tune run (`ramp_search`:
the searcher that hands them out as the planner proposes them, the callback that logs them to
MLflow), its outputs, and `--resume`.

Layout, under `--out` (default runs/ramps):

    OUT/mlflow.db                   MLflow store (a parent run per ramp, a child run per probe; runs/mlflow.db for the default OUT)
    OUT/NAME/ramp.json, ramp.md     per setting: the stable band, min diverged lr, min failed lr (diverged or
                                    stalled above the band), the stalls, recommended lr, probes, compute
    OUT/NAME/ramp.png               each setting's probes on a log-lr axis, coloured by verdict
    OUT/NAME/ramp_boundary.png      with --replicates: P(fails | lr) per setting, points at the replicates
    OUT/NAME/ramp_budgets.png       with a target longer than the probes: each setting's bracket (and 5%-risk lr)
                                    against the step budget (`ramp_outputs`: the answer across budgets)
    OUT/NAME/recommended/<setting>.yaml   a complete config per setting at the recommended lr
    OUT/NAME/run.json               what --resume needs: the MLflow store and parent run, Tune's experiment
    OUT/NAME/tune/                  Tune's experiment of the ramp: tuner.pkl, its state and the searcher's
                                    (settings, probes, batches), trial_<id>/ a probe: results, checkpoints

`--resume` (same `--out` and `--name`) restores Tune's experiment with the searcher's state: probes
that ended are not run again, those that were running go on from their checkpoints (Tune keeps
their trial ids), and the probes Tune's last snapshot did not hold run again under new trials,
their MLflow runs deleted first; the parent run of run.json is reused and ends FINISHED, with one
child run a probe. Ctrl-C or SIGTERM stop the run as Tune does (its state saved), the runs KILLED.
A full or read-only `--out` stops it as it stops a sweep (`recovery`: an `OutputFault`, exit 74, the
runs KILLED where the store takes it); its --resume puts back Tune's last whole state
(`repair_tune_state`), hands out again the probes the fault broke, and writes every probe's MLflow
run again at the end (`ramp_search.finish_probe_run`).

On a cluster the rules are the sweep's (`cluster.cluster_checks`): probes run on the worker nodes
and write their checkpoints to Tune's storage themselves, so on more than one node `--out` must
be shared storage (a path declared with `--shared-storage`, or a bucket URI, with the ramp's own
files then under `--local-dir`, Tune's experiment at OUT/NAME/tune). Continue mode warm-starts a
rung from the last stable rung's checkpoint in that storage, wherever either probe ran; a probe
whose node is lost is retried (`--max-failures`) from its last checkpoint.
"""
from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from stablesweep.analysis.answer import (
    RAMP_TEXT_COLUMNS,
    RAMP_WORDS,
    SettingAnswer,
    answers_text,
    boundary_text,
)
from stablesweep.cluster.storage import storage_paths, uri_scheme
from stablesweep.config import ConfigError, load_config
from stablesweep.signals import fit_tuner
from stablesweep.sweep.budgets import check_budget_flags, check_budgets, confirm_of
from stablesweep.sweep.options import RampOptions, samples_of
from stablesweep.sweep.placement import check_run_options, cluster_checks, ephemeral_path_notes
from stablesweep.sweep.ramp import (
    CLIMBS,
    LADDERS,
    Budgets,
    Setting,
    ladder,
)
from stablesweep.sweep.space import SearchSpace, apply_params, load_space
from stablesweep.vocab import (
    BUDGET_STEPS,
    LR_KEY,
    TRAIN_FLOPS,
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
    interrupted: bool = False  # stopped by Ctrl-C or SIGTERM: `ramp --resume` goes on


# ---- planning (no Ray) -----------------------------------------------------------------------

def _settings_from_space(space: SearchSpace | None) -> list[dict[str, Any]]:
    if space is None:
        return [{}]
    keys = space.categorical_keys
    values = [space.axes[k].grid_values(space.where(k)) for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


DEFAULT_PROBE_STEPS = 100  # the first probes' budget of a config that sets only epochs (and no --steps)


def plan_ramp(opts: RampOptions) -> tuple[dict, Any, list[Setting], list[str], Budgets]:
    """Check everything before Ray starts; returns (base raw config, Config at the first probes'
    budget, settings, notes, the budgets)."""
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
    check_budget_flags(opts)
    check_run_options(opts)
    storage_paths(opts.out, opts.local_dir, opts.DEFAULT_DIR)  # refuses a bad --out / --local-dir
    own = load_config(opts.config, list(opts.overrides))  # the config's own budget: the user's run
    target = opts.target_steps or own.training.steps
    if target is None and own.training.epochs is None:
        raise InputError(f"{opts.config}: the ramp needs a step budget: set training.steps or pass --steps")
    probe = opts.steps or min(x for x in (target, own.training.steps, DEFAULT_PROBE_STEPS if target is None
                                                                       else None) if x is not None)
    if target is not None:
        check_budgets(opts, probe, target)
    cfg = load_config(opts.config, [*opts.overrides, f"training.steps={probe}"])
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
    from stablesweep.data.check import preflight

    train_size = preflight(cfg)  # train's data check, without torch: a data problem named here, not in every probe
    if target is None:  # epochs x steps an epoch, as train counts them
        from stablesweep.config import total_steps

        target = total_steps(own, train_size)
        check_budgets(opts, probe, target)
    budgets = Budgets(probe, target, min(target, opts.max_steps or target))
    if budgets.extrapolated:
        notes.append(f"the target ({target} steps) is beyond --max-steps {opts.max_steps}: the answer is measured up "
                     f"to {budgets.reach} steps and extrapolated from there")
    notes += ephemeral_path_notes(opts)
    if opts.mode == "continue" and opts.parallel > 1:
        notes.append("continue mode: each setting climbs one rung at a time (each rung starts from the last "
                     "stable one); settings still run in parallel")
    return base, cfg, settings, notes, budgets


def ramp_paths(opts: RampOptions, name: str) -> tuple[Path, Path, str]:
    """(the directory for the ramp's own files, the ramp's directory in it, Tune's experiment of its
    probes): OUT/NAME and OUT/NAME/tune for a path --out; --local-dir/NAME and OUT_URI/NAME/tune for
    a URI --out."""
    out, storage = storage_paths(opts.out, opts.local_dir, opts.DEFAULT_DIR)
    ramp_dir = out / name
    return out, ramp_dir, (str(ramp_dir / TUNE) if uri_scheme(opts.out) is None else f"{storage}/{name}/{TUNE}")


def climb_of(opts: RampOptions) -> str:
    """--climb, or its default: gallop when probes train from scratch, every rung in continue mode
    (where each rung starts from the last stable one, the user's raise-it-step-by-step)."""
    return opts.climb or ("step" if opts.mode == "continue" else "gallop")


# ---- the run ------------------------------------------------------------------------------------

TUNE = "tune"  # Tune's experiment of the ramp's probes, in the ramp's folder (or in --out, a URI)
STATE_FILE = "run.json"  # what --resume needs: the MLflow store, the parent run, Tune's experiment


def resume_name(opts: RampOptions) -> str:
    """The ramp that --resume continues: --name, else the newest ramp in --out."""
    if opts.name:
        return opts.run_name("ramp")
    out, _ = storage_paths(opts.out, opts.local_dir, opts.DEFAULT_DIR)
    found = sorted(out.glob(f"*/{STATE_FILE}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise InputError(f"--resume: no ramp in {out} to continue; name one with --name, or start one without --resume")
    return found[-1].parent.name


def read_state(ramp_dir: Path, name: str) -> dict:
    """The ramp's STATE_FILE, for --resume; a clear error where there is no ramp to continue."""
    path = ramp_dir / STATE_FILE
    if not path.is_file():
        what = ("holds no ramp that can be continued (it was stopped before it started, or was made by an older "
                "version)" if ramp_dir.is_dir() else "does not exist")
        raise InputError(f"--resume --name {name}: {ramp_dir} {what}; start it without --resume"
                         + (" under another --name" if ramp_dir.is_dir() else ""))
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise InputError(f"--resume --name {name}: {path} is not readable JSON ({e})") from None


def _plan_of(opts: RampOptions, cfg, settings: list[Setting], budgets: Budgets) -> dict[str, Any]:
    """What decides a ramp's probes: a resumed ramp goes on with the plan it was started with."""
    return {"config": cfg.to_dict(), "settings": [s.params for s in settings], "lr_start": opts.lr_start,
            "lr_stop": opts.lr_stop, "ladder": opts.ladder, "climb": climb_of(opts), "resolution": opts.resolution,
            "parallel": opts.parallel, "safety": opts.safety, "mode": opts.mode, "first_pass": opts.first_pass,
            "range_steps": opts.range_steps, "replicates": opts.replicates, "samples": samples_of(opts),
            "evaluate": opts.evaluate, "target_steps": budgets.target, "max_steps": opts.max_steps,
            "confirm": confirm_of(opts, budgets)}


def check_same_plan(state: dict, plan: dict[str, Any], ramp_dir: Path) -> None:
    """--resume with other options or another config than the ramp's start is refused, naming them."""
    before = json.loads(json.dumps(state.get("plan", plan), default=str))
    now = json.loads(json.dumps(plan, default=str))
    changed = [k for k in now if before.get(k) != now[k]]
    if changed:
        raise InputError(f"--resume: {ramp_dir} was started with other " + ", ".join(
            "the config" if k == "config" else f"--{k.replace('_', '-')} ({before.get(k)!r}, now {now[k]!r})"
            for k in changed) + "; resume it with the command it was started with (plus --resume)")


def run_ramp(opts: RampOptions, echo: Callable[[str], None] = print) -> RampResult:
    base, cfg, settings, notes, budgets = plan_ramp(opts)
    confirm = confirm_of(opts, budgets)
    started = time.time()
    name = resume_name(opts) if opts.resume else opts.run_name("ramp")
    out, ramp_dir, experiment = ramp_paths(opts, name)
    state = read_state(ramp_dir, name) if opts.resume else None
    if state is not None:
        check_same_plan(state, _plan_of(opts, cfg, settings, budgets), ramp_dir)
    if state is None and ramp_dir.exists() and any(ramp_dir.iterdir()):
        raise InputError(f"--name {name}: {ramp_dir} already holds a ramp; continue it with --resume, or choose "
                         "another --name or --out")
    # Ray, torch, MLflow and matplotlib only once the plan's checks have passed (a refusal in milliseconds)
    from stablesweep.analysis.plots import boundary_data, plot_boundary
    from stablesweep.sweep.faults import probe_output, storage_fault
    from stablesweep.sweep.ramp_outputs import answer_settings, cost, cost_metrics, cost_text, write_ramp
    from stablesweep.sweep.ramp_search import finish_probe_run
    from stablesweep.sweep.recovery import close_runs, delete_other_runs, output_fault
    from stablesweep.sweep.session import ray_session
    from stablesweep.tracking import TRIAL_TAG, StoreStart, Tracker, stable_trials_link, ui_command

    for n in notes:
        echo(f"note: {n}")
    uri = state["tracking_uri"] if state else (opts.mlflow or opts.default_tracking_uri(out))
    with StoreStart(uri) as store, ray_session(opts) as session:  # the store begun while Ray starts
        max_concurrent, max_failures, shape = cluster_checks(opts)  # before anything is written
        tracker = parent = None
        try:
            ramp_dir.mkdir(parents=True, exist_ok=True)
            store.place()
            tracker = Tracker(uri, experiment=state["experiment"] if state else opts.experiment)
            budget = cfg.training.steps
            if state:
                parent = state["parent_run_id"]
                tracker.resume_sweep(parent)
                echo(f"resuming ramp {name} ({ramp_dir})")
            else:
                parent = _start_parent(opts, base, cfg, settings, tracker, name, ramp_dir, experiment, budgets)
                _write_state(ramp_dir, {"version": 1, "kind": "ramp", "name": name,
                                        "config_file": str(Path(opts.config).resolve()), "tracking_uri": uri,
                                        "experiment": tracker.experiment, "parent_run_id": parent,
                                        "tune_experiment": experiment, "plan": _plan_of(opts, cfg, settings, budgets)})
            echo(f"ramp {name}: {len(settings)} setting(s), lr {opts.lr_start:.1e}..{opts.lr_stop:.1e} on the "
                 f"{opts.ladder} ladder ({climb_of(opts)} climb), resolution {opts.resolution}, {opts.parallel} "
                 f"probe(s) a setting at once, {opts.mode} mode, budget {budget} steps a probe")
            echo(f"the answer is for {budgets.holds_for()}; "
                 + (f"the recommended lr confirmed with {confirm} fresh seed(s) at {budgets.target} steps"
                    if confirm and not budgets.extrapolated else "not confirmed"
                    + (" (--confirm 0)" if not confirm else " (the target is out of reach)")))
            if shape.n_nodes > 1 or experiment != str(ramp_dir / TUNE):
                echo(f"cluster: {shape.n_nodes} nodes; Tune's storage {experiment}; the ramp's files in {ramp_dir}; "
                     f"a failed probe is retried {max_failures} time{'s' if max_failures != 1 else ''}"
                     + (" from its checkpoint" if max_failures else ""))
            searcher, _ = run_probes(opts, cfg, settings, tracker, parent, name, experiment, echo,
                              max_concurrent=max_concurrent, max_failures=max_failures, resume=state is not None,
                              folder=ramp_dir, budgets=budgets, confirm=confirm)
            session.release()  # the probes have ended: Ray shuts down while the answer is written
            settings = searcher.settings  # a restored ramp's: with the probes of its earlier runs
            if not searcher.finished:  # Ctrl-C or SIGTERM: Tune stopped; its state and the searcher's are saved
                close_runs(tracker, parent)
                return RampResult(name, ramp_dir, settings, [], {}, uri, parent, time.time() - started, interrupted=True)
            ended = searcher.probes()
            delete_other_runs(tracker, parent, {r.trial_id for r in ended})  # a probe that runs again: one run
            for r in ended:  # each probe's run with its verdict, whatever the live callback could write
                finish_probe_run(tracker, parent, r)
            done = answer_settings(settings, budgets, opts.safety, opts.replicates, cfg.training.seed, confirm)
            answers, summary, fits = done.answers, done.summary, done.fits
            files = write_ramp(settings, done, opts, base, cfg, ramp_dir, name, budgets, climb_of(opts))
            if fits:
                files["ramp_boundary.png"] = plot_boundary(
                    boundary_data([a.label for a in answers], fits),
                    ramp_dir / "ramp_boundary.png", answers[0].budget_steps or budget)
            total_probes = sum(x["probes"] for x in summary)
            spent = cost(settings, budgets)
            tracker.end_sweep(parent, {"probes": float(total_probes), **cost_metrics(spent),
                                       TRAIN_FLOPS: float(sum(x[TRAIN_FLOPS] for x in summary)),
                                       "compute_s": float(sum(x["compute_s"] for x in summary))},
                              tags={BUDGET_STEPS: str(budget), "target_steps": str(budgets.target),
                                    "holds_for": budgets.holds_for(),
                                    **{f"answer.{s.key}": f"{a.label}: for {a.holds_for}; {a.confirmation}"[:5000]
                                       for s, a in zip(settings, answers)}},
                              artifacts=list(files.values()))
            tracker.log_setting_metrics(parent, (a.setting_metrics() for a in answers))
            runs = {c.tags.get(TRIAL_TAG): c.run_id for c in tracker.children(parent)}
            for r in ended:  # as a sweep's trials: lr over the setting's smallest diverged lr
                if r.trial_id in runs:
                    s = r.setting
                    tracker.set_margin(runs[r.trial_id], r.lr / s.min_diverged if s.min_diverged else None)
            echo(f"largest stable lr per setting (budget {budget} steps a probe"
                 + (f"; the answer at {budgets.reach} steps)\n" if len(budgets.rungs) > 1 else ")\n")
                 + answers_text(answers, RAMP_TEXT_COLUMNS))
            if fits:
                echo(boundary_text(answers, RAMP_WORDS))
            for a in answers:
                echo(f"  {a.label}: the answer holds for {a.holds_for}; {a.confirmation}")
            if len(budgets.rungs) > 1 or budgets.extrapolated:
                echo(cost_text(spent))
            echo(f"files: {ramp_dir}  (ramp.json, ramp.md, ramp.png, recommended/)")
            echo(f"MLflow: {ui_command(uri)}")
            link = stable_trials_link(uri, parent, params=[LR_KEY, *(settings[0].params if settings else {})])
            if link:
                echo(f"  the stable probes, best first: {link}")
            return RampResult(name, ramp_dir, settings, summary, files, uri, parent, time.time() - started, answers)
        except Exception as e:
            why = storage_fault(e) or probe_output(ramp_dir if ramp_dir.is_dir() else out)
            if why is None:
                raise
            closed = tracker is not None and parent is not None and close_runs(tracker, parent)
            raise output_fault("ramp", name, why, closed, uri, opts.out,
                               kept="probes that ended are kept, the others run again") from e


def _start_parent(opts: RampOptions, base: dict, cfg, settings: list[Setting], tracker, name: str, ramp_dir: Path,
                  experiment: str, budgets: Budgets) -> str:
    """The ramp's parent MLflow run (its STATE_FILE names it for --resume). A parent of this ramp's
    folder that a start killed before the file was written is deleted first."""
    params = {"lr_start": opts.lr_start, "lr_stop": opts.lr_stop, "ladder": opts.ladder,
              "climb": climb_of(opts), "resolution": opts.resolution, "parallel": opts.parallel,
              "safety": opts.safety,
              "mode": opts.mode, "first_pass": opts.first_pass or "none", BUDGET_STEPS: cfg.training.steps,
              "settings": len(settings), "config_file": str(Path(opts.config).resolve()),
              "space_file": str(Path(opts.space).resolve()) if opts.space else "none",
              "target_steps": budgets.target, "max_steps": budgets.reach, "confirm": confirm_of(opts, budgets)}
    for run in tracker.sweep_runs(kind="ramp"):
        if run.tags.get("sweep_dir") == str(ramp_dir):
            if run.status == "RUNNING":
                tracker.close_run(run.run_id, "KILLED")
            tracker.delete_run(run.run_id)
    parent = tracker.start_sweep(name, params, tags={"sweep_dir": str(ramp_dir), "tune_experiment": experiment},
                                 texts={"config.yaml": yaml.safe_dump(base, sort_keys=False)}, kind="ramp")
    return parent


def _write_state(ramp_dir: Path, state: dict) -> None:
    tmp = ramp_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str) + "\n")
    tmp.replace(ramp_dir / STATE_FILE)


def run_probes(opts: RampOptions, cfg, settings: list[Setting], tracker, parent: str, name: str, experiment: str,
               echo: Callable[[str], None], *, max_concurrent: int, max_failures: int, resume: bool, folder: Path,
               budgets: Budgets, confirm: int, entry: str | None = None, keep: set[str] = frozenset(),
               setting_keys: list[str] | None = None):
    """Every probe of the ramp, as one Tune run (`ramp_search`); returns its searcher and Tune's
    results. A resumed ramp restores Tune's experiment (and with it the searcher's state): probes
    that ended are not run again, those that were running go on; the MLflow runs of probes that
    Tune's last snapshot did not hold (they run again under new trials) are deleted first, the
    other children of `parent` in `keep` (a sweep's trials) never. A sweep's rungs (`sweep_rungs`)
    run here too: settings seeded with its trials, `entry` PROMOTING, the `setting` tag of its
    categorical axes (`setting_keys`)."""
    from ray import tune

    from stablesweep.sweep.ramp_search import RampCallback, RampSearcher
    from stablesweep.sweep.recovery import (
        can_restore,
        delete_other_runs,
        repair_error_files,
        repair_tune_state,
        trial_ids_in,
        trial_statuses,
    )
    from stablesweep.sweep.session import make_tuner, trial_trainable
    from stablesweep.sweep.stopper import DivergenceStopper

    # checkpoints only where something reads them: the next rung (continue mode), a retry (a cluster)
    continues = len(budgets.rungs) > 1 and cfg.training.schedule == "constant"  # a promoted probe goes on
    trainable = trial_trainable(cfg, opts, checkpoints=max_failures > 0 or opts.mode == "continue" or continues)
    local = uri_scheme(experiment) is None
    if resume and local:
        repair_tune_state(Path(experiment))  # a copy a full disk cut short: its last whole one
    if resume and can_restore(experiment):
        known = trial_ids_in(Path(experiment)) if local else None
        if known is not None:
            repair_error_files(Path(experiment))
            delete_other_runs(tracker, parent, known | set(keep))
        tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=False)
        callback = next(cb for cb in tuner._local_tuner.get_run_config().callbacks or []
                        if isinstance(cb, RampCallback))
        searcher = callback.searcher
        callback.echo = searcher.echo = echo
        searcher.folder = str(folder)
        # trials in ERROR whose probe has no verdict (an output fault broke them) are handed out again
        searcher.tune_trials = known if known is None else {t for t, st in trial_statuses(Path(experiment)).items()
                                                            if st != "ERROR"}
    else:
        if resume:  # stopped before Tune's first snapshot: every probe runs (again)
            delete_other_runs(tracker, parent, set(keep))
        searcher = RampSearcher(settings, opts, budget=budgets.probe, base_seed=cfg.training.seed, echo=echo,
                                folder=str(folder), budgets=budgets, continues=continues, confirm=confirm, entry=entry)
        storage, exp_name = experiment.rsplit("/", 1)
        tuner = make_tuner(trainable, name=exp_name, storage=storage, search_alg=searcher, num_samples=-1,
                           max_concurrent=max_concurrent, max_failures=max_failures,
                           stopper=DivergenceStopper(let_last_end=True),
                           callbacks=[RampCallback(searcher, tracker, parent, name, experiment, echo=echo,
                                                   setting_keys=setting_keys)])
    results = fit_tuner(tuner)
    return searcher, results
