"""A running Ray cluster checked from a driver joined to it (on the head, e.g. as a Ray Job):
`check_live(address, out)` asks every alive node what a trial there would get: the GPUs per node
type (types still at zero included), the Ray, Python and stablesweep versions and the token mode
each node runs with, and whether every node sees `--out` as the same storage. `judge` makes the
report and the problems from that plain data (tested without Ray).

`check_reachable(address)`: a Ray address that nothing answers on is refused at once, here and
when a sweep joins a cluster (Ray itself would retry for minutes).
"""
from __future__ import annotations

import os
import re
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stablesweep.cluster.launcher import ClusterError, read_stripped
from stablesweep.cluster.shape import cluster_shape
from stablesweep.cluster.storage import is_shared_uri, uri_scheme
from stablesweep.vocab import InputError


def _probe(out_marker: str | None) -> dict[str, Any]:
    """Run on one node: what a trial there would see."""
    import platform
    import socket

    import ray

    import stablesweep

    seen = None
    if out_marker:
        path, content = out_marker.split("\n", 1)
        seen = read_stripped(Path(path)) == content
    return {"ray": ray.__version__, "stablesweep": stablesweep.__version__,
            "stablesweep_at": str(Path(stablesweep.__file__).parent), "python": platform.python_version(),
            "auth_mode": os.environ.get("RAY_AUTH_MODE") or "(unset)", "host": socket.gethostname(), "sees_out": seen}


@dataclass
class NodeReport:
    """One alive node as the check saw it: its resources (Ray's names: CPU, GPU) and the probe's
    answer (None: no answer; `error`: why it failed)."""

    node_id: str
    ip: str
    head: bool
    resources: dict[str, float]
    answer: dict[str, Any] | None = None
    error: str | None = None


def judge(nodes: list[NodeReport], node_types: list[tuple[dict[str, float], int]], driver: dict[str, Any],
          out: str | None, timeout: float) -> tuple[list[str], list[str]]:
    """The report and the problems of a live cluster, from plain data: the alive nodes, the node
    types an autoscaler may start (resources as Tune spells them: cpu, gpu; most nodes), and the
    driver's own versions and token mode."""
    mine = (f"Ray {driver['ray']}, stablesweep {driver['stablesweep']}, Python {driver['python']}, "
            f"RAY_AUTH_MODE={driver['auth_mode']}")
    lines = [f"  driver: {mine}"]
    problems: list[str] = []
    for n in nodes:
        where = f"{'head' if n.head else 'worker'} {n.ip} ({n.node_id[:12]})"
        text = f"  {where}: {n.resources.get('CPU', 0):g} CPUs, {n.resources.get('GPU', 0):g} GPUs"
        got = n.answer
        if got is None:
            lines.append(text + ": no answer")
            problems.append(f"{where}: " + (f"the probe task failed: {n.error}" if n.error else
                                            f"did not run a task in {timeout:g} s (no free worker process there, or "
                                            "its runtime environment failed: the node's raylet.out and "
                                            "runtime_env_setup logs say)"))
            continue
        lines.append(text + f"; Ray {got['ray']}, stablesweep {got['stablesweep']} ({got['stablesweep_at']}), "
                            f"Python {got['python']}, RAY_AUTH_MODE={got['auth_mode']}, host {got['host']}"
                            + ("" if got["sees_out"] is None else f", sees --out: {'yes' if got['sees_out'] else 'NO'}"))
        for k, what in (("ray", "Ray"), ("stablesweep", "stablesweep"), ("python", "Python"),
                        ("auth_mode", "RAY_AUTH_MODE")):
            if got[k] != driver[k]:
                problems.append(f"{where}: {what} {got[k]}, the driver's is {driver[k]}: every node must run the "
                                "same (install the same versions in each node's venv; one RAY_AUTH_MODE for all)")
        if got["sees_out"] is False:
            problems.append(f"{where}: does not see the file the driver wrote under --out {out}: that path is not "
                            "the same storage there; trials on it could not save or restore checkpoints. Mount the "
                            "shared storage at that path on every node, or use a bucket URI")
    head_cpus = sum(n.resources.get("CPU", 0.0) for n in nodes if n.head)
    if head_cpus > 0 and (any(not n.head for n in nodes) or node_types):
        problems.append(f"the head has {head_cpus:g} CPUs, so trials may run on it; start it with --num-cpus=0 "
                        "(or resources: {CPU: 0} for its node type)")
    for res, most in node_types:
        cpu, gpu = res.get("cpu"), res.get("gpu")
        if cpu is None and gpu is None:
            problems.append(f"a node type of the autoscaler (up to {most} nodes) declares no resources: GPU trials "
                            "never start it from zero; write its resources (CPU, GPU) in the cluster file")
        alive = sum(1 for n in nodes if not n.head and n.resources.get("CPU", 0.0) == (cpu or 0.0)
                    and n.resources.get("GPU", 0.0) == (gpu or 0.0))
        lines.append(f"  node type: {cpu or 0:g} CPUs, {gpu or 0:g} GPUs; {alive} alive, up to {most} (the "
                     "autoscaler adds them for pending trials)" + (": at zero now" if not alive else ""))
    total = sum(n.resources.get("GPU", 0.0) for n in nodes)
    lines.append(f"  GPUs alive: {total:g}" + (", more as the autoscaler adds nodes" if node_types else ""))
    return lines, problems


