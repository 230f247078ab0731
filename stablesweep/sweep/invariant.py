"""The recovery invariant: after any interruption and one `--resume`, every setting of a grid sweep
exactly once in trials.csv, in the Optuna study and in the MLflow store, nothing RUNNING or WAITING;
its replicates' and its rungs' runs (rows of another `phase`) each once in trials.csv and MLflow.
The tests (`tests/sweep/test_runner.assert_exactly_once`) and the fault-injection harness
(`bench/chaos.py`) check it through this one function; a ramp's (every probe once in ramp.json and
MLflow) is `ramp_exactly_once_problems`."""
from __future__ import annotations

import json
import math
from pathlib import Path


def exactly_once_problems(sweep_dir: Path, n_settings: int) -> list[str]:
    """What breaks "every setting exactly once" in trials.csv, the Optuna study and the MLflow
    store (empty: it holds)."""
    import pandas as pd

    from stablesweep.sweep.search import study_summary
    from stablesweep.tracking import STATUS, Tracker

    problems: list[str] = []
    csv = sweep_dir / "trials.csv"
    if not csv.exists():
        return [f"no {csv}"]
    table = pd.read_csv(csv)
    state = json.loads((sweep_dir / "sweep.json").read_text())
    keys = list(state["space"])  # the sweep's axes
    # rows of a replicate round or of the rungs (`phase` other than sweep): each once, not Optuna trials
    others = table[table["phase"] != "sweep"] if "phase" in table.columns else table.iloc[0:0]
    table = table[table["phase"] == "sweep"] if "phase" in table.columns else table
    problems += _other_rows_problems(others, keys, set(table["trial_id"]))

    def plain(row) -> tuple:
        return tuple(None if isinstance(v, float) and math.isnan(v) else v for v in row)

    settings = [plain(row) for row in table[keys].itertuples(index=False)]
    if len(table) != n_settings or len(set(settings)) != n_settings or not table["trial_id"].is_unique:
        problems.append(f"trials.csv: {len(table)} rows, {len(set(settings))} settings, want {n_settings} once each")
    if (table["verdict"] == "unfinished").any():
        problems.append(f"trials.csv: {(table['verdict'] == 'unfinished').sum()} unfinished")
    rows = study_summary(state["study_url"], state["study_name"])
    open_ = [r["number"] for r in rows if r["state"] in ("RUNNING", "WAITING")]
    if open_:
        problems.append(f"optuna: trials {open_} RUNNING/WAITING")
    ids = set(table["trial_id"])
    mine = [r for r in rows if r.get("tune_trial_id") in ids]
    if sorted(r["tune_trial_id"] for r in mine) != sorted(ids):
        problems.append(f"optuna: {len(mine)} trials for the {len(ids)} of trials.csv")
    verdicts = dict(zip(table["trial_id"], table["verdict"]))
    wrong = [r["number"] for r in mine if r.get("verdict") != verdicts[r["tune_trial_id"]]]
    if wrong:
        problems.append(f"optuna: trials {wrong} with another verdict than trials.csv")
    rerun = {r["rerun_of"] for r in mine if "rerun_of" in r}
    stray = [r["number"] for r in rows if r not in mine and r.get("verdict") != "abandoned" and r["number"] not in rerun]
    if stray:
        problems.append(f"optuna: trials {stray} neither in trials.csv, abandoned nor run again")
    tr = Tracker(state["tracking_uri"])
    parents = tr.sweep_runs()
    if [p.run_id for p in parents] != [state["parent_run_id"]] or parents[0].status != "FINISHED":
        problems.append(f"mlflow: parents {[(p.run_id[:8], p.status) for p in parents]}")
    children = tr.children(state["parent_run_id"])
    verdicts.update(zip(others["trial_id"], others["verdict"]))
    if sorted(c.tags.get("stablesweep.trial_id", "?") for c in children) != sorted(verdicts):
        problems.append(f"mlflow: {len(children)} child runs for the {len(verdicts)} trials")
    running = [c.run_id[:8] for c in children if c.status == "RUNNING"]
    if running:
        problems.append(f"mlflow: runs {running} RUNNING")
    status = [c.run_id[:8] for c in children if c.tags.get("stablesweep.trial_id") in verdicts
              and c.status != STATUS[verdicts[c.tags["stablesweep.trial_id"]]]]
    if status:
        problems.append(f"mlflow: runs {status} whose status is not their verdict's")
    return problems


