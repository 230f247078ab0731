"""Signals as a cluster scheduler sends them: SIGTERM to the driver of a real sweep (the CLI in a
subprocess, on the session's Ray) stops it as Ctrl-C does, with everything recorded and closed,
and one --resume finishes it with every setting exactly once."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from stablesweep.sweep.search import study_summary
from stablesweep.tracking import Tracker
from tests.conftest import DEMO, ROOT
from tests.sweep.test_runner import INTERVAL, N_GRID, STEPS, _kill_group, assert_exactly_once, grid_space


def _wait_for_lines(proc: subprocess.Popen, log, prefix: str, n: int, timeout: float) -> list[str]:
    deadline = time.time() + timeout
    lines: list[str] = []
    while time.time() < deadline and proc.poll() is None:
        lines = [ln for ln in log.read_text().splitlines() if ln.startswith(prefix)]
        if len(lines) >= n:
            break
        time.sleep(0.2)
    return lines


@pytest.mark.faults
def test_sigterm_stops_a_sweep_as_ctrl_c_does_then_resume_finishes_it(ray_cluster, tmp_path):
    out, space = tmp_path / "out", grid_space(tmp_path)
    address = ray_cluster.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "stablesweep", "sweep", str(DEMO), "--space", str(space), "--sampler", "grid",
           "--steps", str(STEPS), "--set", f"training.report_interval={INTERVAL}", "--no-asha",
           "--max-concurrent", "1", "--out", str(out), "--name", "t", "--address", address]
    log = tmp_path / "first.log"
    first = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        done = _wait_for_lines(first, log, "[", 1, 150)
        assert first.poll() is None and 1 <= len(done) < N_GRID, log.read_text()[-3000:]
        os.kill(first.pid, signal.SIGTERM)  # the driver only, by its PID, as a scheduler's preemption
        first.wait(timeout=120)
    finally:
        _kill_group(first)
    text = log.read_text()
    assert first.returncode == 143, text[-3000:]
    assert "*** SIGTERM received" not in text
    assert "terminated (SIGTERM): continue with  stablesweep sweep" in text and "--resume" in text, text[-3000:]

    sweep_dir = out / "t"
    state = json.loads((sweep_dir / "sweep.json").read_text())
    tracker = Tracker(state["tracking_uri"])
    assert [p.status for p in tracker.sweep_runs()] == ["KILLED"]
    assert not [c for c in tracker.children(state["parent_run_id"]) if c.status == "RUNNING"]
    # Optuna: nothing WAITING; RUNNING only the trials that Tune stopped mid-way (trials.csv's
    # unfinished ones), which --resume restores and tells
    rows = study_summary(state["study_url"], state["study_name"])
    table = pd.read_csv(sweep_dir / "trials.csv")
    unfinished = set(table.loc[table["verdict"] == "unfinished", "trial_id"])
    assert not [r for r in rows if r["state"] == "WAITING"], rows
    assert {r.get("tune_trial_id") for r in rows if r["state"] == "RUNNING"} == unfinished, rows
    finished = table[table["verdict"] != "unfinished"]
    assert len(finished) >= 1
    by_trial = {r.get("tune_trial_id"): r for r in rows}
    assert all(by_trial[t]["verdict"] == v for t, v in zip(finished["trial_id"], finished["verdict"]))

    second = subprocess.Popen(cmd + ["--resume"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              cwd=ROOT, start_new_session=True)
    try:
        output, _ = second.communicate(timeout=240)
    finally:
        _kill_group(second)
    assert second.returncode == 0, output[-4000:]
    table = assert_exactly_once(sweep_dir)
    assert set(table["verdict"]) <= {"stable", "diverged"}


@pytest.mark.faults
def test_two_sweeps_started_at_once_into_one_out_both_keep_every_record(ray_cluster, tmp_path):
    """Two sweeps of different names into one fresh --out, started together: both make the MLflow
    store at the same moment (its migrations take seconds); neither loses a run to the other."""
    out, space = tmp_path / "out", tmp_path / "two.yaml"
    space.write_text("training.lr: {grid: [1.0e-3, 1.0e+3]}\n")
    address = ray_cluster.get_runtime_context().gcs_address
    procs = {}
    for name in ("a", "b"):
        cmd = [sys.executable, "-m", "stablesweep", "sweep", str(DEMO), "--space", str(space), "--sampler", "grid",
               "--steps", str(STEPS), "--set", f"training.report_interval={INTERVAL}", "--no-asha",
               "--max-concurrent", "1",
               "--out", str(out), "--name", name, "--address", address]
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                       start_new_session=True)
    outputs = {}
    try:
        for name, proc in procs.items():
            outputs[name], _ = proc.communicate(timeout=240)
    finally:
        for proc in procs.values():
            _kill_group(proc)
    for name, proc in procs.items():
        assert proc.returncode == 0, outputs[name][-4000:]
        assert "readonly" not in outputs[name]
    tracker = Tracker(f"sqlite:///{out / 'mlflow.db'}")
    parents = {p.tags.get("stablesweep.sweep"): p for p in tracker.sweep_runs()}
    assert set(parents) == {"a", "b"} and all(p.status == "FINISHED" for p in parents.values())
    for name, parent in parents.items():
        table = pd.read_csv(out / name / "trials.csv")
        children = tracker.children(parent.run_id)
        assert sorted(c.tags["stablesweep.trial_id"] for c in children) == sorted(table["trial_id"])
        assert len(table) == 2 and set(table["verdict"]) == {"stable", "diverged"}
    assert not list(out.glob(".mlflow.db.*.tmp"))


def _sigint_ignored() -> None:  # what a shell does to a job it starts in the background (`sweep ... &`)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.faults
def test_ctrl_c_while_the_first_store_is_created_stops_the_sweep_with_130_even_when_started_ignoring_sigint(
        ray_cluster, tmp_path):
    """SIGINT by PID while the sweep's first MLflow store is being made (its migrations run in a
    temporary `stablesweep-store-*` directory while Ray starts), to a driver started with SIGINT
    ignored as a non-interactive shell starts a background job: Python then raises no
    KeyboardInterrupt and only Tune's handler, once the trials run, took a Ctrl-C, so the sweep ran
    to its end. It stops with 130 and says so; no store is left, made or half-made, where it goes
    or in the temporary directory, and the same command then runs the sweep."""
    out, space, tmp = tmp_path / "out", grid_space(tmp_path), tmp_path / "tmp"
    tmp.mkdir()
    address = ray_cluster.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "stablesweep", "sweep", str(DEMO), "--space", str(space), "--sampler", "grid",
           "--steps", "10", "--set", "training.report_interval=5", "--no-asha",
           "--max-concurrent", "2", "--out", str(out), "--name", "t", "--address", address]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                             env={**os.environ, "TMPDIR": str(tmp)}, start_new_session=True,
                             preexec_fn=_sigint_ignored)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None and not list(tmp.glob("stablesweep-store-*/*.db")):
            time.sleep(0.01)
        assert first.poll() is None and list(tmp.glob("stablesweep-store-*/*.db")), "the store was not being made"
        os.kill(first.pid, signal.SIGINT)
        output, _ = first.communicate(timeout=120)
    finally:
        _kill_group(first)
    assert first.returncode == 130, output[-3000:]
    assert "interrupted before the sweep was recorded" in output, output[-3000:]
    assert "Traceback" not in output
    assert not list(out.glob("*/trial_*")), "a trial ran"
    assert not list(out.glob("*mlflow.db*")) and not (out / "t" / "sweep.json").exists()
    assert not list(tmp.glob("stablesweep-store-*")), "the temporary store was left"

    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=240)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert_exactly_once(out / "t")


def test_tunes_sigint_handler_is_put_back_when_the_run_ends(ray_cluster):
    """Tune installs its SIGINT handler for a run and leaves it: a Ctrl-C while a sweep writes its
    tables afterwards then set a flag nothing read (the sweep ended 0). `fit_tuner` puts back the
    handler of before, so that Ctrl-C raises KeyboardInterrupt (exit 130 and the resume command)."""
    from ray import tune

    from stablesweep.signals import fit_tuner

    def trainable(config):
        tune.report({"x": config["x"]})

    before = signal.getsignal(signal.SIGINT)
    tuner = tune.Tuner(trainable, param_space={"x": 1}, run_config=tune.RunConfig(verbose=0))
    tuner.fit()
    left = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, before)
    assert left is not before, "Tune's fit no longer leaves its handler: fit_tuner may be dropped"
    fit_tuner(tune.Tuner(trainable, param_space={"x": 2}, run_config=tune.RunConfig(verbose=0)))
    assert signal.getsignal(signal.SIGINT) is before


SWALLOWED_CTRL_C = """
import os, signal, sys, time
import ray
from ray import tune
from stablesweep import signals
signals.take_sigint()


