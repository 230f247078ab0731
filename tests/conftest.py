"""Shared fixtures: one local Ray for the whole session (started only if a test asks for it),
throwaway MLflow sqlite stores (copies of one store migrated once a session) and the CLI called
in this process."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]  # the repository
DEMO = ROOT / "configs" / "demo.yaml"  # the demo config: synthetic data, a small CNN, CPU

# Every Ray the suite starts registers its node on loopback: the session's (below) and those that
# the CLI starts in a test's subprocess (stablesweep reads this; Ray rewrites 127.0.0.1 itself to
# the machine's outward address, so a loopback Ray takes 127.0.0.2).
LOOPBACK_NODE_IP = "127.0.0.2"
os.environ.setdefault("STABLESWEEP_RAY_NODE_IP", LOOPBACK_NODE_IP)
# One OpenMP thread where nothing sets torch's threads (the commands in a test's subprocess that
# train: diagnose's probe, explain's replays); `train` sets the machine's CPUs and a trial its own.
# The suite runs its files in several processes on few cores, where two threads a process each run
# several times slower than one.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """torch trains on one thread in the test process (as OMP_NUM_THREADS above; a command called
    in this process that sets its own, such as `train`, is put back to one before the next test)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the test session: 2 CPUs, no GPUs, no dashboard; shut down at the end."""
    import ray

    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False, _node_ip_address=os.environ["STABLESWEEP_RAY_NODE_IP"])
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def new_store(tmp_path_factory):
    """`new_store(path)`: an empty MLflow sqlite store at `path` (a copy of one made by the product's
    own `create_store` once a session: its migrations take 5-9 s), returned as its URI. Sweeps and
    ramps take it as an existing store; tests of how a store is made make their own."""
    from stablesweep.tracking import create_store

    template = tmp_path_factory.mktemp("store_template") / "mlflow.db"
    create_store(f"sqlite:///{template}")

    def make(path: Path) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, path)
        return f"sqlite:///{path}"

    return make


@pytest.fixture
def mlflow_uri(tmp_path, new_store) -> str:
    """A fresh embedded MLflow store for one test."""
    return new_store(tmp_path / "mlflow.db")


def ray_running() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


@pytest.fixture
def cli(capsys, monkeypatch):
    """`cli(*args, cwd=None)`: `stablesweep ARGS` called in this process (`stablesweep.cli.main`),
    as a CompletedProcess (returncode, stdout, stderr; Python's warnings go to pytest, not stderr).
    For runs that start no Ray: the seconds of a subprocess's imports saved. Each command's real
    entry point runs as a subprocess in some test."""
    from stablesweep.cli import main

    def run(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
        argv = [str(a) for a in args]
        if cwd is not None:
            monkeypatch.chdir(cwd)
        ray_before = ray_running()
        capsys.readouterr()  # this call's output only
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's usage errors
            code = e.code
        out = capsys.readouterr()
        assert ray_running() == ray_before, "the call started (or stopped) Ray"
        return subprocess.CompletedProcess(argv, code, out.out, out.err)

    return run


def pytest_collection_modifyitems(config, items):
    """The sweep tests first (tests/sweep: a minute of Ray a file, some of them): with the suite's
    files shared among processes (`make test`), the longest then start first and the processes end
    together. Tests marked `gpu` need a CUDA device: skipped where there is none (`make test-gpu`
    runs them alone, on a GPU machine)."""
    items.sort(key=lambda item: "tests/sweep/" not in item.nodeid)  # stable: the order within stays
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (make test-gpu on a GPU machine)")
    for item in gpu:
        item.add_marker(skip)


def stable_result(step, objective, finished=False):
    """A trial's Tune result as the trainable reports it at `step`, stable so far."""
    return {"step": step, "verdict": "stable", "reason": None, "first_bad_step": -1, "objective": objective,
            "finished": finished, "training_iteration": step // 10}


def diverged_result(step, first_bad, reason="nonfinite_loss", stand_in=4.0):
    """A trial's Tune result at `step`, diverged at `first_bad` (its objective the stand-in)."""
    return {"step": step, "verdict": "diverged", "reason": reason, "first_bad_step": first_bad,
            "objective": stand_in, "finished": True, "training_iteration": step // 10}
