"""MLflow, and only here: the one module that imports mlflow.

One parent run per sweep or ramp (config, space, sampler, seed, code version; the region files as
artifacts; per setting its lr bracket as metrics) and one child run per trial or probe, nested
under it with the `mlflow.parentRunId` tag. Everything goes through an explicit `MlflowClient`
with explicit run ids (no fluent, global active run), from the driver only. docs/mlflow.md says
what a person sees in the UI; in short:

- Status is the verdict's colour: only a stable run is FINISHED (the green tick); stalled,
  diverged and error runs are FAILED, pruned ones KILLED (`STATUS`).
- A finished run's name leads with its verdict: `diverged@10 lr=8.2e+01 slice clip=1.0`,
  `stable lr=3.0e-03 slice clip=1.0` (`run_name`).
- Params are written as the config writes them (YAML scalars, `none` for null); tags hold no
  sentinels (no `first_bad_step` unless a run diverged, no empty `reason`).
- `objective` is logged once, when a run ends, for the runs whose objective is a measurement
  (stable, stalled, pruned); a diverged run's stand-in (its initial loss) is
  `stand_in_objective`, so sorting by objective never ranks a diverged run.
- Constants of a run (`CONSTANTS`: initial loss, FLOPs a step, step budget) are tags, written once.
- A diverged run's last steps are `step_loss` and `step_grad_norm` at their own steps, with
  `diverged_at_step`. Metrics are finite numbers only (inf and NaN are left out: see `_log`).
- Per setting, on the parent: `min_stable_lr.<setting>`, `max_stable_lr.<setting>`,
  `min_diverged_lr.<setting>`, `recommended_lr.<setting>`, `lr_at_5pct_risk.<setting>`,
  `lr_at_50pct.<setting>`; every child has the tag `setting`
  (the same slug, for Group-by) and, once the sweep knows its setting's boundary, `lr_margin`.
- `ui_link` builds a link into the UI's runs table (model-training view, a filter, a sort), or
  to a view that `Tracker.save_view` stored (with our columns as well).

Reading back (`TrackerReader`, for `stablesweep compare`): the parents by `stablesweep.kind`, their
trials by `mlflow.parentRunId`, as plain `RunRecord`s (no mlflow type leaves this module); it never
creates an experiment or a run. The report of `compare` is written back by `Tracker.log_report`,
as a run of kind `compare`. What MLflow raises while reading or logging a report comes out as
`TrackingError`, with the store and the step in its message.

The default store is embedded: `sqlite:///<out>/mlflow.db`, artifacts beside it in
`<out>/mlartifacts` (MLflow 3 refuses the plain file store unless told otherwise).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote, urlencode

from stablesweep.vocab import (
    AT_RISK,
    AT_RISK_SIGNAL,
    AT_RISK_STEP,
    BUDGET_STEPS,
    DIVERGED,
    ERROR,
    FIRST_BAD_STEP,
    FLOPS_PER_STEP,
    INITIAL_LOSS,
    LOSS,
    LR_KEY,
    OBJECTIVE,
    PRUNED,
    REASON,
    STABLE,
    STALLED,
    STEPS,
    VERDICT,
    VERDICTS,
    finite,
    format_value,
    py,
    short_name,
)

logger = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "stablesweep"
PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "stablesweep.trial_id"
SWEEP_TAG = "stablesweep.sweep"
KIND_TAG = "stablesweep.kind"  # sweep | ramp (parent runs), trial, compare (a report)
SETTING_TAG = "setting"  # on every trial and probe: its setting's slug (`setting_slug`)
PARENT_KINDS = ("sweep", "ramp")
COMPARE_KIND = "compare"

# the run status of each verdict: MLflow 3.17 draws FINISHED as a green tick, FAILED and KILLED as
# a red cross; only a run that trained gets the tick
STATUS = {STABLE: "FINISHED", STALLED: "FAILED", DIVERGED: "FAILED", PRUNED: "KILLED", ERROR: "FAILED"}
MEASURED = (STABLE, STALLED, PRUNED)  # verdicts whose objective is a measured loss
STAND_IN_OBJECTIVE = "stand_in_objective"  # a diverged run's objective: its initial loss, not a result
LR_MARGIN = "lr_margin"  # lr / the smallest diverged lr of the run's setting in its sweep
DIVERGED_AT_STEP = "diverged_at_step"
STEP_LOSS, STEP_GRAD_NORM = "step_loss", "step_grad_norm"  # a diverged run's last steps, raw
CONSTANTS = (INITIAL_LOSS, FLOPS_PER_STEP, BUDGET_STEPS)  # the same at every report: tags, once
# per setting on a parent run: `<name>.<setting slug>`
SETTING_METRICS = ("min_stable_lr", "max_stable_lr", "min_diverged_lr", "recommended_lr", "lr_at_5pct_risk",
                   "lr_at_50pct")

UI_PORT = 5000  # where `mlflow ui` listens unless told otherwise
ORDER_BY_OBJECTIVE = f"metrics.`{OBJECTIVE}`"
SHARED_VIEW_TAG = "mlflow.sharedViewState."  # the UI's saved views: an experiment tag each
# the runs table's columns for trials (the UI's canonical keys; run name, created and duration are
# always shown); `Tracker.save_view` adds the swept params
TRIAL_COLUMNS = ("tags.`verdict`", "tags.`setting`", f"params.`{LR_KEY}`", ORDER_BY_OBJECTIVE,
                 f"metrics.`{LR_MARGIN}`", "metrics.`progress`", "metrics.`steps`", "tags.`reason`",
                 f"tags.`{SWEEP_TAG}`")

_LABEL = re.compile(r"^(?:%s)(?:@\d+)?(?: |$)" % "|".join(VERDICTS))  # a verdict leading a run name


def default_tracking_uri(out: str | Path) -> str:
    return f"sqlite:///{Path(out).resolve() / 'mlflow.db'}"


def ui_command(uri: str) -> str:
    """The command that shows this store (a server URI is opened as it is)."""
    if uri.startswith(("http://", "https://", "databricks")):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port {UI_PORT}"


def ui_base(uri: str) -> str:
    """Where the UI of this store is: the server itself, or what `ui_command` starts."""
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return f"http://127.0.0.1:{UI_PORT}"


def ui_link(uri: str, experiment_id: str, filter: str = "", order_by: str = ORDER_BY_OBJECTIVE, *,
            ascending: bool = True, view: str | None = None) -> str:
    """A link into MLflow 3.17's runs table of an experiment, in the model-training view (not the
    GenAI overview the UI opens by default): filtered by `filter` (MLflow search syntax), sorted
    by `order_by` (a canonical key: metrics.`objective`, params.`training.lr`), or showing the
    saved view `view` (`Tracker.save_view`; it holds filter, sort and columns, and the UI applies
    it only when no filter or sort is in the link). A filter on child runs and a sort show the
    runs flat (the UI fetches and nests parents only without them, or when sorted by date)."""
    query = {"workflowType": "machine_learning"}
    if view:
        query["viewStateShareKey"] = view
    else:
        if filter:
            query["searchFilter"] = filter
        query.update(orderByKey=order_by, orderByAsc=str(ascending).lower())
    return f"{ui_base(uri)}/#/experiments/{experiment_id}/runs?{urlencode(query, quote_via=quote)}"


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


def run_link(uri: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the UI (absolute: see `ui_base`), in the model-training view."""
    return f"{ui_base(uri)}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def stable_filter(parent_id: str | None = None) -> str:
    """The filter of the stable trials (of one sweep or ramp: its parent run's id)."""
    return f"tags.verdict = '{STABLE}'" + (f" and tags.`{PARENT_TAG}` = '{parent_id}'" if parent_id else "")


