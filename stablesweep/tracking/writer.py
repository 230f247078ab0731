"""Writing runs: `Tracker`, a narrow interface over one MLflow experiment, from the driver only.

One parent run per sweep or ramp (config, space, sampler, seed, code version; the region files as
artifacts; per setting its lr bracket as metrics) and one child run per trial or probe, nested
under it with the `mlflow.parentRunId` tag. Everything goes through an explicit `MlflowClient`
with explicit run ids (no fluent, global active run). What a run's reports chart is one rule,
`trial_metrics`. The package's docstring says what a person sees in the UI.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from stablesweep.tracking.links import ORDER_BY_OBJECTIVE, SHARED_VIEW_TAG, stable_filter, ui_link, view_state
from stablesweep.tracking.names import (
    COMPARE_KIND,
    CONSTANTS,
    DEFAULT_EXPERIMENT,
    DIVERGED_AT_STEP,
    KIND_TAG,
    LR_MARGIN,
    MEASURED,
    PARENT_TAG,
    SETTING_TAG,
    STAND_IN_OBJECTIVE,
    STATUS,
    STEP_GRAD_NORM,
    STEP_LOSS,
    SWEEP_TAG,
    TRIAL_TAG,
    code_version,
    name_without_verdict,
    param_value,
    setting_slug,
    verdict_label,
)
from stablesweep.tracking.reader import RunRecord, run_record
from stablesweep.tracking.store import _mlflow_errors
from stablesweep.vocab import (
    AT_RISK,
    AT_RISK_SIGNAL,
    AT_RISK_STEP,
    DIVERGED,
    ERROR,
    FIRST_BAD_STEP,
    LOSS,
    NOT_METRICS,
    OBJECTIVE,
    REASON,
    REPORT_METRICS,
    SETTING_METRICS,
    STEPS,
    VERDICT,
    finite,
    py,
)

logger = logging.getLogger(__name__)


def stable_trials_link(uri: str, parent_run_id: str, params: Iterable[str] = ()) -> str | None:
    """After a sweep or a ramp: the link to its stable trials, best objective first, with our
    columns (a saved view). None when the store cannot be read back (the sweep's files say all)."""
    try:
        tracker = Tracker(uri)
        experiment_id = tracker.client.get_run(parent_run_id).info.experiment_id
        tracker._experiment_id = experiment_id
        view = tracker.save_view(stable_filter(parent_run_id), params=params)
        return ui_link(uri, experiment_id, view=view)
    except Exception as e:  # a link is a convenience: never fail a finished sweep over it
        logger.warning("no MLflow link (%s: %s)", type(e).__name__, e)
        return None


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(round(seconds * 1000))


def trial_metrics(result: Mapping[str, Any], *, core: bool = False) -> dict[str, int | float]:
    """The numbers of one report (a Tune result, or a row of a trial's reports) that its run
    charts: ints and floats (no bools) under a metric's key, for `Tracker.log_trial_metrics` (which
    writes the constants among them as tags and leaves the objective to `finish_trial`).

    A sweep's trial: every key but those that are never metrics (vocab.NOT_METRICS: Tune's
    bookkeeping, the step, tags and params), so its signals, warning steps and per-dataset numbers
    too. `core`, a ramp's probe (its rows also hold the flattened config and all of Tune's
    columns): only the numbers every report holds (vocab.REPORT_METRICS)."""
    def keep(k: str) -> bool:
        return k in REPORT_METRICS if core else k not in NOT_METRICS

    return {k: v for k, v in result.items() if keep(k) and isinstance(v, (int, float)) and not isinstance(v, bool)}


class Tracker:
    """A narrow interface over one MLflow experiment. Picklable (the client is made lazily)."""

    def __init__(self, uri: str, experiment: str = DEFAULT_EXPERIMENT, artifact_root: str | Path | None = None):
        self.uri = uri
        self.experiment = experiment
        if artifact_root is None and uri.startswith("sqlite:///"):
            # an embedded store keeps its artifacts beside it, not in ./mlruns of whatever directory
            artifact_root = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
        self.artifact_root = str(artifact_root) if artifact_root else None
        self._client = None
        self._experiment_id: str | None = None
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._sweeps: dict[str, str] = {}  # parent run id -> its sweep name
        self._constants: dict[str, set[str]] = {}  # run id -> constants written

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    @property
    def client(self):
        """The MlflowClient, for this package (and tests that inspect the store): code elsewhere
        goes through Tracker's methods, which take and give plain values."""
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is not None:
                self._experiment_id = exp.experiment_id
            else:
                from mlflow.exceptions import MlflowException

                location = Path(self.artifact_root).resolve().as_uri() if self.artifact_root else None
                try:
                    self._experiment_id = self.client.create_experiment(self.experiment, artifact_location=location)
                except MlflowException:  # another sweep into the same store made it a moment before: use it
                    exp = self.client.get_experiment_by_name(self.experiment)
                    if exp is None:
                        raise
                    self._experiment_id = exp.experiment_id
        return self._experiment_id

    # ---- the sweep (parent) run -----------------------------------------------------------
    def start_sweep(self, name: str, params: dict[str, Any], tags: dict[str, str],
                    texts: dict[str, str] | None = None, kind: str = "sweep") -> str:
        """The parent run of a sweep (`kind` sweep) or a ramp (`kind` ramp)."""
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={KIND_TAG: kind, SWEEP_TAG: name, **code_version(), **tags})
        run_id = run.info.run_id
        self._sweeps[run_id] = name
        self._log_params(run_id, params)
        for fname, text in (texts or {}).items():
            self.client.log_text(run_id, text, fname)
        return run_id

    def resume_sweep(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    def end_sweep(self, run_id: str, metrics: dict[str, float], tags: dict[str, str],
                  artifacts: Iterable[Path] = (), status: str = "FINISHED") -> None:
        self._log(run_id, metrics, step=0)
        for k, v in tags.items():
            self.client.set_tag(run_id, k, v)
        for path in artifacts:
            path = Path(path)
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), artifact_path=path.name)
            elif path.exists():  # a recommended/<setting>.yaml keeps its folder: config.yaml is also the run's
                self.client.log_artifact(run_id, str(path),
                                         artifact_path="recommended" if path.parent.name == "recommended" else None)
        self.close_run(run_id, status)

    def log_setting_metrics(self, parent_id: str,
                            settings: Iterable[tuple[dict[str, Any], dict[str, float | None]]]) -> None:
        """Per setting, its numbers on the parent run, those that are known: the stable band
        (`min_stable_lr.<slug>`, `max_stable_lr.<slug>`), `min_diverged_lr.<slug>`, `recommended_lr.<slug>`
        (the best-training lr measured safe), `largest_safe_lr.<slug>` (its cap: the margin below the edge)
        and, measured with replicates, `lr_at_5pct_risk.<slug>` and `lr_at_50pct.<slug>` (the slug has
        no "/", which would split the UI's chart sections). A setting is a pair: its params (the
        categorical values; `setting_slug`) and its numbers by those names (SETTING_METRICS; a
        missing or non-finite one is left out)."""
        metrics = {}
        for params, values in settings:
            slug = setting_slug(params)
            for name in SETTING_METRICS:
                v = finite(values.get(name))
                if v is not None:
                    metrics[f"{name}.{slug}"] = v
        self._log(parent_id, metrics, step=0)

    # ---- trial (child) runs -----------------------------------------------------------------
    def trial_run(self, parent_id: str, trial_id: str, name: str, params: dict[str, Any],
                  tags: dict[str, str] | None = None, *, setting: dict[str, Any] | None = None,
                  started_at: float | None = None) -> str:
        """The child run of a trial or probe: found again if it exists (a resumed sweep), else
        created, named `name` until it ends, with the parent's sweep tag and, given its `setting`
        (the categorical values), the `setting` tag. `started_at` (epoch seconds): when it really
        began, for a run logged after the fact."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
            max_results=1)
        extra = {SETTING_TAG: setting_slug(setting)} if setting is not None else {}
        if found:
            run_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            if extra:
                self._tags(run_id, extra)
        else:
            sweep = self._sweep(parent_id)
            if sweep:
                extra[SWEEP_TAG] = sweep
            run = self.client.create_run(self.experiment_id, run_name=name, start_time=_ms(started_at), tags={
                PARENT_TAG: parent_id, TRIAL_TAG: trial_id, KIND_TAG: "trial", **(tags or {}), **extra})
            run_id = run.info.run_id
            self._log_params(run_id, params)
        self._runs[trial_id] = run_id
        return run_id

    def last_step(self, run_id: str) -> int:
        """The last report step logged (-1: none), so a resumed sweep does not log a step twice."""
        hist = self.client.get_metric_history(run_id, LOSS)
        return max((m.step for m in hist), default=-1)

    def log_trial_metrics(self, run_id: str, metrics: dict[str, Any], step: int, *,
                          timestamp: float | None = None) -> None:
        """One report: its numbers as metrics at `step` (`timestamp`: when it was reported, epoch
        seconds; default now), except the objective (a verdict's number: `finish_trial` logs it),
        the CONSTANTS (tags, once: `log_constants`) and a warning step while it is -1 (no warning
        yet: no sentinel in the charts)."""
        from stablesweep.stability.monitor import warning_key

        def unset(k: str, v: Any) -> bool:
            return (k == AT_RISK_STEP or k.startswith(warning_key(""))) and (finite(v) or 0) < 0

        self.log_constants(run_id, metrics)
        self._log(run_id, {k: v for k, v in metrics.items() if k != OBJECTIVE and k not in CONSTANTS
                           and not unset(k, v)}, step, timestamp=timestamp)

    def log_at_risk(self, run_id: str, result: dict[str, Any], step: int) -> None:
        """The early-warning flag of a report (a bool, which `_log` leaves out): `at_risk` as a
        0/1 metric at `step` and, once raised, the tag `at_risk` = `<signal> at step <step>` (the
        first signal over its threshold). Nothing when the result has no flag."""
        if not isinstance(result.get(AT_RISK), bool):
            return
        self._log(run_id, {AT_RISK: float(result[AT_RISK])}, step)
        if result[AT_RISK]:
            self._tags(run_id, {AT_RISK: f"{result.get(AT_RISK_SIGNAL)} at step {result.get(AT_RISK_STEP)}"})

    def log_constants(self, run_id: str, values: dict[str, Any]) -> None:
        """The CONSTANTS among `values` that are known (finite), as tags, each written once."""
        done = self._constants.setdefault(run_id, set())
        new = {k: param_value(py(values[k])) for k in CONSTANTS
               if k not in done and finite(values.get(k)) is not None}
        if new:
            self._tags(run_id, new)
            done.update(new)

    def log_trial_history(self, run_id: str, history: Iterable[tuple[int, float, float]],
                          diverged_at_step: int | None) -> None:
        """What led a run to diverge: each (step, loss, gradient norm) of its last steps (the
        monitor's history, raw) as `step_loss` and `step_grad_norm` at that step, and
        `diverged_at_step` (the first bad step), at once. Non-finite values are left out (see
        `_log`): the charts end where the numbers did, and `diverged_at_step` says where."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(key, float(x), now, int(step)) for step, loss, gnorm in history
                 for key, x in ((STEP_LOSS, loss), (STEP_GRAD_NORM, gnorm)) if finite(x) is not None]
        if diverged_at_step is not None and diverged_at_step >= 0:
            items.append(Metric(DIVERGED_AT_STEP, float(diverged_at_step), now, int(diverged_at_step)))
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i:i + 1000])

    def set_margin(self, run_id: str, lr_margin: float | None) -> None:
        """`lr_margin` of a trial (lr over the smallest diverged lr of its setting in its sweep),
        when it is known: nothing is logged where nothing in the setting diverged."""
        if finite(lr_margin) is not None:
            self._log(run_id, {LR_MARGIN: lr_margin}, step=0)

    def finish_trial(self, run_id: str, verdict: str, reason: str | None, first_bad_step: int,
                     summary: dict[str, float], tags: dict[str, str] | None = None, *,
                     ended_at: float | None = None) -> None:
        """The end of a trial: its verdict tags, its objective (`objective` when measured,
        `stand_in_objective` for a diverged run, none for an error), the summary numbers the live
        reports did not log, its name led by the verdict, its status (STATUS). `ended_at` (epoch
        seconds): when it really ended, for a run logged after the fact."""
        all_tags = {VERDICT: verdict}
        if verdict == ERROR:
            if reason:
                all_tags["error"] = reason[:5000]
        elif reason:
            all_tags[REASON] = reason
        if verdict == DIVERGED and first_bad_step is not None and first_bad_step >= 0:
            all_tags[FIRST_BAD_STEP] = str(int(first_bad_step))
        self._tags(run_id, {**all_tags, **(tags or {})})
        summary = dict(summary)
        self.log_constants(run_id, summary)
        objective = summary.pop(OBJECTIVE, None)
        run = self.client.get_run(run_id)
        logged = run.data.metrics
        metrics = {k: v for k, v in summary.items() if k not in CONSTANTS and k not in logged}
        if verdict in MEASURED:
            metrics[OBJECTIVE] = objective
        elif verdict == DIVERGED:
            metrics[STAND_IN_OBJECTIVE] = objective
        self._log(run_id, metrics, step=int(summary.get(STEPS, 0) or 0))
        base = name_without_verdict(run.info.run_name or "")
        self.client.update_run(run_id, name=f"{verdict_label(verdict, first_bad_step)} {base}".rstrip())
        self.client.set_terminated(run_id, STATUS.get(verdict, "FAILED"), end_time=_ms(ended_at))

    # ---- links into the UI ------------------------------------------------------------------
    def save_view(self, filter: str, *, order_by: str = ORDER_BY_OBJECTIVE, ascending: bool = True,
                  params: Iterable[str] = ()) -> str:
        """A saved view of the UI's runs table: `filter`, the sort and our columns (TRIAL_COLUMNS
        and the params `params`), as the UI's Share button stores one (an experiment tag
        `mlflow.sharedViewState.<key>`, the key a hash of the view, so a view is stored once).
        Returns the key, for `ui_link(..., view=key)`."""
        key, text = view_state(filter, order_by=order_by, ascending=ascending, params=params)
        with _mlflow_errors(self.uri, "saving a view of the runs table"):
            self.client.set_experiment_tag(self.experiment_id, SHARED_VIEW_TAG + key, text)
        return key

    # ---- the report of `stablesweep compare` -------------------------------------------------
    def log_report(self, name: str, params: dict[str, Any], tags: dict[str, str], files: Iterable[Path],
                   metrics: dict[str, float] | None = None, note: str | None = None) -> str:
        """One finished run of kind `compare` holding a report: its files as artifacts (a
        directory goes in under its own name), `note` as the run's description in the UI."""
        all_tags = {KIND_TAG: COMPARE_KIND, **code_version(), **tags}
        if note:
            limit = 7000
            all_tags["mlflow.note.content"] = note if len(note) <= limit else \
                note[:limit] + "\n\n(truncated: the whole report is the artifact report.md)"
        with _mlflow_errors(self.uri, "logging the report"):
            run_id = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags).info.run_id
            self._log_params(run_id, params)
            self.end_sweep(run_id, metrics or {}, tags={}, artifacts=files)
        return run_id

    def _sweep(self, parent_id: str) -> str:
        """The sweep name of a parent run (its tag), looked up once."""
        if parent_id not in self._sweeps:
            self._sweeps[parent_id] = self.client.get_run(parent_id).data.tags.get(SWEEP_TAG, "")
        return self._sweeps[parent_id]

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], param_value(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def _tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def _log(self, run_id: str, metrics: dict[str, Any], step: int, timestamp: float | None = None) -> None:
        """The finite numbers among `metrics` (no bools, no strings). Not inf or NaN: MLflow stores
        inf as 1.8e308 (a chart of nothing but that spike), and its UI drops the chart of a metric
        whose latest value is NaN; the verdict, reason and `diverged_at_step` tell that story."""
        from mlflow.entities import Metric

        ms = _ms(timestamp) or int(time.time() * 1000)
        items = [Metric(k, float(v), ms, int(step)) for k, v in metrics.items() if finite(v) is not None]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i:i + 1000])

    # ---- reading back, closing, deleting ---------------------------------------------------------
    def children(self, parent_id: str) -> list[RunRecord]:
        """The runs nested under `parent_id` (trials, probes), as plain records."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'",
                                       max_results=10000)
        return [run_record(r) for r in runs]

    def sweep_runs(self, kind: str = "sweep") -> list[RunRecord]:
        """The parent runs of `kind` (sweep, ramp), as plain records."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{KIND_TAG}` = '{kind}'",
                                       max_results=1000)
        return [run_record(r) for r in runs]

    def close_run(self, run_id: str, status: str = "KILLED") -> None:
        """End a run with `status` (FINISHED, FAILED or KILLED), now."""
        self.client.set_terminated(run_id, status)

    def delete_run(self, run_id: str) -> None:
        """Move a run to MLflow's trash (the UI no longer shows it; `mlflow gc` removes it)."""
        self.client.delete_run(run_id)
