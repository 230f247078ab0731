"""The resume of a sweep or a ramp and their recovery from a full or read-only disk
(`runner.run_sweep` and `ramp_runner.run_ramp` call these).

Disk full: `faults.storage_fault` tells such an error from any other; the run then stops with an
`OutputFault` (`output_fault` words it, for both) after `close_runs` (its MLflow runs KILLED) and,
for a sweep, `save_elsewhere` (its trials, from the Optuna study, to a temporary folder).

Resume after a fault: `repair_tune_state` puts back a whole copy of Tune's state (a sweep's or a
ramp's experiment) that a full disk cut short, `repair_error_files` the error files it left empty;
for a sweep, `rerun_lost_trials` queues again in Optuna the trials Tune lost, and `delete_lost_runs`
removes their MLflow runs, so every setting ends in exactly one trial of the sweep's table, Optuna
and MLflow. `can_restore`: whether Tune's experiment can be restored at all.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from stablesweep.cluster.storage import uri_scheme
from stablesweep.sweep.faults import OutputFault
from stablesweep.sweep.plan import SweepPlan
from stablesweep.sweep.search import ABANDONED, open_study, study_summary
from stablesweep.vocab import FIRST_BAD_STEP, OBJECTIVE, REASON, STEPS, VERDICT

logger = logging.getLogger(__name__)

__all__ = ["OutputFault"]  # defined with the fault checks (sweep/faults.py); raised from here


def output_fault(kind: str, name: str, why: str, closed: bool, tracking_uri: str, out, saved: Path | None = None,
                 kept: str = "trials that finished are kept, the others run again") -> OutputFault:
    """The stop of a sweep or ramp (`kind`) whose output could not be written, in the same words for
    both: what happened, whether its MLflow runs were closed, where its records were saved, and what
    --resume keeps."""
    return OutputFault(f"{kind} {name}: its output could not be written ({why}); the {kind} stopped. "
                       + ("Its MLflow runs are marked KILLED. " if closed else
                          f"Its MLflow runs in {tracking_uri} could not be closed either (still RUNNING). ")
                       + (f"Its trials so far (from its Optuna study) are in {saved}. " if saved else "")
                       + f"Free space or make {out} writable, then resume: {kept}", name)


def broken_by_fault(plan: SweepPlan) -> bool:
    """Whether Tune's state holds trials in ERROR that Optuna still holds RUNNING: trials a full or
    read-only disk broke (the searcher does not tell Optuna an error while the sweep folder refuses
    writes). The resume then runs Tune's errored trials again from their checkpoints, as the
    output-fault message promises; Optuna gets their verdicts at the end (`reconcile_study`)."""
    if not (plan.sweep_dir / "optuna.db").exists():
        return False
    try:
        rows = study_summary(plan.study_url, plan.name)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False
    errored = {t for t, status in trial_statuses(plan.sweep_dir).items() if status == "ERROR"}
    return any(r["state"] == "RUNNING" and r.get("tune_trial_id") in errored for r in rows)


def repair_error_files(sweep_dir: Path) -> list[Path]:
    """A trial's `error.pkl` that a full disk left empty or cut short is removed (its `error.txt`
    says the same in words): Tune reads it back at every restore and an unreadable one stops the
    resume with a bare `EOFError`. Returns the files removed."""
    import pickle

    removed = []
    for path in sweep_dir.glob("trial_*/error.pkl"):
        try:
            with open(path, "rb") as f:
                pickle.load(f)
        except (EOFError, pickle.UnpicklingError, ValueError):  # empty or cut short
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        logger.warning("removed %d unreadable trial error file(s) (%s)", len(removed),
                       ", ".join(p.parent.name for p in removed))
    return removed


def close_runs(tracker, parent: str) -> bool:
    """Mark the MLflow runs of a sweep or ramp (`parent` and its children) that are still RUNNING as
    KILLED (a resume sets them RUNNING again); False when the store cannot be written either."""
    try:
        for run in tracker.children(parent):
            if run.status == "RUNNING":
                tracker.close_run(run.run_id, "KILLED")
        tracker.close_run(parent, "KILLED")
        return True
    except Exception as e:  # the store on the same full disk
        logger.warning("could not close the MLflow runs of %s: %s", parent, e)
        return False


def save_elsewhere(plan: SweepPlan) -> Path | None:
    """The sweep's trials as its Optuna study holds them (read-only: the study's disk may be full),
    written to trials.csv in a new temporary folder (TMPDIR or /tmp, another file system than
    `--out` as a rule); None when that fails too."""
    try:
        rows = study_summary(plan.study_url, plan.name)
        keys = plan.space.keys
        table = pd.DataFrame([{"trial_id": r.get("tune_trial_id"), "optuna_number": r["number"],
                               "optuna_state": r["state"], **{k: r["params"].get(k) for k in keys},
                               VERDICT: r.get(VERDICT), REASON: r.get(REASON),
                               FIRST_BAD_STEP: r.get(FIRST_BAD_STEP), STEPS: r.get(STEPS),
                               OBJECTIVE: r["value"]} for r in rows])
        path = Path(tempfile.mkdtemp(prefix=f"stablesweep-{plan.name}-")) / "trials.csv"
        table.to_csv(path, index=False)
        return path
    except Exception as e:  # the study unreadable, or no room here either
        logger.warning("could not save the sweep's trials elsewhere: %s", e)
        return None


_TUNE_STATE = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl")


def repair_tune_state(experiment: Path) -> None:
    """Tune writes its state whole to a staging folder of its Ray session first (RAY_TMPDIR or
    /tmp, ray/session_*/artifacts/*/NAME/driver_artifacts, NAME the experiment folder's name: a
    sweep's, or `tune` for a ramp's), then copies it to the experiment folder. A copy that failed
    (disk full) leaves the folder's experiment_state-*.json cut short (Tune then restores no trial
    at all) or older than the staged one (Tune would forget the trials that started or ended since,
    though Optuna and MLflow know them). The newest whole staged copy of this experiment is put back
    in place when it is newer: of this experiment means its trial folders are this one's, and its
    trials include those of the folder's own whole copy, if any."""
    states = list(experiment.glob(_TUNE_STATE[0]))
    if not states:
        return
    whole = [(p.stat().st_mtime, p.name, ids) for p in states if (ids := _trial_ids(p)) is not None]
    newest = max(w[0] for w in whole) if whole else None
    known = max(whole, key=lambda w: w[1])[2] if whole else set()
    if newest is not None and not known:
        return  # nothing to tell this sweep's staged copies from another sweep's of the same name
    mine = {p.name for p in experiment.glob("trial_*")}
    root = Path(os.environ.get("RAY_TMPDIR", tempfile.gettempdir())) / "ray"
    # other Ray sessions on this machine (another sweep's, ending now) may remove their files meanwhile
    staged = sorted((m, p) for p in root.glob(f"session_*/artifacts/*/{experiment.name}/driver_artifacts/"
                                              f"{_TUNE_STATE[0]}") if (m := _mtime(p)) is not None)
    for mtime, state in reversed(staged):
        if newest is not None and mtime <= newest:
            return  # the sweep folder's copy is whole and as new as any staged one
        ids = _trial_ids(state)
        if ids is not None and known <= ids and {p.name for p in state.parent.glob("trial_*")} <= mine:
            for pattern in _TUNE_STATE:
                for p in experiment.glob(pattern):
                    p.unlink()
                for p in state.parent.glob(pattern):
                    shutil.copy2(p, experiment / p.name)
            logger.warning("Tune's state in %s was %s; restored its last whole copy from %s", experiment,
                           "older than its staged copy" if newest is not None else "cut short", state.parent)
            return
    if newest is None:
        logger.warning("Tune's state in %s was cut short and no whole copy was found", experiment)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


RERUN_OF = "rerun_of"  # Optuna user attr: the number of the trial (lost by Tune) that this one runs again


def newest_state(folder: Path) -> Path | None:
    """The experiment_state-*.json that Tune restores: the greatest name (each run of the driver
    writes its own, named by its start time). Not the newest by mtime: every sync of the folder
    touches them all, so an older run's file, which lacks the trials started since, may tie."""
    return max(folder.glob(_TUNE_STATE[0]), key=lambda p: p.name, default=None)


def trial_ids_of(plan: SweepPlan) -> set[str]:
    return trial_ids_in(plan.sweep_dir)


def trial_ids_in(folder: Path) -> set[str]:
    """The trial ids of the Tune experiment in `folder`, as its newest whole state holds them."""
    newest = newest_state(folder)
    return (_trial_ids(newest) or set()) if newest is not None else set()


def trial_statuses(folder: Path) -> dict[str, str]:
    """Each trial's status (RUNNING, TERMINATED, ERROR...) in the newest state of the Tune experiment
    in `folder`; empty when there is none or it is not whole. A trial in ERROR whose end its searcher
    never recorded (a sweep's Optuna trial RUNNING, a ramp's probe without a verdict) was broken by
    an output fault: the resume runs it again."""
    newest = newest_state(folder)
    if newest is None:
        return {}
    try:
        return {(t := json.loads(x[0]))["trial_id"]: t.get("status") for x in json.loads(newest.read_text())["trial_data"]}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return {}


def delete_other_runs(tracker, parent: str, keep: set[str]) -> list[str]:
    """Child runs of `parent` whose trial is not in `keep` closed and deleted (MLflow keeps them in
    its trash): a ramp's probes that Tune lost or runs again under another trial. Returns their trials."""
    from stablesweep.tracking import TRIAL_TAG

    gone = []
    for run in tracker.children(parent):
        tid = run.tags.get(TRIAL_TAG)
        if tid not in keep:
            if run.status == "RUNNING":
                tracker.close_run(run.run_id, "KILLED")
            tracker.delete_run(run.run_id)
            gone.append(tid)
    if gone:
        logger.warning("deleted %d MLflow run(s) of trials that run again (%s)", len(gone), ", ".join(map(str, gone)))
    return gone


def rerun_lost_trials(plan: SweepPlan, known: set[str]) -> list[int]:
    """Trials that ended (Optuna was told, MLflow has their run) after Tune's last saved state, so
    that the restored Tune does not hold them (a disk full: Tune's state could not be written): their
    settings are queued in Optuna to run again under new Tune trials, each marked `rerun_of` the lost
    one, so every setting ends in exactly one trial of the sweep's table. Returns their numbers."""
    if not (plan.sweep_dir / "optuna.db").exists():
        return []
    try:
        study = open_study(plan.study_url, plan.name, create=False)
    except KeyError:  # the study was never made
        return []
    trials = study.get_trials(deepcopy=False)
    rerun = {t.user_attrs.get(RERUN_OF) for t in trials}
    lost = [t for t in trials if t.state.is_finished() and t.user_attrs.get("tune_trial_id") not in (known | {None})
            and t.user_attrs.get(VERDICT) != ABANDONED and t.number not in rerun]
    for t in lost:
        study.enqueue_trial(t.params, user_attrs={RERUN_OF: t.number})
    return [t.number for t in lost]


def _trial_ids(path: Path) -> set[str] | None:
    """The trial ids in a Tune experiment_state-*.json; None when it is not whole."""
    try:
        return {json.loads(t[0])["trial_id"] for t in json.loads(path.read_text())["trial_data"]}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def can_restore(path: str) -> bool:
    """Tune's experiment at `path` (a directory or a URI) exists, with its state (a kill before
    Tune's first snapshot leaves none: the run then starts Tune afresh; the sweep's Optuna study
    keeps what it knew)."""
    from ray import tune

    if uri_scheme(path) is None:
        return tune.Tuner.can_restore(path) and bool(list(Path(path).glob("experiment_state-*.json")))
    try:
        import pyarrow.fs as pafs

        if not tune.Tuner.can_restore(path):
            return False
        fs, where = pafs.FileSystem.from_uri(path)
        infos = fs.get_file_info(pafs.FileSelector(where, allow_not_found=True))
        return any(Path(i.path).name.startswith("experiment_state-") for i in infos)
    except Exception as e:
        logger.warning("cannot read Tune's experiment at %s (%s); starting Tune afresh", path, e)
        return False


def delete_lost_runs(tracker, parent: str, plan: SweepPlan, trial_ids: set[str]) -> None:
    """Child runs of trials that Tune lost at a fault are closed and deleted (MLflow keeps them in
    its trash), so that the sweep shows one child run a trial of its table. Lost: not in the
    table, and either run again (see `rerun_lost_trials`) or never ended (started after Tune's
    last saved state; its Optuna trial went to a new Tune trial)."""
    from stablesweep.tracking import TRIAL_TAG

    rows = study_summary(plan.study_url, plan.name)
    again = {r[RERUN_OF] for r in rows if RERUN_OF in r}
    rerun = {r.get("tune_trial_id") for r in rows if r["number"] in again}
    for run in tracker.children(parent):
        tid = run.tags.get(TRIAL_TAG)
        if tid not in trial_ids and (tid in rerun or VERDICT not in run.tags):
            if run.status == "RUNNING":
                tracker.close_run(run.run_id, "KILLED")
            tracker.delete_run(run.run_id)
            logger.warning("deleted MLflow run %s of trial %s, which Tune lost at a fault", run.run_id, tid)