def code_version() -> dict[str, str]:
    from stablesweep import __version__

    tags = {"stablesweep.version": __version__}
    try:
        root = Path(__file__).resolve().parent.parent
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        if sha.returncode == 0 and sha.stdout.strip():
            tags["mlflow.source.git.commit"] = sha.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5)
            tags["stablesweep.git_dirty"] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


def param_value(v: Any) -> str:
    """A value as a YAML config writes it (floats exactly, 1.0e-05 not 1e-05), with `none` for
    null, as names and tables show it (vocab.format_value)."""
    import yaml

    v = py(v)
    if isinstance(v, float):
        return yaml.representer.SafeRepresenter().represent_float(v).value
    return format_value(v)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def verdict_label(verdict: str, first_bad_step: int | None = None) -> str:
    """`diverged@10` (with the step where it began), else the verdict itself."""
    if verdict == DIVERGED and first_bad_step is not None and first_bad_step >= 0:
        return f"{verdict}@{int(first_bad_step)}"
    return verdict


def run_name(verdict: str, first_bad_step: int | None, params: dict[str, Any]) -> str:
    """A finished run's name: its verdict, then its params as the sweep names them:
    `diverged@10 lr=8.2e+01 slice clip=1.0`."""

    return f"{verdict_label(verdict, first_bad_step)} {short_name(params)}".rstrip()


