"""A ramp stopped and continued: the driver (the CLI in a subprocess) SIGKILLed, or stopped by
Ctrl-C or SIGTERM, after some probes ended; one `ramp --resume` finishes it with every probe exactly
once in ramp.json and MLflow, and the probes that had ended are not run again."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stablesweep.sweep.invariant import ramp_exactly_once_problems
from stablesweep.tracking import Tracker
from tests.conftest import DEMO, ROOT
from tests.sweep.test_runner import _kill_group, _terminated
from tests.sweep.test_signals import _wait_for_lines

# the demo at 20 steps, one probe at a time: 0.02, 0.04, 0.08 train, 0.16 is past the edge (stalls or
# diverges), then bisection: about 6 probes
RAMP = ["ramp", str(DEMO), "--lr-start", "0.02", "--lr-stop", "0.32", "--ladder", "x2", "--climb", "step",
        "--parallel", "1", "--samples", "0", "--steps", "20", "--target-steps", "20", "--set", "training.report_interval=5"]
ENDED = "    config lr "  # the line of a probe that ended


def _start(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                            start_new_session=True)


def _resume(cmd: list[str], address: str) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd + ["--address", address, "--resume"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=300)
    finally:
        _kill_group(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, output)


@pytest.mark.faults
def test_driver_killed_mid_ramp_then_resumed(ray_cluster, tmp_path):
    """SIGKILL the driver (and the local Ray it started) once two probes ended and Tune's snapshot
    holds them; --resume (on the session's Ray) ends with every probe once and those two untouched."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "stablesweep", *RAMP, "--out", str(out), "--name", "k"]
    log = tmp_path / "first.log"
    first = _start(cmd, log, env={**os.environ, "RAY_ADDRESS": "local"})  # a Ray of its own
    exp = out / "k" / "tune"
    try:
        done = _wait_for_lines(first, log, ENDED, 2, timeout=200)
        ended: set[str] = set()
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None and len(ended) < 2:
            ended = _terminated(exp)
            time.sleep(0.1)
        assert first.poll() is None and len(done) >= 2 and len(ended) >= 2, log.read_text()[-3000:]
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        _kill_group(first)
    before = {t: (exp / f"trial_{t}" / "result.json").read_text() for t in ended}
    state = json.loads((out / "k" / "run.json").read_text())
    assert [p.status for p in Tracker(state["tracking_uri"]).sweep_runs(kind="ramp")] == ["RUNNING"]

    res = _resume(cmd, ray_cluster.get_runtime_context().gcs_address)
    assert res.returncode == 0, res.stdout[-4000:]
    assert "resuming ramp k" in res.stdout and "bracketed" in res.stdout, res.stdout[-4000:]
    problems = ramp_exactly_once_problems(out / "k")
    assert not problems, problems
    doc = json.loads((out / "k" / "ramp.json").read_text())
    probes = doc["settings"][0]["probe_list"]
    assert ended <= {p["trial_id"] for p in probes}
    for t in ended:  # not run again: their reports are as the first driver left them
        assert (exp / f"trial_{t}" / "result.json").read_text() == before[t]
    assert doc["settings"][0]["status"] == "bracketed" and len(probes) >= 4


@pytest.mark.faults
def test_ctrl_c_stops_a_ramp_with_the_resume_command_then_resume_finishes_it(ray_cluster, tmp_path):
    out = tmp_path / "out"
    address = ray_cluster.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "stablesweep", *RAMP, "--out", str(out), "--name", "c"]
    log = tmp_path / "first.log"
    first = _start(cmd + ["--address", address], log)
    try:
        done = _wait_for_lines(first, log, ENDED, 1, timeout=200)
        assert first.poll() is None and done, log.read_text()[-3000:]
        os.kill(first.pid, signal.SIGINT)  # the driver only, by its PID
        first.wait(timeout=120)
    finally:
        _kill_group(first)
    text = log.read_text()
    assert first.returncode == 130, text[-3000:]
    (line,) = [ln for ln in text.splitlines() if ln.startswith("interrupted: continue with  stablesweep ramp ")]
    assert " --name c " in line and line.endswith(" --resume"), text[-3000:]
    state = json.loads((out / "c" / "run.json").read_text())
    tracker = Tracker(state["tracking_uri"])
    assert [p.status for p in tracker.sweep_runs(kind="ramp")] == ["KILLED"]
    assert not [c for c in tracker.children(state["parent_run_id"]) if c.status == "RUNNING"]
    assert not (out / "c" / "ramp.json").exists()
    # other options than the start's are refused before Ray starts, naming them
    other = subprocess.run(cmd + ["--parallel", "2", "--resume"], capture_output=True, text=True, cwd=ROOT,
                           timeout=120)
    assert other.returncode == 2 and "--parallel (1, now 2)" in other.stderr, other.stderr

    res = _resume(cmd, address)
    assert res.returncode == 0, res.stdout[-4000:]
    problems = ramp_exactly_once_problems(out / "c")
    assert not problems, problems


