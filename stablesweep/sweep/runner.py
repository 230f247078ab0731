"""Run a stability sweep: plan (all checks, before Ray: plan.py), Tune, then the trial table, the Optuna and
MLflow records, and the stable region.

Layout of a sweep, everything under `--out` (default runs/sweeps):

    OUT/mlflow.db                 MLflow store shared by the sweeps in OUT (runs/mlflow.db for the default OUT)
    OUT/mlartifacts/              its artifacts
    OUT/NAME/sweep.json           what the sweep is (config, space, sampler, seed, samples, run ids)
    OUT/NAME/optuna.db            the Optuna study (the sampler's knowledge; kept by --resume)
    OUT/NAME/tuner.pkl, trial_*/  Tune's experiment (storage_path=OUT, name=NAME)
    OUT/NAME/trials.csv           one row a trial
    OUT/NAME/stable_region.{json,md}, figures/*.png, recommended.yaml
    OUT/NAME/replicates/          with --replicates: Tune's experiment of the replicate round
    OUT/NAME/replicates-at-risk/  and of its second round, at each combination's fitted 5%-risk lr
    OUT/NAME/rungs/               with --target-steps longer than the trials: Tune's experiment of the
                                  rungs and the confirmation (`sweep_rungs`), run after the replicates;
                                  figures/budgets.png, and the answer for the target in the files above

With `--replicates K` (grid and qmc samplers), once the sweep's trials have ended, K seeds run at
`boundary.replicate_lrs(max stable lr, min failed lr)` of every combination of the categorical axes
that has a bracket (its other params those of its trial at the largest stable lr), from scratch, as
a second Tune experiment through the same trial function; then, as the ramp does, K more at each
combination's lr at 5% risk fitted to those (`at_risk_configs`: where the answer is read), a third.
They are rows of trials.csv (`phase`
replicate, their `seed`) and MLflow children (tag `phase: replicate`, param `training.seed`), and
the region fits P(fails | lr) per combination over its trials and replicates
(`region.add_boundaries`). They are not Optuna trials: the study is the sampler's knowledge, and a
replicate's lr, between two grid values, is no point of its space. `--resume` restores those
experiments like the sweep's own: a replicate that ended is never run again.

Where `--out` is a URI (s3://bucket/sweeps, gs://..., any pyarrow filesystem URI), only Tune's
experiment (checkpoints, trial results, experiment state) goes there, as OUT/NAME; the rest of the
layout above (sweep.json, optuna.db, trials.csv, the region files, mlflow.db) is written on the
driver's disk under `--local-dir` (default runs/sweeps). Sqlite (Optuna's study, MLflow's store)
needs a local file, and the region is read by people, so neither belongs in a bucket.

On a Ray cluster of more than one node the trials run in workers on other machines and write
their checkpoints to Tune's storage themselves: `--out` must be the same storage for every node, a
bucket URI or a path declared shared with `--shared-storage` (`cluster.storage.check_shared_storage`).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from stablesweep.signals import fit_tuner
from stablesweep.sweep.callbacks import MlflowCallback, ProgressCallback, tune_loggers
from stablesweep.sweep.faults import probe_output, storage_fault
from stablesweep.sweep.options import SweepOptions
from stablesweep.sweep.placement import cluster_checks, trial_resources
from stablesweep.sweep.plan import STATE_FILE, SweepPlan, plan_sweep
from stablesweep.sweep.records import trial_records, trials_table
from stablesweep.sweep.recovery import (
    broken_by_fault,
    can_restore,
    close_runs,
    delete_lost_runs,
    output_fault,
    repair_error_files,
    repair_tune_state,
    rerun_lost_trials,
    save_elsewhere,
    trial_ids_of,
)
from stablesweep.sweep.search import StabilitySearcher, reconcile_study
from stablesweep.sweep.session import ListedSearcher, make_tuner, ray_session, trial_trainable
from stablesweep.sweep.stopper import Outcome, asha_for
from stablesweep.vocab import (
    BUDGET_STEPS,
    DIVERGED,
    FINAL_LOSS,
    INITIAL_LOSS,
    LR_KEY,
    OBJECTIVE,
    REPLICATE,
    SEED_KEY,
    STABLE,
    STALLED,
    STEPS,
    TRAIN_FLOPS,
    UNFINISHED,
    VERDICT,
    VERDICTS,
    py,
    short_name,
)

logger = logging.getLogger(__name__)

AT_RISK = "replicates-at-risk"  # the replicates' second round, at the fitted 5%-risk lrs
REPLICATES = "replicates"  # the replicate round's Tune experiment, in the sweep's


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
    target: Any = None  # sweep_rungs.Rungs: the answer for a target longer than the trials (None: no rungs)


def run_sweep(opts: SweepOptions, echo: Callable[[str], None] = print, plan: SweepPlan | None = None) -> SweepResult:
    """Plan (unless given the plan of `opts`), start (or join) Ray, run the Tuner, and write the
    region. See the module docstring."""
    plan = plan or plan_sweep(opts)  # raises ConfigError / SpaceError / InputError before Ray starts
    started = time.time()
    for n in plan.notes:
        echo(f"note: {n}")

    from stablesweep.tracking import StoreStart

    with StoreStart(plan.tracking_uri) as store, ray_session(opts) as session:  # the store begun while Ray starts
        max_concurrent, max_failures, shape = cluster_checks(opts)
        return _run(plan, store, session, max_concurrent, echo, started, max_failures=max_failures,
                    n_nodes=shape.n_nodes)


def _run(plan: SweepPlan, store, session, max_concurrent: int, echo: Callable[[str], None], started: float, *,
         max_failures: int = 0, n_nodes: int = 1) -> SweepResult:
    from ray import tune

    from stablesweep.tracking import Tracker

    opts, space = plan.opts, plan.space
    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    store.place()
    tracker = Tracker(plan.tracking_uri, experiment=plan.state.get("experiment", opts.experiment))
    if plan.resume:
        parent = plan.state["parent_run_id"]
        tracker.resume_sweep(parent)
        echo(f"resuming sweep {plan.name} ({plan.sweep_dir})")
    else:
        parent = _start_parent(plan, tracker, max_concurrent)
    resources = trial_resources(opts)
    custom = "".join(f", {v:g} {k}" for k, v in resources.items() if k not in ("cpu", "gpu"))
    echo(f"sweep {plan.name}: {plan.samples} trials, sampler {plan.sampler}, "
         f"{'ASHA' if plan.asha else 'no ASHA'}, up to {max_concurrent} at once "
         f"({opts.cpus_per_trial:g} CPU{', %g GPU' % opts.gpus_per_trial if opts.gpus_per_trial else ''}{custom} "
         f"a trial), budget {plan.cfg.training.steps or '?'} steps, report every {plan.cfg.training.report_interval}"
         + (f"; then {plan.replicates} seed(s) around each bracket" if plan.replicates else "")
         + (f"; then the rungs up to {plan.budgets.reach} steps, the answer for {plan.budgets.target}"
            if plan.rungs else ""))
    if n_nodes > 1 or plan.storage != str(plan.out):
        echo(f"cluster: {n_nodes} nodes; Tune's storage {plan.experiment_path}; the sweep's files in {plan.sweep_dir}; "
             f"a failed trial is retried {max_failures} time{'s' if max_failures != 1 else ''} from its checkpoint")
    trainable = trial_trainable(plan.cfg, opts)
    try:
        if plan.resume and plan.storage == str(plan.out):
            repair_tune_state(plan.sweep_dir)
            repair_error_files(plan.sweep_dir)
            lost = rerun_lost_trials(plan, trial_ids_of(plan) if can_restore(plan.experiment_path) else set())
            if lost:
                echo(f"{len(lost)} trial{'s' if len(lost) != 1 else ''} that ended after Tune's last saved state "
                     f"(Optuna number{'s' if len(lost) != 1 else ''} {', '.join(map(str, lost))}) run again")
        if plan.resume and can_restore(plan.experiment_path):
            again = plan.storage == str(plan.out) and broken_by_fault(plan)
            if again:
                echo("trials that the output fault broke run again from their checkpoints")
            tuner = tune.Tuner.restore(plan.experiment_path, trainable=trainable, resume_unfinished=True,
                                       resume_errored=again)
            _swap_echo(tuner, echo)
        else:
            progress = ProgressCallback(plan.samples, space.keys)
            progress.echo = echo
            tuner = make_tuner(
                trainable, name=plan.name, storage=plan.storage,
                search_alg=StabilitySearcher(space, plan.study_url, plan.name, plan.sampler, plan.seed),
                scheduler=asha_for(plan.n_reports, grace=plan.asha_grace, reduction_factor=plan.asha_rf) if plan.asha else None,
                num_samples=plan.samples, max_concurrent=max_concurrent, max_failures=max_failures,
                keep_checkpoints=plan.cfg.training.keep_checkpoints,
                callbacks=[MlflowCallback(tracker, parent, space.keys, plan.name, space.categorical_keys), progress,
                           *tune_loggers()])
        table, outcomes = _sweep_table(plan, fit_tuner(tuner))
        replicates = rungs = None
        if plan.replicates:
            replicates = _replicate(plan, table, trainable, tracker, parent, echo, max_concurrent=max_concurrent,
                                    max_failures=max_failures)
        if plan.rungs:  # a target longer than the trials: the ramp's rungs and confirmation (sweep_rungs)
            from stablesweep.sweep.sweep_rungs import run_rungs

            rungs = run_rungs(plan, table, replicates, tracker, parent, echo, max_concurrent=max_concurrent,
                              max_failures=max_failures)
        session.release()  # the trials have ended: Ray shuts down while the region is written
        return _collect(plan, table, outcomes, replicates, tracker, parent, started, rungs)
    except Exception as e:
        why = storage_fault(e) or probe_output(plan.sweep_dir)
        if why is None:
            raise
        closed = close_runs(tracker, parent)
        raise output_fault("sweep", plan.name, why, closed, plan.tracking_uri, plan.out, save_elsewhere(plan)) from e


def _swap_echo(tuner, echo) -> None:
    """Restored callbacks come from tuner.pkl; point the progress printer at this process's echo."""
    try:
        for cb in tuner._local_tuner.get_run_config().callbacks or []:
            if isinstance(cb, ProgressCallback):
                cb.echo = echo
    except AttributeError:
        pass