def name_without_verdict(name: str) -> str:
    """A run name without the verdict `finish_trial` put in front: the params' short name."""
    return _LABEL.sub("", name, count=1)


def setting_slug(setting: dict[str, Any]) -> str:
    """A setting (its categorical values, lr excluded) as a short name that MLflow takes in a
    metric name and a tag, without "/" (which would split the UI's chart sections):
    `bf16_slice_clip-1.0`; `all` when there is nothing to tell apart."""

    text = short_name({k: v for k, v in setting.items() if k != LR_KEY})
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text.replace("=", "-")) or "all"


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(round(seconds * 1000))


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
                location = Path(self.artifact_root).resolve().as_uri() if self.artifact_root else None
                self._experiment_id = self.client.create_experiment(self.experiment, artifact_location=location)
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
            elif path.exists():
                self.client.log_artifact(run_id, str(path))
        self.client.set_terminated(run_id, status)

    def log_setting_metrics(self, parent_id: str, settings: Iterable) -> None:
        """Per setting, its numbers on the parent run, those that are known: the stable band
        (`min_stable_lr.<slug>`, `max_stable_lr.<slug>`), `min_diverged_lr.<slug>`, `recommended_lr.<slug>`
        and, measured with replicates, `lr_at_5pct_risk.<slug>` and `lr_at_50pct.<slug>` (the slug has
        no "/", which would split the UI's chart sections). A setting is a
        region `Group` (its `key` and attributes of those names) or a dict as a ramp summarises
        a setting (its `params` and keys of those names)."""
        metrics = {}
        for s in settings:
            get = s.get if isinstance(s, dict) else (lambda k, s=s: getattr(s, k, None))
            slug = setting_slug(s["params"] if isinstance(s, dict) else s.key)
            for name in SETTING_METRICS:
                v = finite(get(name))
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
        columns = list(dict.fromkeys([*TRIAL_COLUMNS, *(f"params.`{k}`" for k in params)]))
        state = {"searchFilter": filter, "orderByKey": order_by, "orderByAsc": ascending,
                 "selectedColumns": columns}
        text = json.dumps(state, sort_keys=True)
        key = "stablesweep-" + hashlib.sha256(text.encode()).hexdigest()[:16]
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

    # ---- reading back -----------------------------------------------------------------------
    def children(self, parent_id: str) -> list:
        return self.client.search_runs([self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'",
                                       max_results=10000)

    def sweep_runs(self) -> list:
        return self.client.search_runs([self.experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'sweep'",
                                       max_results=1000)


# ---- reading back, for `stablesweep compare` ------------------------------------------------------

class TrackingError(RuntimeError):
    """The store could not be read or written (a wrapped MlflowException, database or connection
    error)."""


@dataclass
class RunRecord:
    """One MLflow run as plain data (no mlflow types leave this module)."""

    run_id: str
    name: str
    status: str
    start_time: int
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    experiment_id: str = ""


def _record(run) -> RunRecord:
    return RunRecord(run_id=run.info.run_id, name=run.info.run_name or "", status=run.info.status,
                     start_time=int(run.info.start_time or 0), params=dict(run.data.params),
                     tags=dict(run.data.tags), metrics=dict(run.data.metrics),
                     experiment_id=run.info.experiment_id)


def store_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (relative or absolute), else None."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///"))
    return None