def check_live(address: str | None, out: str | None = None, timeout: float = 120.0) -> tuple[list[str], list[str]]:
    """Join the cluster at `address` (None: the Ray this process is already connected to) and ask
    every alive node what a trial there would get."""
    import platform

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    import stablesweep

    joined = address is not None
    if joined:
        check_reachable(address)
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise ClusterError(f"--address {address}: cannot join that Ray cluster: {e}") from None
    marker_file = None
    try:
        alive = [n for n in ray.nodes() if n.get("Alive")]
        nodes = sorted((NodeReport(n["NodeID"], n["NodeManagerAddress"], "node:__internal_head__" in n["Resources"],
                                   n["Resources"]) for n in alive), key=lambda n: (not n.head, n.ip))
        lines = [f"cluster at {address or ray.get_runtime_context().gcs_address}: {len(nodes)} node(s) alive"]
        out_marker = None
        if out and is_shared_uri(out):
            lines.append(f"  --out {out}: a bucket, which every node reaches by itself (not probed from the nodes)")
        elif out:
            base = Path(out.split("://", 1)[1] if uri_scheme(out) else out).expanduser().resolve()
            base.mkdir(parents=True, exist_ok=True)
            marker_file = base / f".stablesweep-cluster-check-{secrets.token_hex(4)}"
            content = secrets.token_hex(16)
            marker_file.write_text(content)
            out_marker = f"{marker_file}\n{content}"
        probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n.node_id, soft=False))
                .remote(out_marker) for n in nodes]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        for n, ref in zip(nodes, refs):
            if ref in ready:
                try:
                    n.answer = ray.get(ref)
                except Exception as e:  # noqa: BLE001 (whatever a node raises is the finding)
                    n.error = str(e).strip().splitlines()[-1]
        driver = {"ray": ray.__version__, "stablesweep": stablesweep.__version__, "python": platform.python_version(),
                  "auth_mode": os.environ.get("RAY_AUTH_MODE") or "(unset)"}
        more, found = judge(nodes, cluster_shape(autoscaling=True).node_types, driver, out, timeout)
        return lines + more, found
    finally:
        if marker_file is not None:
            marker_file.unlink(missing_ok=True)
        if joined:
            ray.shutdown()


def check_reachable(address: str) -> None:
    """A HOST:PORT that nothing answers on is refused at once (Ray would retry for minutes)."""
    m = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d+)", address)
    if "://" in address or m is None:
        return  # auto, local, ray://... : Ray resolves those itself
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=5).close()
    except OSError as e:
        raise InputError(f"--address {address}: nothing answers there ({e.strerror or e}); is the Ray head "
                         "running (`ray start --head`)?") from None
