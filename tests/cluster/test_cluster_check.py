"""`stablesweep cluster check` of a running cluster: the probe on every node of a real Ray (the
test session's), the judgement of what the nodes answered (plain data: a head that takes trials,
versions or token modes that differ, storage a node does not see, node types of unknown
resources), and an address where nothing runs. tests/cluster/test_launcher.py runs the whole check
on a two-node cluster that `ray up` made."""
from __future__ import annotations

import platform
import subprocess
import sys

import ray

import stablesweep
from stablesweep.cluster.live import NodeReport, check_live, judge
from tests.cluster.test_two_node import ROOT, free_port

DRIVER = {"ray": ray.__version__, "stablesweep": stablesweep.__version__, "python": platform.python_version(),
          "auth_mode": "token"}


def answer(**kw) -> dict:
    return {**DRIVER, "stablesweep_at": "/x/stablesweep", "host": "h", "sees_out": True, **kw}


def test_every_node_of_a_running_ray_answers(ray_cluster, tmp_path):
    out = tmp_path / "shared"
    lines, problems = check_live(None, str(out))
    assert problems == [], problems
    assert lines[0].endswith(": 1 node(s) alive"), lines
    [node] = [ln for ln in lines if ln.startswith("  head ")]
    assert f": 2 CPUs, 0 GPUs; Ray {ray.__version__}, stablesweep {stablesweep.__version__} " in node, node
    assert f"Python {platform.python_version()}, RAY_AUTH_MODE=" in node and node.endswith("sees --out: yes")
    assert not any(out.iterdir())  # the probe's file is gone


def test_what_the_nodes_answered_is_judged():
    head = NodeReport("h" * 56, "10.0.0.1", True, {"CPU": 8.0}, answer())
    same = NodeReport("a" * 56, "10.0.0.2", False, {"CPU": 48.0, "GPU": 4.0}, answer())
    lines, problems = judge([head, same], [({"cpu": 48.0, "gpu": 4.0}, 4), ({"cpu": 96.0, "gpu": 8.0}, 2)], DRIVER,
                            "/mnt/shared", 120)
    assert problems == [("the head has 8 CPUs, so trials may run on it; start it with --num-cpus=0 (or resources: "
                         "{CPU: 0} for its node type)")]
    assert "  node type: 48 CPUs, 4 GPUs; 1 alive, up to 4 (the autoscaler adds them for pending trials)" in lines
    assert lines[-2].endswith("up to 2 (the autoscaler adds them for pending trials): at zero now"), lines
    assert lines[-1] == "  GPUs alive: 4, more as the autoscaler adds nodes"

    head.resources = {"CPU": 0.0}
    others = [NodeReport("b" * 56, "10.0.0.3", False, {"CPU": 4.0, "GPU": 1.0},
                         answer(ray="2.59.0", auth_mode="(unset)", sees_out=False)),
              NodeReport("c" * 56, "10.0.0.4", False, {"CPU": 4.0}),
              NodeReport("d" * 56, "10.0.0.5", False, {"CPU": 4.0}, error="ModuleNotFoundError: No module named 'x'")]
    lines, problems = judge([head, same, *others], [({}, 3)], DRIVER, "/mnt/shared", 120)
    where = "worker 10.0.0.3 (bbbbbbbbbbbb)"
    same_versions = ": every node must run the same (install the same versions in each node's venv; one RAY_AUTH_MODE for all)"
    assert problems == [
        f"{where}: Ray 2.59.0, the driver's is {ray.__version__}{same_versions}",
        f"{where}: RAY_AUTH_MODE (unset), the driver's is token{same_versions}",
        (f"{where}: does not see the file the driver wrote under --out /mnt/shared: that path is not the same storage "
         "there; trials on it could not save or restore checkpoints. Mount the shared storage at that path on every "
         "node, or use a bucket URI"),
        ("worker 10.0.0.4 (cccccccccccc): did not run a task in 120 s (no free worker process there, or its runtime "
         "environment failed: the node's raylet.out and runtime_env_setup logs say)"),
        "worker 10.0.0.5 (dddddddddddd): the probe task failed: ModuleNotFoundError: No module named 'x'",
        ("a node type of the autoscaler (up to 3 nodes) declares no resources: GPU trials never start it from zero; "
         "write its resources (CPU, GPU) in the cluster file")]
    assert f"  {where}: 4 CPUs, 1 GPUs; Ray 2.59.0, " in "\n".join(lines)


def test_an_address_where_nothing_runs_is_refused_at_once():
    p = subprocess.run([sys.executable, "-m", "stablesweep", "cluster", "check", "--address", f"127.0.0.1:{free_port()}"],
                       check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "nothing answers there" in p.stderr, p.stderr[-2000:]