def create_store(uri: str) -> None:
    """Make sure a sqlite MLflow store at `uri` is whole before a sweep or ramp writes to it.

    A new store is made under a temporary name and renamed into place: a Ctrl-C while MLflow
    creates its tables (a few seconds of migrations) leaves no half-made store. A store left
    half-made all the same (by an older version, or a migration interrupted later) holds
    `_alembic_tmp_*` tables that fail every later use (`table _alembic_tmp_experiments already
    exists`): with no run in it, it is made again from scratch; with runs, each leftover table whose
    own table is still there is dropped, and MLflow redoes that migration."""
    path = store_path(uri)
    if path is None:
        return
    if path.exists():
        if not _repair_store(path):
            return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments()  # runs the migrations
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _repair_store(path: Path) -> bool:
    """Repair a store with leftover `_alembic_tmp_*` tables (see `create_store`); True when it
    holds no run and is to be made again (the file is then removed)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        leftovers = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
        if not leftovers:
            return False
        if "runs" not in tables or not db.execute("SELECT 1 FROM runs LIMIT 1").fetchone():
            logger.warning("%s was left half-made (%s) and holds no run: making it again", path, ", ".join(leftovers))
            db.close()
            path.unlink()
            return True
        for t in leftovers:
            if t.removeprefix("_alembic_tmp_") not in tables:
                raise TrackingError(f"{path}: an interrupted MLflow migration left {t} without "
                                    f"{t.removeprefix('_alembic_tmp_')}; back up the file and repair it by hand")
            db.execute(f'DROP TABLE "{t}"')
        db.commit()
    logger.warning("%s: dropped the tables an interrupted MLflow migration left (%s)", path, ", ".join(leftovers))
    return False


def probe_store(uri: str, timeout: float = 5.0) -> str | None:
    """None when there is something to read at `uri`; otherwise why not, in words. One HTTP
    request (any HTTP answer counts: the server is up) or a file check; it never waits out
    MLflow's own retries (minutes, by default). Opening a missing sqlite file would create an
    empty store, so a missing file is refused here."""
    import urllib.error
    import urllib.request

    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout):
                return None
        except urllib.error.HTTPError:
            return None  # something answers HTTP there: MLflow itself says what is wrong, if anything
        except (urllib.error.URLError, OSError, ValueError) as e:
            why = getattr(e, "reason", None) or e
            return f"no MLflow server answers at {uri} ({why}; waited at most {timeout:g}s)"
    path = store_path(uri)
    if path is not None:
        if not path.is_file():
            return f"no MLflow store at {uri} (no file {path.resolve()})"
        return _not_mlflow_sqlite(path)
    elif uri.startswith("file:") or "://" not in uri:
        local = Path(uri.removeprefix("file://").removeprefix("file:"))
        if not local.exists():
            return f"no MLflow store at {uri} (no directory {local.resolve()})"
    return None


def _not_mlflow_sqlite(path: Path) -> str | None:
    """Why the file is no MLflow store (None when it is one), read without writing: MLflow itself
    would turn any sqlite file, even an empty one, into a store by adding its tables."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as e:
        return f"{path} is not an MLflow store ({e})"
    if not {"alembic_version", "experiments", "runs"} <= tables:
        return f"{path} is not an MLflow store (" + (f"its tables: {', '.join(sorted(tables))}" if tables
                                                     else "an empty database") + "); nothing was changed in it"
    return None