def _start_parent(plan: SweepPlan, tracker, max_concurrent: int) -> str:
    import yaml

    opts = plan.opts
    space_yaml = plan.space.to_yaml()
    config_yaml = yaml.safe_dump(plan.base, sort_keys=False)
    params = {"sampler": plan.sampler, "samples": plan.samples, "seed": plan.seed, "asha": plan.asha,
              BUDGET_STEPS: plan.cfg.training.steps, "report_interval": plan.cfg.training.report_interval,
              "cpus_per_trial": opts.cpus_per_trial, "gpus_per_trial": opts.gpus_per_trial,
              "max_concurrent": max_concurrent, "config_file": str(Path(opts.config).resolve()),
              "space_file": str(Path(opts.space).resolve()), "space_keys": ",".join(plan.space.keys),
              "replicates": plan.replicates, "target_steps": plan.budgets.target}
    if plan.rungs:
        params.update({"max_steps": plan.budgets.reach, "confirm": plan.confirm})
    if opts.resources_per_trial:
        params["resources_per_trial"] = json.dumps(opts.resources_per_trial, sort_keys=True)
    for run in tracker.sweep_runs():  # a start of this sweep killed before sweep.json named its parent
        if run.tags.get("sweep_dir") == str(plan.sweep_dir):
            if run.status == "RUNNING":
                tracker.close_run(run.run_id, "KILLED")
            tracker.delete_run(run.run_id)
            logger.warning("deleted MLflow run %s, the parent of a start of sweep %s killed before it was recorded",
                           run.run_id, plan.name)
    parent = tracker.start_sweep(plan.name, params,
                                 tags={"sweep_dir": str(plan.sweep_dir), "tune_experiment": plan.experiment_path},
                                 texts={"config.yaml": config_yaml, "space.yaml": space_yaml})
    state = {"version": 1, "name": plan.name, "created": _dt.datetime.now().astimezone().isoformat(),
             "config_file": str(Path(opts.config).resolve()), "base_dir": plan.cfg.base_dir,
             "source": plan.cfg.source, "config": plan.base,
             "space_file": str(Path(opts.space).resolve()),
             "space": {k: a.spec() for k, a in plan.space.axes.items()},
             "sampler": plan.sampler, "samples": plan.samples, "seed": plan.seed, "asha": plan.asha,
             "replicates": plan.replicates, "asha_grace": plan.asha_grace, "asha_rf": plan.asha_rf, "tracking_uri": plan.tracking_uri,
             "experiment": opts.experiment, "storage": plan.storage, "experiment_path": plan.experiment_path,
             "parent_run_id": parent, "study_name": plan.name, "study_url": plan.study_url,
             "target_steps": plan.budgets.target, "max_steps": opts.max_steps, "confirm": plan.confirm}
    (plan.sweep_dir / "config.yaml").write_text(config_yaml)
    (plan.sweep_dir / "space.yaml").write_text(space_yaml)
    tmp = plan.sweep_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str) + "\n")
    tmp.replace(plan.sweep_dir / STATE_FILE)
    plan.state = state
    return parent


