"""Shared fixtures: one local Ray for the whole session (started only if a test asks for it) and
throwaway MLflow sqlite stores."""
from __future__ import annotations

import os

import pytest

# Every Ray the suite starts registers its node on loopback: the session's (below) and those that
# the CLI starts in a test's subprocess (stablesweep reads this; Ray rewrites 127.0.0.1 itself to
# the machine's outward address, so a loopback Ray takes 127.0.0.2).
LOOPBACK_NODE_IP = "127.0.0.2"
os.environ.setdefault("STABLESWEEP_RAY_NODE_IP", LOOPBACK_NODE_IP)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the test session: 2 CPUs, no GPUs, no dashboard; shut down at the end."""
    import ray

    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, _node_ip_address=os.environ["STABLESWEEP_RAY_NODE_IP"])
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture
def mlflow_uri(tmp_path) -> str:
    """A fresh embedded MLflow store for one test."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"