def _other_rows_problems(others, keys: list[str], sweep_ids: set[str]) -> list[str]:
    """A sweep's rows other than its trials (replicates, the rungs' probes): each under its own
    trial, none unfinished, each (phase, budget, setting, lr, seed) once."""
    if others.empty:  # a sweep without replicates or rungs: its table has no phase column
        return []
    problems = []
    ids = list(others["trial_id"])
    if len(set(ids)) != len(ids) or set(ids) & sweep_ids:
        problems.append(f"trials.csv: {len(ids)} replicate or rung rows under {len(set(ids) - sweep_ids)} trials")
    if (others["verdict"] == "unfinished").any():
        problems.append(f"trials.csv: {(others['verdict'] == 'unfinished').sum()} replicate or rung rows unfinished")
    cols = ["phase", *(c for c in ("budget_steps", "seed") if c in others.columns), *keys]
    runs = [tuple(None if isinstance(v, float) and math.isnan(v) else v for v in row)
            for row in others[cols].itertuples(index=False)]
    if len(set(runs)) != len(runs):
        problems.append("trials.csv: a replicate or rung run (phase, budget, seed, setting, lr) more than once")
    return problems


def ramp_exactly_once_problems(ramp_dir: Path) -> list[str]:
    """The same invariant for a ramp: every probe of ramp.json (its range tests too) under its own
    trial, exactly one MLflow child run a probe with the probe's verdict as its status, nothing
    RUNNING, one parent run of the ramp, FINISHED (empty: it holds)."""
    from stablesweep.tracking import STATUS, Tracker

    problems: list[str] = []
    doc_path, state_path = ramp_dir / "ramp.json", ramp_dir / "run.json"
    if not doc_path.exists() or not state_path.exists():
        return [f"no {doc_path} or {state_path}"]
    doc, state = json.loads(doc_path.read_text()), json.loads(state_path.read_text())
    probes = [p for x in doc["settings"] for p in [*x["probe_list"], *([x["range_test"]] if x["range_test"] else [])]]
    ids = [p["trial_id"] for p in probes]
    if None in ids or len(set(ids)) != len(ids):
        problems.append(f"ramp.json: {len(ids)} probes under {len(set(ids) - {None})} trials")
    keys = [(x["setting"], p.get("budget"), p["phase"], p["lr"], p["seed"]) for x in doc["settings"]
            for p in x["probe_list"]]
    if len(set(keys)) != len(keys):
        problems.append("ramp.json: a probe (setting, rung budget, phase, lr, seed) more than once")
    tr = Tracker(state["tracking_uri"], experiment=state["experiment"])
    parents = [p for p in tr.sweep_runs(kind="ramp") if p.tags.get("sweep_dir") == str(ramp_dir)]
    if [p.run_id for p in parents] != [state["parent_run_id"]] or parents[0].status != "FINISHED":
        problems.append(f"mlflow: parents {[(p.run_id[:8], p.status) for p in parents]}")
    children = tr.children(state["parent_run_id"])
    if sorted(c.tags.get("stablesweep.trial_id", "?") for c in children) != sorted(map(str, ids)):
        problems.append(f"mlflow: {len(children)} child runs for the {len(ids)} probes")
    running = [c.run_id[:8] for c in children if c.status == "RUNNING"]
    if running:
        problems.append(f"mlflow: runs {running} RUNNING")
    verdicts = {p["trial_id"]: p["verdict"] for p in probes}
    wrong = [c.run_id[:8] for c in children if c.tags.get("stablesweep.trial_id") in verdicts
             and (c.status != STATUS[verdicts[c.tags["stablesweep.trial_id"]]]
                  or c.tags.get("verdict") != verdicts[c.tags["stablesweep.trial_id"]])]
    if wrong:
        problems.append(f"mlflow: runs {wrong} whose status or verdict is not their probe's")
    return problems