@pytest.mark.faults
def test_sigterm_stops_a_ramp_as_ctrl_c_does_with_exit_143(ray_cluster, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "stablesweep", *RAMP, "--out", str(out), "--name", "t",
           "--address", ray_cluster.get_runtime_context().gcs_address]
    log = tmp_path / "first.log"
    first = _start(cmd, log)
    try:
        done = _wait_for_lines(first, log, ENDED, 1, timeout=200)
        assert first.poll() is None and done, log.read_text()[-3000:]
        os.kill(first.pid, signal.SIGTERM)  # the driver only, as a scheduler's preemption
        first.wait(timeout=120)
    finally:
        _kill_group(first)
    text = log.read_text()
    assert first.returncode == 143 and "*** SIGTERM received" not in text, text[-3000:]
    assert "terminated (SIGTERM): continue with  stablesweep ramp " in text, text[-3000:]
    state = json.loads((out / "t" / "run.json").read_text())
    tracker = Tracker(state["tracking_uri"])
    assert [p.status for p in tracker.sweep_runs(kind="ramp")] == ["KILLED"]
    children = tracker.children(state["parent_run_id"])
    assert children and not [c for c in children if c.status == "RUNNING"]


@pytest.mark.faults
@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_full_or_read_only_out_stops_a_ramp_with_exit_74_then_resume_finishes_it(ray_cluster, tmp_path, fault):
    """--out on a small tmpfs, once two probes ended: filled up (dd), or made read-only (a read-only
    bind mount over it). The driver says the output could not be written, prints the resume command
    and exits 74; with space (or writes) back, one --resume ends with every probe once in ramp.json
    and MLflow, nothing RUNNING, the parent FINISHED."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mnt)], check=True)
    out = mnt / "out"
    address = ray_cluster.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "stablesweep", *RAMP, "--out", str(out), "--name", "f"]
    log = tmp_path / "first.log"
    first = None
    bound = False
    try:
        first = _start(cmd + ["--address", address], log)
        done = _wait_for_lines(first, log, ENDED, 2, timeout=200)
        assert first.poll() is None and len(done) >= 2, log.read_text()[-3000:]
        if fault == "full":
            subprocess.run(["dd", "if=/dev/zero", f"of={mnt / 'filler'}", "bs=1M", "count=100"], capture_output=True)
        else:
            subprocess.run(["mount", "--bind", str(out), str(out)], check=True)
            bound = True
            subprocess.run(["mount", "-o", "remount,bind,ro", str(out)], check=True)
        first.wait(timeout=300)
        text = log.read_text()
        tail = text[text.rindex("error: ramp f"):] if "error: ramp f" in text else text[-3000:]
        assert first.returncode == 74, tail
        assert "its output could not be written" in tail and "Traceback" not in tail, tail
        (line,) = [ln for ln in tail.splitlines() if ln.startswith("continue with  stablesweep ramp ")]
        assert " --name f " in line and line.endswith(" --resume"), tail

        if fault == "full":
            (mnt / "filler").unlink()
        else:
            subprocess.run(["umount", str(out)], check=True)
            bound = False
        res = _resume(cmd, address)
        assert res.returncode == 0, res.stdout[-4000:]
        problems = ramp_exactly_once_problems(out / "f")
        assert not problems, problems
        doc = json.loads((out / "f" / "ramp.json").read_text())
        assert doc["settings"][0]["status"] == "bracketed"
        assert "error" not in {p["verdict"] for p in doc["settings"][0]["probe_list"]}  # the disk's, not the lr's
    finally:
        if first is not None:
            _kill_group(first)
        if bound:
            subprocess.run(["umount", "-l", str(out)], check=False)
        subprocess.run(["umount", "-l", str(mnt)], check=False)
