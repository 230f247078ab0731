"""Sweeps (and ramps) read back from MLflow as plain `SweepData`: the one part of the analysis that
reads a store, and it does so through `stablesweep.tracking` (the only module that talks to
MLflow).

The parent runs are found by the tag `stablesweep.kind` (`sweep` or `ramp`), their trials by
`tags.mlflow.parentRunId`; the sweep's base config and search space come from its `config.yaml`
and `space.yaml` artifacts. A trial's numbers are its metrics, its constants (initial loss) its
tags, with its setting's slug (the `setting` tag) and its phase (a replicate, a ramp's range
test); the parent's per-setting metrics (`max_stable_lr.<setting>`, ...) are each setting's answer
as the run's own files state it; a diverged trial's `objective` column is its
`stand_in_objective` (its initial loss), as in the sweep's own trials table. Runs logged by older
versions (an objective for every verdict, constants as metrics, `null` params) read the same.
`sweep_from_runs` turns those plain run records into a `SweepData` (one row a trial),
`read_sweeps` picks the sweeps by name or run id and says what is wrong with a store, an
experiment or a name as an InputError.
"""
from __future__ import annotations

import difflib
import re
from typing import Any, Iterable

import pandas as pd
import yaml

from stablesweep.analysis.answers_by_config import parse_setting_metrics
from stablesweep.analysis.comparison import PHASE_COLUMN, SETTING_COLUMN, SweepData
from stablesweep.tracking import (
    DEFAULT_EXPERIMENT,
    KIND_TAG,
    SETTING_TAG,
    STAND_IN_OBJECTIVE,
    SWEEP_TAG,
    TRIAL_TAG,
    RunRecord,
    TrackerReader,
    TrackingError,
    name_without_verdict,
    probe_store,
)
from stablesweep.vocab import (
    BUDGET_STEPS,
    CATEGORICAL,
    DIVERGED,
    FINAL_LOSS,
    FIRST_BAD_STEP,
    INITIAL_LOSS,
    LOSS,
    LR_KEY,
    OBJECTIVE,
    REASON,
    SEED_KEY,
    STEPS,
    TRAIN_FLOPS,
    UNFINISHED,
    VERDICT,
    InputError,
    finite,
    flatten,
)

# numeric columns of the trials table read back from a child run's metrics
METRICS = (OBJECTIVE, INITIAL_LOSS, FINAL_LOSS, TRAIN_FLOPS, STEPS)


def parse_param(s: Any) -> Any:
    """A param as MLflow holds it (a string, as tracking.param_value wrote it) back to its value:
    none (null), true/false, ints, floats; other strings as they are."""
    if not isinstance(s, str):
        return s
    t = s.strip()
    if t in ("none", "null", "None", ""):
        return None
    if t in ("true", "false"):
        return t == "true"
    if re.fullmatch(r"[-+]?\d+", t):
        return int(t)
    try:
        return float(t)
    except ValueError:
        return s


def sweep_from_runs(parent: RunRecord, children: list[RunRecord], config_text: str | None = None,
                    space_text: str | None = None) -> SweepData:
    """A `SweepData` from plain run records: the parent run, its child runs and, when present,
    the text of its config.yaml and space.yaml artifacts."""
    axes = [k for k in (parent.params.get("space_keys") or "").split(",") if k]
    categorical = None
    if space_text:
        try:
            space = yaml.safe_load(space_text) or {}
            axes = axes or list(space)
            categorical = [k for k, spec in space.items() if k != LR_KEY
                           and isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in CATEGORICAL]
        except yaml.YAMLError:
            pass
    config: dict[str, Any] = {}
    if config_text:
        try:
            raw = yaml.safe_load(config_text)
            config = flatten(raw) if isinstance(raw, dict) else {}
        except yaml.YAMLError:
            pass
    if not axes:  # a ramp: the config keys its probes set (params such as `phase` are no config keys)
        axes = sorted({k for c in children for k in c.params if "." in k and "/" not in k},
                      key=lambda k: (k != LR_KEY, k))
        if categorical is None:  # its settings: those keys but the lr and the seed its replicates vary
            categorical = [k for k in axes if k not in (LR_KEY, SEED_KEY)]
    params = {k: parse_param(v) for k, v in parent.params.items()}
    rows = []
    for c in children:
        row: dict[str, Any] = {"trial_id": c.tags.get(TRIAL_TAG) or c.run_id[:8], "run_id": c.run_id,
                               "name": name_without_verdict(c.name)}
        row.update({k: parse_param(c.params.get(k)) for k in axes})
        first_bad = finite(parse_param(c.tags.get(FIRST_BAD_STEP)))
        budget = finite(parse_param(c.tags.get(BUDGET_STEPS)))
        budget = budget if budget is not None else finite(params.get(BUDGET_STEPS))
        verdict = c.tags.get(VERDICT) or UNFINISHED
        row.update({VERDICT: verdict, REASON: c.tags.get(REASON) or c.tags.get("error") or None,
                    FIRST_BAD_STEP: int(first_bad) if first_bad is not None else -1,
                    BUDGET_STEPS: int(budget) if budget is not None else None,
                    # its setting's slug (the parent's per-setting metrics name it so) and phase
                    SETTING_COLUMN: c.tags.get(SETTING_TAG), PHASE_COLUMN: c.tags.get("phase") or c.params.get("phase")})
        for m in METRICS:
            row[m] = c.metrics.get(m, finite(parse_param(c.tags.get(m))))
        if row[OBJECTIVE] is None and verdict == DIVERGED:
            row[OBJECTIVE] = c.metrics.get(STAND_IN_OBJECTIVE)
        if row[FINAL_LOSS] is None:
            row[FINAL_LOSS] = c.metrics.get(LOSS)
        rows.append(row)
    columns = ["trial_id", "run_id", "name", *axes, VERDICT, REASON, FIRST_BAD_STEP, BUDGET_STEPS, *METRICS,
               SETTING_COLUMN, PHASE_COLUMN]
    return SweepData(name=parent.tags.get(SWEEP_TAG) or parent.name, run_id=parent.run_id,
                     trials=pd.DataFrame(rows, columns=columns), kind=parent.tags.get(KIND_TAG, "sweep"), axes=axes,
                     categorical=categorical, config=config, params=params, status=parent.status,
                     start_time=parent.start_time, experiment_id=parent.experiment_id,
                     setting_answers=parse_setting_metrics(parent.metrics))


