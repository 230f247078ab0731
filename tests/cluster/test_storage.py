"""Cluster rules without a cluster (no Ray started): where a sweep may write on several nodes, what
a trial needs, how many trials fit, where a bucket-URI --out puts what."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from stablesweep.cluster.shape import ClusterShape, autoscaler_node_types
from stablesweep.cluster.storage import check_shared_storage, is_shared_uri, storage_paths
from stablesweep.sweep.options import SweepOptions
from stablesweep.sweep.placement import CLUSTER_MAX_FAILURES, cluster_checks, ephemeral_path_notes, trial_resources
from stablesweep.sweep.plan import plan_sweep
from stablesweep.vocab import InputError
from tests.conftest import DEMO, ROOT

# ---- check_shared_storage ---------------------------------------------------------------------

@pytest.mark.parametrize("out", ["runs/sweeps", "/tmp/x", "file:///tmp/x", "s3://b/x"])
def test_one_node_takes_any_out(out):
    check_shared_storage(out, 1, declared=False)


@pytest.mark.parametrize("out", ["s3://bucket/sweeps", "gs://bucket/sweeps", "abfs://c@acct.dfs.core.windows.net/s",
                                 "hdfs://namenode:8020/sweeps"])
def test_bucket_uri_is_shared_storage(out):
    assert is_shared_uri(out)
    check_shared_storage(out, 3, declared=False)


def test_declared_shared_path_is_accepted():
    check_shared_storage("/mnt/shared/sweeps", 5, declared=True)


@pytest.mark.parametrize("out", ["runs/sweeps", "/tmp/sweeps", "file:///tmp/sweeps"])
def test_local_path_on_several_nodes_is_refused_with_why_and_how(out):
    with pytest.raises(InputError) as e:
        check_shared_storage(out, 2, declared=False)
    msg = str(e.value)
    assert msg.startswith(f"--out {out}:") and "2 nodes" in msg
    assert "its own disk" in msg and "could not be restored" in msg  # why
    assert "--shared-storage" in msg and "s3://" in msg  # how


# ---- storage_paths --------------------------------------------------------------------------------

def test_path_out_holds_everything(tmp_path):
    local, storage = storage_paths(str(tmp_path / "out"))
    assert local == tmp_path / "out" and storage == str(tmp_path / "out")


def test_uri_out_keeps_the_sweep_files_in_local_dir(tmp_path, monkeypatch):
    local, storage = storage_paths("s3://bucket/sweeps/", str(tmp_path / "here"))
    assert (local, storage) == (tmp_path / "here", "s3://bucket/sweeps")
    monkeypatch.chdir(tmp_path)
    local, _ = storage_paths("gs://bucket/sweeps")
    assert local == tmp_path / "runs" / "sweeps"  # the default, on the driver


def test_local_dir_without_uri_out_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"--local-dir .*only with a URI --out"):
        storage_paths(str(tmp_path / "out"), str(tmp_path / "local"))


def test_relative_paths_in_a_ray_job_get_a_note(tmp_path, monkeypatch):
    job_dir = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    job_dir.mkdir(parents=True)
    monkeypatch.chdir(job_dir)
    notes = ephemeral_path_notes(SweepOptions(config="c", space="s", out="s3://b/sweeps"))
    assert len(notes) == 1 and notes[0].startswith("--local-dir runs/sweeps is relative to this Ray Job")
    assert len(ephemeral_path_notes(SweepOptions(config="c", space="s", out="runs/x", shared_storage=True))) == 1
    assert ephemeral_path_notes(SweepOptions(config="c", space="s", out="/mnt/shared/x")) == []
    monkeypatch.chdir(tmp_path)
    assert ephemeral_path_notes(SweepOptions(config="c", space="s", out="runs/x")) == []


# ---- resources ----------------------------------------------------------------------------------

def test_trial_resources_add_custom_ones():
    opts = SweepOptions(config="c", space="s", cpus_per_trial=2, gpus_per_trial=0.25,
                        resources_per_trial={"worker_node": 1, "accel": 0.5})
    assert trial_resources(opts) == {"cpu": 2, "gpu": 0.25, "worker_node": 1.0, "accel": 0.5}


@pytest.mark.parametrize("res, match", [({"GPU": 1}, "use --gpus-per-trial"), ({"cpu": 1}, "use --cpus-per-trial"),
                                        ({"x": 0}, "above 0"), ({"x": "1"}, "above 0"), ({"x": 1.5}, "whole number"),
                                        ([1], "JSON object")])
def test_bad_resources_per_trial_are_refused(res, match):
    with pytest.raises(InputError, match=match):
        trial_resources(SweepOptions(config="c", space="s", resources_per_trial=res))


def test_trials_fit_per_node_not_per_cluster_total():
    # two nodes of 3 CPUs fit two 2-CPU trials, not three (6 // 2)
    shape = ClusterShape(nodes=[{"cpu": 3}, {"cpu": 3}])
    assert shape.trial_fit({"cpu": 2, "gpu": 0}) == 2
    # fractional GPUs pack on a multi-GPU node: 4 GPUs at 0.25 a trial is 16, if the CPUs allow
    shape = ClusterShape(nodes=[{"cpu": 0}, {"cpu": 32, "gpu": 4}])
    assert shape.trial_fit({"cpu": 1, "gpu": 0.25}) == 16
    assert shape.trial_fit({"cpu": 4, "gpu": 0.25}) == 8
    # the custom resource limits where trials go
    shape = ClusterShape(nodes=[{"cpu": 1}, {"cpu": 2, "worker_node": 4}])
    assert shape.trial_fit({"cpu": 1, "worker_node": 1}) == 2


def test_an_autoscaling_cluster_counts_the_nodes_it_may_add():
    # the cloud cluster.yaml: a CPU: 0 head alone, GPU workers from 0 to 4 (4 GPUs each)
    shape = ClusterShape(nodes=[{"cpu": 0.0}], node_types=[({"cpu": 48, "gpu": 4}, 4)])
    assert shape.n_nodes == 5
    assert shape.trial_fit({"cpu": 1, "gpu": 0.25}) == 64
    opts = SweepOptions(config="c", space="s", gpus_per_trial=0.25, out="/home/me/sweeps", address="auto")
    with pytest.raises(InputError, match="5 nodes"):  # a local --out is refused though one node is up
        cluster_checks(opts, shape)
    opts.shared_storage = True
    assert cluster_checks(opts, shape)[:2] == (64, CLUSTER_MAX_FAILURES)


def test_one_node_retries_a_trial_once_and_keeps_the_old_concurrency():
    opts = SweepOptions(config="c", space="s", out="runs/sweeps")
    assert cluster_checks(opts, ClusterShape(nodes=[{"cpu": 2}]))[:2] == (2, 1)  # a killed worker: retried once
    opts.max_failures = 3
    assert cluster_checks(opts, ClusterShape(nodes=[{"cpu": 2}]))[1] == 3


def test_missing_custom_resource_is_named():
    opts = SweepOptions(config="c", space="s", resources_per_trial={"worker_node": 1}, shared_storage=True)
    with pytest.raises(InputError, match=r"no node of the Ray cluster has the resource 'worker_node'.*ray start"):
        cluster_checks(opts, ClusterShape(nodes=[{"cpu": 2}, {"cpu": 2, "other": 1}]))


# ---- the command line refuses bad cluster flags before Ray starts -------------------------------

def _space(tmp_path: Path) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text("training.lr: {grid: [1.0e-3, 1.0e+3]}\n")
    return p


@pytest.mark.parametrize("args, match", [
    (["--resources-per-trial", "{worker_node: 1}"], "--resources-per-trial: .*not JSON"),
    (["--resources-per-trial", '{"CPU": 1}'], "Ray's own resources; use --cpus-per-trial"),
    (["--local-dir", "somewhere"], "--local-dir somewhere: only with a URI --out"),
    (["--max-failures", "-1"], "--max-failures -1: out of range"),
])
def test_bad_cluster_flags_exit_2(tmp_path, cli, args, match):
    p = cli("sweep", DEMO, "--space", _space(tmp_path), "--out", tmp_path / "out", *args)
    assert p.returncode == 2, p.stderr
    assert re.search(match, p.stderr), p.stderr
    assert not (tmp_path / "out").exists()


# ---- a bucket URI --out: the plan (end to end: the Ray Job test of test_two_node.py) --------------

def test_uri_out_plans_tune_there_and_the_region_in_local_dir(tmp_path):
    uri = (tmp_path / "bucket").as_uri()
    opts = SweepOptions(config=str(DEMO), space=str(_space(tmp_path)), sampler="grid", out=uri,
                        local_dir=str(tmp_path / "local"), name="u")
    plan = plan_sweep(opts)  # writes nothing, starts no Ray
    assert plan.storage == uri and plan.experiment_path == f"{uri}/u"
    assert plan.sweep_dir == tmp_path / "local" / "u"
    assert plan.tracking_uri == f"sqlite:///{tmp_path / 'local' / 'mlflow.db'}"
    assert not (tmp_path / "local").exists() and not (tmp_path / "bucket").exists()
    # one machine's layout is untouched: Tune's experiment is the sweep dir itself
    plan = plan_sweep(SweepOptions(config=str(DEMO), space=str(_space(tmp_path)), out=str(tmp_path / "o"), name="p"))
    assert plan.experiment_path == str(tmp_path / "o" / "p") == str(plan.sweep_dir)


def test_the_launchers_bootstrap_config_gives_the_node_types(tmp_path, monkeypatch):
    """On a `ray up cluster.yaml` head the driver reads the worker types from the launcher's
    bootstrap config: a fresh cluster (the head alone) is still a cluster of up to 5 nodes, and
    GPU trials are not refused for want of a GPU node that the autoscaler has yet to start."""
    import yaml
    from ray.autoscaler._private.util import prepare_config

    config = prepare_config(yaml.safe_load((ROOT / "cluster.yaml").read_text()))
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("STABLESWEEP_AUTOSCALING_CONFIG", str(path))
    types = autoscaler_node_types()
    assert [m for _, m in types] == [4]  # gpu_worker: up to 4 (its resources are filled by `ray up`)
    shape = ClusterShape(nodes=[{"cpu": 0.0, "memory": 1e9}], node_types=types)
    opts = SweepOptions(config="c", space="s", gpus_per_trial=0.25, out="/mnt/shared/sweeps", shared_storage=True,
                        address="auto")
    concurrent, failures, _ = cluster_checks(opts, shape)
    assert concurrent >= 4 and failures == CLUSTER_MAX_FAILURES
    opts.shared_storage = False
    with pytest.raises(InputError, match="5 nodes"):
        cluster_checks(opts, shape)