# ---- after the run: one table, one truth ------------------------------------------------------

def _sweep_table(plan: SweepPlan, results) -> tuple[pd.DataFrame, dict[str, Outcome]]:
    """The sweep's trials as a table (with their Optuna numbers), and their outcomes; the Optuna
    study made to agree with them."""
    table, outcomes = trials_table(trial_records(results), plan.space)
    finished = {k: v for k, v in outcomes.items() if v.verdict in VERDICTS}
    numbers = reconcile_study(plan.study_url, plan.name, finished, owned=set(outcomes),
                              final=len(finished) == len(outcomes))
    table.insert(1, "optuna_number", table["trial_id"].map(lambda t: numbers.get(t, -1)).astype(int))
    return table, outcomes


def replicate_configs(plan: SweepPlan, done: pd.DataFrame) -> tuple[list[dict], list[str]]:
    """The trial configs of the replicate round (`boundary.replicate_runs` per combination of the
    sweep's ended trials `done`), and the combinations skipped for want of a bracket."""
    from stablesweep.analysis.boundary import replicate_runs
    from stablesweep.analysis.region import analyze, rows_of

    space, seed = plan.space, plan.cfg.training.seed
    region = analyze(done, lr_key=LR_KEY, group_keys=space.categorical_keys, param_keys=space.keys, importance=False)
    configs, skipped = [], []
    for g in region.groups:
        mine = rows_of(done, region.group_keys, g.key)
        tried = mine.loc[mine[VERDICT].isin([STABLE, STALLED, DIVERGED]), LR_KEY].astype(float)
        runs = replicate_runs(g.max_stable_lr, g.min_failed_lr, plan.replicates, seed, tried)
        if not runs:
            skipped.append(g.label)
            continue
        params = _params_at_max_stable(mine, g.max_stable_lr, space.keys)
        configs += [{**params, LR_KEY: float(lr), SEED_KEY: int(s)} for lr, s in runs]
    return configs, skipped


