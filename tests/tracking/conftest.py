"""The store and the sweep that the tracking tests read: a real embedded MLflow store (sqlite),
one a test module, read back through MLflow's own `MlflowClient`."""
from __future__ import annotations

import pytest
from mlflow import MlflowClient

from tests.tracking.sample import log_sweep


@pytest.fixture(scope="module")
def uri(tmp_path_factory, new_store) -> str:
    return new_store(tmp_path_factory.mktemp("tracking") / "mlflow.db")


@pytest.fixture(scope="module")
def client(uri) -> MlflowClient:
    return MlflowClient(tracking_uri=uri)


@pytest.fixture(scope="module")
def sweep(uri, tmp_path_factory) -> dict:
    """One sweep as the runner writes it (`log_sweep`): its parent, trial runs and region."""
    return log_sweep(uri, tmp_path_factory.mktemp("files"))