class _mlflow_errors:
    """Turns MLflow's exceptions (and a server lost mid-read) into TrackingError."""

    def __init__(self, uri: str, what: str):
        self.uri, self.what = uri, what

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        if exc is None:
            return False
        from mlflow.exceptions import MlflowException
        from sqlalchemy.exc import SQLAlchemyError

        # requests' errors are OSErrors; a sqlite file that is no MLflow store raises SQLAlchemy's
        if isinstance(exc, (MlflowException, OSError, SQLAlchemyError)):
            msg = str(getattr(exc, "message", None) or exc).strip().splitlines()
            raise TrackingError(f"{self.what} at {self.uri}: {msg[0] if msg else type(exc).__name__}") from exc
        return False


def _search_all(client, experiment_id: str, filter_string: str, order_by: list[str] | None = None) -> list:
    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000,
                                  order_by=order_by, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


class TrackerReader:
    """Read-only helpers over one experiment: never creates the experiment or any run."""

    def __init__(self, uri: str, experiment: str = DEFAULT_EXPERIMENT):
        self.uri = uri
        self.experiment = experiment
        self._client = None
        self._experiment_id: str | None = None

    @property
    def client(self):
        if self._client is None:
            from mlflow import MlflowClient

            with _mlflow_errors(self.uri, "opening the MLflow store"):
                self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def experiment_id(self) -> str | None:
        """The experiment's id, or None when there is no experiment of that name."""
        if self._experiment_id is None:
            with _mlflow_errors(self.uri, f"looking up experiment {self.experiment!r}"):
                exp = self.client.get_experiment_by_name(self.experiment)
            self._experiment_id = exp.experiment_id if exp is not None else None
        return self._experiment_id

    def experiment_names(self) -> list[str]:
        with _mlflow_errors(self.uri, "listing experiments"):
            return sorted(e.name for e in self.client.search_experiments())

    def parent_runs(self, kinds: Iterable[str] = PARENT_KINDS) -> list[RunRecord]:
        """The sweep (and ramp) runs of the experiment, oldest first."""
        eid = self.experiment_id()
        if eid is None:
            return []
        runs = []
        with _mlflow_errors(self.uri, "searching runs"):
            for kind in kinds:
                runs += _search_all(self.client, eid, f"tags.`{KIND_TAG}` = '{kind}'")
        return sorted((_record(r) for r in runs), key=lambda r: (r.start_time, r.run_id))

    def get_run(self, run_id: str) -> RunRecord | None:
        """One run by its id, or None when the store has no such run."""
        from mlflow.exceptions import MlflowException

        try:
            with _mlflow_errors(self.uri, f"reading run {run_id}"):
                return _record(self.client.get_run(run_id))
        except TrackingError as e:
            if isinstance(e.__cause__, MlflowException) and e.__cause__.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise

    def child_runs(self, parent_id: str) -> list[RunRecord]:
        """The runs nested under `parent_id` (tags.`mlflow.parentRunId`)."""
        eid = self.experiment_id()
        if eid is None:
            return []
        with _mlflow_errors(self.uri, f"searching the runs of {parent_id}"):
            runs = _search_all(self.client, eid, f"tags.`{PARENT_TAG}` = '{parent_id}'")
        return sorted((_record(r) for r in runs), key=lambda r: (r.start_time, r.run_id))

    def read_text(self, run_id: str, path: str) -> str | None:
        """A text artifact of a run (e.g. config.yaml), or None when it is not there."""
        import os
        import tempfile

        bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # no progress bar for a small file
        try:
            with tempfile.TemporaryDirectory() as tmp:
                local = self.client.download_artifacts(run_id, path, tmp)
                return Path(local).read_text()
        except Exception:  # a missing artifact, or a store without artifact access: not an error here
            return None
        finally:
            if bar is None:
                os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
            else:
                os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar
