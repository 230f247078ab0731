"""The run options' checks that sweeps and ramps share, before Ray starts (the cluster's shape,
shared storage and resources: tests/cluster/test_storage.py)."""
from __future__ import annotations

import pytest

from stablesweep.sweep.options import RampOptions, SweepOptions
from stablesweep.sweep.placement import (
    check_run_options,
    ephemeral_path_notes,
    joins_a_cluster,
)
from stablesweep.vocab import InputError


def sweep(**kw) -> SweepOptions:
    return SweepOptions(config="c.yaml", space="s.yaml", **kw)


def ramp(**kw) -> RampOptions:
    return RampOptions(config="c.yaml", **kw)


@pytest.mark.parametrize("options", [sweep, ramp])
@pytest.mark.parametrize("kw, match", [
    ({"max_concurrent": 0}, "--max-concurrent 0: out of range"),
    ({"cpus_per_trial": 0}, "--cpus-per-trial 0: out of range"),
    ({"gpus_per_trial": -1}, "--gpus-per-trial -1: out of range"),
    ({"gpus_per_trial": 1.5}, "--gpus-per-trial 1.5: more than one GPU a trial must be a whole number"),
    ({"max_failures": -1}, "--max-failures -1: out of range"),
    ({"address": "auto", "num_cpus": 2}, "num_cpus applies to a local Ray only"),
    ({"resources_per_trial": {"GPU": 1}}, "use --gpus-per-trial"),
])
def test_bad_run_options_are_refused_for_sweeps_and_ramps(options, kw, match):
    with pytest.raises(InputError, match=match):
        check_run_options(options(**kw))


@pytest.mark.parametrize("options", [sweep, ramp])
def test_good_run_options_pass(options):
    # GPUs on a cluster joined with --address (a local Ray's are counted at once, where this machine
    # has none: tests/commands/test_sweep_and_ramp.py; a joined cluster's by cluster_checks)
    check_run_options(options(address="auto", gpus_per_trial=0.25, max_concurrent=4, max_failures=0,
                              resources_per_trial={"worker_node": 1}))
    check_run_options(options(address="auto", gpus_per_trial=2))
    check_run_options(options(max_concurrent=4, max_failures=0, resources_per_trial={"worker_node": 1}))


def test_joining_a_cluster(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not joins_a_cluster(sweep()) and joins_a_cluster(sweep(address="auto"))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # inside a Ray Job
    assert joins_a_cluster(ramp())
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert not joins_a_cluster(ramp())


def test_a_ramp_in_a_ray_job_is_told_about_its_relative_local_dir(tmp_path, monkeypatch):
    job_dir = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    job_dir.mkdir(parents=True)
    monkeypatch.chdir(job_dir)
    notes = ephemeral_path_notes(ramp(out="s3://b/ramps"))
    assert len(notes) == 1 and notes[0].startswith("--local-dir runs/ramps is relative to this Ray Job")
    assert ephemeral_path_notes(ramp(out="/mnt/shared/ramps")) == []