class Finalized:
    def __del__(self):  # a Ctrl-C while a finalizer runs: Python prints "Exception ignored in" and goes on
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)


Finalized()
print("went on", flush=True)


def trainable(config):
    tune.report({"x": 1})


try:
    signals.fit_tuner(tune.Tuner(trainable, run_config=tune.RunConfig(name="e", storage_path=sys.argv[1], verbose=0)))
    print("fit ran")
except KeyboardInterrupt:
    print("stopped before the trials; Ray started:", ray.is_initialized())
"""


def test_a_ctrl_c_lost_in_a_finalizer_stops_the_run_before_its_trials(tmp_path):
    """A KeyboardInterrupt raised inside a finalizer is printed and dropped by Python (bench/chaos.py
    saw a Ctrl-C while MLflow's store was made end in SQLAlchemy's weakref callback, and the sweep ran
    to its end with exit 0). The CLI's SIGINT handler notes each stop; `fit_tuner` raises a noted one
    again before a real Tuner runs any trial."""
    proc = subprocess.run([sys.executable, "-c", SWALLOWED_CTRL_C, str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert "Exception ignored in" in proc.stderr and "KeyboardInterrupt" in proc.stderr, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["went on", "stopped before the trials; Ray started: False"], \
        proc.stdout + proc.stderr[-2000:]


RAY_START_SIGTERM = """
import os, signal, threading, time
import ray
from stablesweep import signals
from stablesweep.sweep.options import RunOptions
from stablesweep.sweep.session import start_ray
threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
t0 = time.time()
try:
    start_ray(RunOptions(config="unused", num_cpus=1))
    print("started", ray.is_initialized())