def _params_at_max_stable(rows: pd.DataFrame, max_stable_lr: float, keys: list[str]) -> dict:
    """A combination's params for its replicates: those of its trial at its largest stable lr."""
    top = rows[(rows[VERDICT] == STABLE) & (rows[LR_KEY] == max_stable_lr)].iloc[0]
    return {k: py(top[k]) for k in keys}


def at_risk_configs(plan: SweepPlan, done: pd.DataFrame, reps: pd.DataFrame) -> list[dict]:
    """The trial configs of the replicates' second round: K seeds at each combination's lr at 5% risk
    fitted to its trials `done` and first-round replicates `reps`, where `boundary.at_risk_lr` puts
    them (as the ramp's `at_risk_probes`)."""
    from stablesweep.analysis.boundary import at_risk_lr
    from stablesweep.analysis.region import add_boundaries, analyze, rows_of

    space, seed, k = plan.space, plan.cfg.training.seed, plan.replicates
    region = analyze(done, lr_key=LR_KEY, group_keys=space.categorical_keys, param_keys=space.keys, importance=False)
    add_boundaries(region, done, reps, k, seed)
    configs = []
    for g in region.groups:
        trials = rows_of(done, region.group_keys, g.key)
        mine = pd.concat([trials, rows_of(reps, region.group_keys, g.key)])
        ran = mine.loc[mine[VERDICT].isin([STABLE, STALLED, DIVERGED]), LR_KEY].astype(float)
        lr = at_risk_lr(g.lr_at_5pct_risk, ran, k)
        if lr is None or g.max_stable_lr is None:
            continue
        params = _params_at_max_stable(trials, g.max_stable_lr, space.keys)
        configs += [{**params, LR_KEY: lr, SEED_KEY: seed + i} for i in range(k)]
    return configs


def _replicate(plan: SweepPlan, table: pd.DataFrame, trainable, tracker, parent: str, echo: Callable[[str], None], *,
               max_concurrent: int, max_failures: int) -> tuple[pd.DataFrame, dict[str, Outcome]] | None:
    """The replicate rounds (see the module docstring): their table (a `seed` column) and outcomes;
    None while the sweep's own trials have not all ended."""
    if (table[VERDICT] == UNFINISHED).any():
        echo("replicates: not yet, the sweep's own trials have not all ended (--resume runs them)")
        return None
    done = table[table[VERDICT].isin(VERDICTS)]
    configs, skipped = replicate_configs(plan, done)
    if skipped:
        echo(f"replicates: no bracket (no stable lr below a failed one) with {'; '.join(skipped)}: skipped")
    if not configs:
        return pd.DataFrame(columns=[*table.columns, "seed"]), {}
    echo(f"replicates: {len(configs)} run(s), {plan.replicates} seed(s) at the lrs inside each bracket and at its ends")
    reps, outcomes = _replicate_round(plan, REPLICATES, configs, trainable, tracker, parent, echo,
                                      max_concurrent=max_concurrent, max_failures=max_failures)
    second = at_risk_configs(plan, done, reps)
    if second:
        echo(f"replicates: {len(second)} run(s), {plan.replicates} seed(s) at the lr at 5% risk fitted to them")
        more, more_outcomes = _replicate_round(plan, AT_RISK, second, trainable, tracker, parent, echo,
                                               max_concurrent=max_concurrent, max_failures=max_failures)
        reps, outcomes = pd.concat([reps, more], ignore_index=True), {**outcomes, **more_outcomes}
    return reps, outcomes


