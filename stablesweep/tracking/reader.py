"""Reading a store back, for `stablesweep compare` and `explain`: the parent runs by
`stablesweep.kind`, their trials by `mlflow.parentRunId`, as plain `RunRecord`s (no mlflow type
leaves the package). `TrackerReader` never creates an experiment or a run; what MLflow raises
comes out as `TrackingError`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from stablesweep.tracking.names import DEFAULT_EXPERIMENT, KIND_TAG, PARENT_KINDS, PARENT_TAG
from stablesweep.tracking.store import TrackingError, _mlflow_errors


@dataclass
class RunRecord:
    """One MLflow run as plain data (no mlflow type leaves the package)."""

    run_id: str
    name: str
    status: str
    start_time: int
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    experiment_id: str = ""


def run_record(run) -> RunRecord:
    return RunRecord(run_id=run.info.run_id, name=run.info.run_name or "", status=run.info.status,
                     start_time=int(run.info.start_time or 0), params=dict(run.data.params),
                     tags=dict(run.data.tags), metrics=dict(run.data.metrics),
                     experiment_id=run.info.experiment_id)


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
        return sorted((run_record(r) for r in runs), key=lambda r: (r.start_time, r.run_id))

    def get_run(self, run_id: str) -> RunRecord | None:
        """One run by its id, or None when the store has no such run."""
        from mlflow.exceptions import MlflowException

        try:
            with _mlflow_errors(self.uri, f"reading run {run_id}"):
                return run_record(self.client.get_run(run_id))
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
        return sorted((run_record(r) for r in runs), key=lambda r: (r.start_time, r.run_id))

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