except KeyboardInterrupt:
    print("stopped", round(time.time() - t0, 1), signals.terminated(), signals.stop_status(), ray.is_initialized())
"""


def test_sigterm_while_ray_starts_is_taken_as_ours():
    """`ray.init` sets its own SIGTERM handler (`sys.exit(15)`) before it starts Ray's processes: a
    SIGTERM then ended the command with exit 15 and no message. Now it is a stop like Ctrl-C's,
    counted as a termination (exit 143), with what Ray had started shut down."""
    proc = subprocess.run([sys.executable, "-c", RAY_START_SIGTERM], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    out = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out and out[-1].startswith("stopped"), (proc.stdout, proc.stderr[-2000:])
    _, _, terminated, status, initialized = out[-1].split()
    assert (terminated, status, initialized) == ("True", "143", "False")


RAY_SHUTDOWN_SIGTERM = """
import os, signal, time
from stablesweep.signals import take_sigterm
from stablesweep.sweep.options import RunOptions
from stablesweep.sweep.session import ray_session
take_sigterm()
with ray_session(RunOptions(config="unused", num_cpus=1)):
    pass
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(2)
    print("survived")
except KeyboardInterrupt:
    print("stopped")
"""


def test_sigterm_after_ray_shut_down_is_still_taken_as_ours():
    """Ray's shutdown puts SIGTERM's C-level handler back to the default: a SIGTERM while a sweep
    printed its answer killed it (exit -15). `ray_session` takes SIGTERM again after the shutdown."""
    proc = subprocess.run([sys.executable, "-c", RAY_SHUTDOWN_SIGTERM], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("stopped"), (proc.returncode, proc.stdout,
                                                                            proc.stderr[-2000:])


def _private_ray_env() -> tuple[dict, str]:
    """The environment of a CLI that starts a Ray of its own (not the session's), with a temp folder
    of its own (short: Ray's socket paths must fit in 107 bytes)."""
    tmp = tempfile.mkdtemp(prefix="sss", dir="/tmp")
    return {**os.environ, "RAY_ADDRESS": "local", "RAY_TMPDIR": tmp}, tmp


def _group_left(pgid: int, wait: float = 10.0) -> list[int]:
    """The processes still in the process group `pgid` (the CLI's and the Ray it started) after up to `wait` s."""
    deadline, left = time.time() + wait, []
    while time.time() < deadline:
        left = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    if os.getpgid(int(d.name)) == pgid:
                        left.append(int(d.name))
                except (OSError, ProcessLookupError):
                    pass
        if not left:
            break
        time.sleep(0.2)
    return left


# the CLI, with the signal sent by its own PID while its driver's C++ core worker is being made
STOP_IN_CORE_WORKER = """
import os, signal, sys, threading
import ray._raylet
from stablesweep.cli import main
make = ray._raylet.CoreWorker
def core_worker(*args, **kwargs):
    threading.Timer(0.05, os.kill, (os.getpid(), getattr(signal, sys.argv[1]))).start()
    return make(*args, **kwargs)
ray._raylet.CoreWorker = core_worker
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.faults
@pytest.mark.parametrize("command,sig,status,word", [("sweep", "SIGINT", 130, "interrupted"),
                                                     ("sweep", "SIGTERM", 143, "terminated (SIGTERM)"),
                                                     ("ramp", "SIGINT", 130, "interrupted")])
def test_a_stop_while_ray_makes_the_drivers_core_worker_ends_with_its_status_not_a_crash(tmp_path, command, sig, status,
                                                                                         word):
    """Ctrl-C (or SIGTERM) while `ray.init` makes the driver's C++ core worker: its constructor had
    started the C++ side and the Python object that could stop it was never made, so the process
    printed its message and then died in the interpreter's teardown (SIGSEGV, exit -11). Now: the
    message, the stop's status, and the Ray it had started shut down."""
    env, ray_tmp = _private_ray_env()
    what = (["--space", str(grid_space(tmp_path)), "--sampler", "grid", "--no-asha"] if command == "sweep"
            else ["--lr-start", "0.04", "--lr-stop", "0.32", "--samples", "0"])
    cmd = [sys.executable, "-c", STOP_IN_CORE_WORKER, sig, command, str(DEMO), *what, "--steps", "10",
           "--out", str(tmp_path / "out"), "--name", "t"]
    proc, output, left = _run_private(cmd, env, ray_tmp, timeout=180)
    assert proc.returncode == status, (proc.returncode, output[-3000:])
    assert f"{word} before the {command} was recorded" in output, output[-3000:]
    assert not left, f"Ray's processes left running: {left}"


def _run_private(cmd: list[str], env: dict, ray_tmp, timeout: float):
    """The CLI in a process group of its own with a Ray of its own: (the process, its output, the
    processes of its group still alive when it ended); the group killed and Ray's temp folder
    removed after."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        left = _group_left(proc.pid)
    finally:
        _kill_group(proc)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return proc, output, left


# the CLI, with SIGTERM sent by its own PID inside Ray's shutdown at the end of the sweep, once the
# driver's core worker is shut down (which put SIGTERM back to the default) and before Ray's
# processes are stopped
SIGTERM_IN_RAY_SHUTDOWN = """
import os, signal, sys
import ray._private.state
from stablesweep.cli import main
state = ray._private.state.state
disconnect = state.disconnect
def sigterm_then_disconnect(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return disconnect(*args, **kwargs)
state.disconnect = sigterm_then_disconnect
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.faults
def test_sigterm_during_rays_shutdown_at_the_end_of_a_sweep_is_handled_after_it(tmp_path):
    """A SIGTERM during Ray's shutdown: the shutdown had put SIGTERM back to the default, so the
    process was killed (exit -15) before it said anything, and with it Ray's processes were left to
    the reaper. Now the shutdown ends, and the SIGTERM stops the command as Ctrl-C does: exit 143
    with the resume command, Ray's processes gone. The shutdown runs beside the writing of the
    answer (`RaySession.release`), so the stop may cut that writing short: one --resume then
    finishes it, every trial exactly once."""
    env, ray_tmp = _private_ray_env()
    out, space = tmp_path / "out", tmp_path / "two.yaml"
    space.write_text("training.lr: {grid: [1.0e-2, 1.0e+3]}\ntraining.max_grad_norm: {choice: [1.0]}\n")
    cmd = [sys.executable, "-c", SIGTERM_IN_RAY_SHUTDOWN, "sweep", str(DEMO), "--space", str(space),
           "--sampler", "grid", "--steps", "10", "--set", "training.report_interval=5", "--no-asha",
           "--max-concurrent", "2", "--out", str(out), "--name", "t"]
    proc, output, left = _run_private(cmd, env, ray_tmp, timeout=300)
    assert proc.returncode == 143, (proc.returncode, output[-3000:])
    assert "terminated (SIGTERM): continue with  stablesweep sweep" in output and "--resume" in output, output[-3000:]
    assert not left, f"Ray's processes left running: {left}"
    resumed = subprocess.run([sys.executable, "-m", "stablesweep", *cmd[3:], "--resume"], capture_output=True,
                             text=True, cwd=ROOT, env=env, timeout=300)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
    assert_exactly_once(out / "t", n_grid=2)


def test_a_stop_noted_by_one_command_does_not_stop_the_next_in_the_same_process():
    """The CLI's `main` run again in one process (a notebook, a test): a Ctrl-C noted by the first
    command stops its own fit, not the next command's."""
    from stablesweep import signals

    class Fits:  # what fit_tuner calls: a Tuner's fit
        def fit(self):
            return "fit"

    before = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signals.take_sigint()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(2)
        with pytest.raises(KeyboardInterrupt):
            signals.fit_tuner(Fits())  # this command's stop: no fit
        signals.take_sigint()  # the next command
        assert signals.fit_tuner(Fits()) == "fit"
    finally:
        signal.signal(signal.SIGINT, before)
