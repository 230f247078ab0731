"""Ray for a run: an unreachable --address is refused at once; a Ray already running is used and
left running; Tune is quieted only where the user has not chosen."""
from __future__ import annotations

import os
import socket
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