def read_sweeps(uri: str, experiment: str | None = None, names: Iterable[str] = (), *, timeout: float = 5.0,
                notes: list[str] | None = None) -> list[SweepData]:
    """The sweeps (and ramps) `names` of `experiment` in the store at `uri` (all of them, oldest
    first, when no name is given). A name is a sweep's name or a run id (or its first 8+
    characters); a name used by several sweeps means the latest (a line in `notes` says so).
    Raises InputError for a store that is not there, an unknown experiment or sweep."""
    experiment = experiment or DEFAULT_EXPERIMENT
    notes = notes if notes is not None else []
    why = probe_store(uri, timeout=timeout)
    if why:
        raise InputError(f"--mlflow {uri}: {why}")
    reader = TrackerReader(uri, experiment)
    try:
        if reader.experiment_id() is None:
            known = reader.experiment_names()
            hint = _did_you_mean(experiment, known)
            raise InputError(f"--experiment {experiment}: no such experiment at {uri}{hint or ';'} experiments "
                             f"there: {', '.join(known) or '(none)'}")
        parents = reader.parent_runs()
        if not parents:
            raise InputError(f"no sweeps in experiment {experiment!r} at {uri}; run `stablesweep sweep CONFIG "
                             f"--space SPACE --mlflow {uri}` first")
        chosen = _select(parents, list(names), experiment, uri, notes)
        counts: dict[str, int] = {}
        for p in chosen:
            name = p.tags.get(SWEEP_TAG) or p.name
            counts[name] = counts.get(name, 0) + 1
        sweeps: list[SweepData] = []
        for p in chosen:
            data = sweep_from_runs(p, reader.child_runs(p.run_id), reader.read_text(p.run_id, "config.yaml"),
                                   reader.read_text(p.run_id, "space.yaml"))
            if counts[data.name] > 1 or any(s.label == data.name for s in sweeps):
                data.label = f"{data.name}@{p.run_id[:8]}"
            sweeps.append(data)
    except TrackingError as e:
        raise InputError(f"--mlflow {uri}: cannot read the store: {e}") from None
    return sweeps


def _select(parents: list[RunRecord], names: list[str], experiment: str, uri: str,
            notes: list[str]) -> list[RunRecord]:
    if not names:
        return parents
    by_name: dict[str, list[RunRecord]] = {}
    for p in parents:
        by_name.setdefault(p.tags.get(SWEEP_TAG) or p.name, []).append(p)
    chosen: list[RunRecord] = []
    for n in names:
        if n in by_name:
            runs = by_name[n]
            if len(runs) > 1:
                notes.append(f"{len(runs)} sweeps are named {n!r}; using the latest (run {runs[-1].run_id}); pass a "
                             f"run id to choose another: {', '.join(r.run_id for r in runs)}")
            pick = runs[-1]
        else:
            ids = [p for p in parents if p.run_id == n or (len(n) >= 8 and p.run_id.startswith(n))]
            if len(ids) != 1:
                known = sorted(by_name)
                hint = _did_you_mean(n, known)
                kinds = sorted({p.tags.get(KIND_TAG, "sweep") for p in parents})
                raise InputError(f"unknown sweep {n!r} in experiment {experiment!r} at {uri}{hint or ';'} "
                                 f"{'/'.join(kinds)}s there: {', '.join(known)}")
            pick = ids[0]
        if all(pick.run_id != c.run_id for c in chosen):
            chosen.append(pick)
    return chosen


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""
