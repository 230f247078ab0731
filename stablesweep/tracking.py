"""MLflow, and only here: the one module that imports mlflow.

One parent run per sweep (config, space, sampler, seed, code version; the region files as
artifacts) and one child run per trial, nested under it with the `mlflow.parentRunId` tag
(flattened params, metrics at every report step, tags `verdict`, `reason`, `first_bad_step`).
Everything goes through an explicit `MlflowClient` with explicit run ids (no fluent, global
active run), from the driver only.

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
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from stablesweep.vocab import DIVERGED, PRUNED, STABLE

DEFAULT_EXPERIMENT = "stablesweep"
PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "stablesweep.trial_id"
SWEEP_TAG = "stablesweep.sweep"
KIND_TAG = "stablesweep.kind"  # sweep | ramp (parent runs), trial, compare (a report)
PARENT_KINDS = ("sweep", "ramp")
COMPARE_KIND = "compare"


def default_tracking_uri(out: str | Path) -> str:
    return f"sqlite:///{Path(out).resolve() / 'mlflow.db'}"


def ui_command(uri: str) -> str:
    """The command that shows this store (a server URI is opened as it is)."""
    if uri.startswith(("http://", "https://", "databricks")):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"


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
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


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
                    texts: dict[str, str] | None = None) -> str:
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={KIND_TAG: "sweep", SWEEP_TAG: name, **code_version(), **tags})
        run_id = run.info.run_id
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

    # ---- trial (child) runs -----------------------------------------------------------------
    def trial_run(self, parent_id: str, trial_id: str, name: str, params: dict[str, Any],
                  tags: dict[str, str] | None = None) -> str:
        """The child run of a trial: found again if it exists (a resumed sweep), else created."""
        if trial_id in self._runs:
            return self._runs[trial_id]
        found = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
            max_results=1)
        if found:
            run_id = found[0].info.run_id
            if found[0].info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id, run_name=name, tags={
                PARENT_TAG: parent_id, TRIAL_TAG: trial_id, KIND_TAG: "trial", **(tags or {})})
            run_id = run.info.run_id
            self._log_params(run_id, params)
        self._runs[trial_id] = run_id
        return run_id

    def last_step(self, run_id: str) -> int:
        hist = self.client.get_metric_history(run_id, "objective")
        return max((m.step for m in hist), default=-1)

    def log_trial_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        self._log(run_id, metrics, step)

    def finish_trial(self, run_id: str, verdict: str, reason: str | None, first_bad_step: int,
                     summary: dict[str, float], tags: dict[str, str] | None = None) -> None:
        from mlflow.entities import RunTag

        all_tags = {"verdict": verdict, "reason": reason or "", "first_bad_step": str(int(first_bad_step)),
                    **(tags or {})}
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in all_tags.items()])
        logged = self.client.get_run(run_id).data.metrics
        self._log(run_id, {k: v for k, v in summary.items() if k not in logged},
                  step=int(summary.get("steps", 0) or 0))  # only what the live reports did not log
        status = {STABLE: "FINISHED", DIVERGED: "FINISHED", PRUNED: "KILLED"}.get(verdict, "FAILED")
        self.client.set_terminated(run_id, status)

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

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k[:250], param_value(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def _log(self, run_id: str, metrics: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
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
