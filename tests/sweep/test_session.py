"""Ray for a run: an unreachable --address is refused at once; a Ray already running is used and
left running; a Ray the run started shuts down beside its outputs once released; Tune is quieted
only where the user has not chosen."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from stablesweep.cluster.live import check_reachable
from stablesweep.sweep.options import SweepOptions
from stablesweep.sweep.session import quiet_tune, ray_session
from stablesweep.vocab import InputError


def test_an_address_nothing_answers_on_is_refused_at_once():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.time()
    with pytest.raises(InputError, match=rf"--address 127.0.0.1:{port}: nothing answers there.*ray start --head"):
        check_reachable(f"127.0.0.1:{port}")
    assert time.time() - t0 < 5
    for address in ("auto", "local", "ray://127.0.0.1:1"):  # Ray resolves these itself
        check_reachable(address)


def test_a_running_ray_is_used_and_left_running(ray_cluster):
    with ray_session(SweepOptions(config="c", space="s", num_cpus=1)):
        assert ray_cluster.cluster_resources()["CPU"] == 2  # the session's Ray, not a new one
    assert ray_cluster.is_initialized()


def test_tune_is_quieted_where_the_user_has_not_chosen(monkeypatch):
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")
    monkeypatch.delenv("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", raising=False)
    quiet_tune()
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "1"
    assert os.environ["TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S"] == "0"



RELEASE = """
import json, os, time
import ray
from stablesweep.sweep.options import SweepOptions
from stablesweep.sweep.session import ray_session


def stat(pid):  # (state, parent pid) from /proc, or None once it is gone
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def descendants(pid):
    kids = {}
    for d in filter(str.isdigit, os.listdir("/proc")):
        st = stat(d)
        if st:
            kids.setdefault(st[1], []).append(int(d))
    found, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            found.append(k)
            todo.append(k)
    return found


with ray_session(SweepOptions(config="c", space="s", num_cpus=1)) as session:
    started = descendants(os.getpid())
    t = time.time()
    session.release()
    took = time.time() - t
    time.sleep(0.2)  # the run writing its outputs meanwhile
deadline = time.time() + 3  # the raylet's own workers end once they see it gone
while True:
    alive = [p for p in started if stat(p) and stat(p)[0] != "Z"]
    if not alive or time.time() > deadline:
        break
    time.sleep(0.05)
print(json.dumps({"started": started, "took": took, "alive": alive, "initialized": ray.is_initialized()}))
"""


def test_a_ray_the_run_started_shuts_down_in_the_background_once_released_and_is_gone_at_the_end():
    """`release()` (the run's last Tune run has ended) returns at once while Ray's shutdown, which
    waits up to a second on each of its processes, goes on beside the run's outputs; the session's
    end waits for it: no process Ray started is left (the raylet's workers within moments of it). A
    fresh interpreter: it starts its own Ray."""
    p = subprocess.run([sys.executable, "-c", RELEASE], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["started"], "Ray started no process"
    assert out["took"] < 0.5, out
    assert out["alive"] == [] and out["initialized"] is False, out