def _replicate_round(plan: SweepPlan, name: str, configs: list[dict], trainable, tracker, parent: str,
                     echo: Callable[[str], None], *, max_concurrent: int,
                     max_failures: int) -> tuple[pd.DataFrame, dict[str, Outcome]]:
    """One round of replicates: a Tune experiment `name` in the sweep's (restored by --resume)."""
    from ray import tune

    keys = [*plan.space.keys, SEED_KEY]
    path = f"{plan.experiment_path}/{name}"
    if plan.resume and can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False)
        _swap_echo(tuner, echo)
    else:
        progress = ProgressCallback(len(configs), keys)
        progress.echo = echo
        tuner = make_tuner(trainable, name=name, storage=plan.experiment_path,
                           search_alg=ListedSearcher(configs), num_samples=len(configs),
                           max_concurrent=max_concurrent, max_failures=max_failures,
                           callbacks=[MlflowCallback(tracker, parent, keys, plan.name, plan.space.categorical_keys),
                                      progress, *tune_loggers()])
    records = trial_records(fit_tuner(tuner))
    reps, outcomes = trials_table(records, plan.space)
    seeds = {r.trial_id: r.config.get(SEED_KEY) for r in records}
    reps["seed"] = reps["trial_id"].map(seeds)
    reps["name"] = [short_name({**{k: r[k] for k in plan.space.keys}, SEED_KEY: r["seed"]}) for _, r in reps.iterrows()]
    return reps, outcomes


def _collect(plan: SweepPlan, table: pd.DataFrame, outcomes: dict[str, Outcome],
             replicates: tuple[pd.DataFrame, dict[str, Outcome]] | None, tracker, parent: str,
             started: float, rungs=None) -> SweepResult:
    from stablesweep.analysis.plots import boundary_data, plot_boundary
    from stablesweep.analysis.region import add_boundaries, analyze, lr_margins, write_region
    from stablesweep.sweep.sweep_rungs import target_tags, write_target

    interrupted = bool((table[VERDICT] == UNFINISHED).any()) if len(table) else False
    if plan.rungs:  # the answer for the target waits for the rungs (None: the trials before them are unfinished)
        interrupted = interrupted or rungs is None or not rungs.finished
    if not interrupted:
        kept = [t for t in (table, replicates[0] if replicates is not None else None,
                            rungs.table if rungs is not None else None) if t is not None and len(t)]
        delete_lost_runs(tracker, parent, plan, {tid for t in kept for tid in t["trial_id"]})
    done = table[table[VERDICT].isin(VERDICTS)] if len(table) else table
    region = analyze(done, lr_key=plan.space.lr_key, group_keys=plan.space.categorical_keys,
                     param_keys=plan.space.keys, distributions=plan.space.to_optuna())
    metrics: dict[str, float] = {}
    fits = None
    if plan.replicates:
        reps, rep_outcomes = replicates if replicates is not None else (pd.DataFrame(columns=[VERDICT, "seed"]), {})
        interrupted = interrupted or bool((reps[VERDICT] == UNFINISHED).any())
        fits = add_boundaries(region, done, reps[reps[VERDICT].isin(VERDICTS)], plan.replicates,
                              plan.cfg.training.seed)
        table = pd.concat([table.assign(phase="sweep", seed=plan.cfg.training.seed),
                           reps.assign(phase=REPLICATE, optuna_number=-1)], ignore_index=True)
        outcomes = {**outcomes, **rep_outcomes}
        done = table[table[VERDICT].isin(VERDICTS)]
        metrics.update({"replicates": float(len(reps)),
                        "replicate_flops": float(sum(g.replicate_flops for g in region.groups)),
                        TRAIN_FLOPS: float(sum(g.train_flops for g in region.groups))})
    shown = table  # the region's figures: the trials at the first budget
    if rungs is not None and len(rungs.table):  # the rungs' probes: rows of trials.csv, children in MLflow
        if "phase" not in table.columns:
            table = table.assign(phase="sweep", seed=plan.cfg.training.seed)
        shown = table
        table = pd.concat([table, rungs.table.assign(optuna_number=-1)], ignore_index=True)
        outcomes = {**outcomes, **rungs.outcomes}
    _finish_mlflow(table, outcomes, tracker, parent, plan)
    title = f"Stable region: sweep {plan.name}"
    target = rungs if rungs is not None and rungs.answered else None
    if plan.rungs:  # the first budget's recommended trial is not the answer: the target's is (write_target)
        region.recommended = None
    files = write_region(region, shown, plan.sweep_dir, base=None if plan.rungs else plan.base, title=title,
                         extra={"sweep": plan.name, "sampler": plan.sampler, "samples": plan.samples,
                                "config": plan.state.get("config_file"), "space": plan.state.get("space_file"),
                                "interrupted": interrupted, "target_steps": plan.budgets.target,
                                "holds_for": plan.budgets.holds_for() if not plan.rungs else None},
                         source=plan.cfg.source, base_dir=plan.cfg.base_dir)
    if plan.rungs:  # the answer is for the target: its recommended config, not the first budget's
        table.to_csv(files["trials"], index=False)
        files.update(write_target(target, plan, files) if target else {})
        top = target.recommended() if target else None
        region.recommended = {**top[0].params, LR_KEY: top[1].recommended_lr} if top else None
    if fits is not None:
        files["figure_boundary"] = plot_boundary(boundary_data([g.label for g in region.groups], fits),
                                                 plan.sweep_dir / "figures" / "boundary.png", region.budget_steps)
    counts = {v: int((table[VERDICT] == v).sum()) for v in (*VERDICTS, UNFINISHED)} if len(table) else {}
    metrics.update({f"trials_{k}": float(v) for k, v in counts.items()})
    if region.best:
        metrics["best_objective"] = region.best[OBJECTIVE]
    tracker.log_setting_metrics(parent, (a.setting_metrics() for a in (target.answers if target else region.answers())))
    if target is not None and target.cost:
        from stablesweep.sweep.ramp_outputs import cost_metrics

        metrics.update(cost_metrics(target.cost))
    for trial_id, margin in zip(done["trial_id"], lr_margins(done, region)) if len(done) else ():
        run_id = tracker.trial_run(parent, trial_id, "", {})
        tracker.set_margin(run_id, margin)
    tracker.end_sweep(parent, metrics, tags={"interrupted": str(interrupted).lower(), **target_tags(target, plan.budgets)},
                      artifacts=list(files.values()), status="KILLED" if interrupted else "FINISHED")
    if interrupted:  # the child runs of trials stopped mid-way (Ctrl-C, SIGTERM): KILLED, not RUNNING
        close_runs(tracker, parent)
    return SweepResult(name=plan.name, sweep_dir=plan.sweep_dir, table=table, region=region, files=files,
                       tracking_uri=plan.tracking_uri, parent_run_id=parent, counts=counts,
                       interrupted=interrupted, wall_s=time.time() - started, target=target)


