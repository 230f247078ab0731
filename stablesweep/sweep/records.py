"""Tune's trials as records and as one table: a row a trial, with its one verdict.

`trial_records` reads a ResultGrid (with Tune's own trial status, which tells an interrupted trial
from an ended one); `trials_table` turns the records into the table the region, the study and
MLflow are reconciled from. Plain data apart from the grid: tested without Ray.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from stablesweep.sweep.space import SearchSpace
from stablesweep.sweep.stopper import Outcome, final_verdict
from stablesweep.vocab import (
    BUDGET_STEPS,
    DIVERGED,
    FINAL_LOSS,
    FINISHED,
    FIRST_BAD_STEP,
    FLOPS_PER_STEP,
    INITIAL_LOSS,
    LOSS,
    NONFINITE_STEPS,
    OBJECTIVE,
    PROGRESS,
    REASON,
    SAMPLES_PER_S,
    STEP,
    STEPS,
    TRAIN_FLOPS,
    UNFINISHED,
    VERDICT,
    short_name,
)


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
        return bool(r.get(FINISHED)) or r.get(VERDICT) == DIVERGED or bool(r.get("done"))


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
            outcome = Outcome(UNFINISHED, steps=int(m.get(STEP) or 0))
        outcomes[tid] = outcome
        row = {"trial_id": tid, "name": short_name({k: params.get(k) for k in space.keys})}
        row.update({k: params.get(k) for k in space.keys})
        row.update({
            VERDICT: outcome.verdict, REASON: outcome.reason, FIRST_BAD_STEP: outcome.first_bad_step,
            STEPS: outcome.steps, BUDGET_STEPS: m.get(BUDGET_STEPS), "reports": m.get("training_iteration"),
            OBJECTIVE: m.get(OBJECTIVE), INITIAL_LOSS: m.get(INITIAL_LOSS), FINAL_LOSS: m.get(LOSS),
            PROGRESS: m.get(PROGRESS),
            TRAIN_FLOPS: m.get(TRAIN_FLOPS), FLOPS_PER_STEP: m.get(FLOPS_PER_STEP),
            SAMPLES_PER_S: m.get(SAMPLES_PER_S), NONFINITE_STEPS: m.get(NONFINITE_STEPS),
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