def _finish_mlflow(table: pd.DataFrame, outcomes: dict[str, Outcome], tracker, parent: str, plan: SweepPlan) -> None:
    """Every trial has exactly one child run with its final verdict tags (the live callback may
    have missed trials that finished in an earlier, interrupted run)."""
    for _, r in table.iterrows():
        o = outcomes.get(r["trial_id"])
        if o is None or o.verdict not in VERDICTS:
            continue
        params = {k: py(r[k]) for k in plan.space.keys}
        tags = {}
        if r.get("phase") not in (None, "sweep"):  # a replicate, or a probe of the rungs (sweep_rungs)
            params[SEED_KEY] = py(r["seed"])
            tags["phase"] = r["phase"]
        run_id = tracker.trial_run(parent, r["trial_id"], r["name"], params,
                                   setting={k: params.get(k) for k in plan.space.categorical_keys})
        # budget_steps among the constants (a tag, as the config writes it); tags only where known
        summary = {k: py(r[k]) for k in (OBJECTIVE, INITIAL_LOSS, FINAL_LOSS, TRAIN_FLOPS, STEPS, BUDGET_STEPS)
                   if py(r.get(k)) is not None}
        if py(r.get("node_id")):
            tags["node_id"] = str(r["node_id"])
        number = py(r.get("optuna_number"))
        if number is not None and number >= 0:  # -1: a replicate, or a trial Optuna did not number
            tags["optuna_number"] = str(number)
        tracker.finish_trial(run_id, o.verdict, o.reason, o.first_bad_step, summary, tags, ended_at=o.ended_at)
