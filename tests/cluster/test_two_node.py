"""Sweeps on a real multi-node Ray cluster, on this one machine.

The module starts its own cluster with `ray start`, every node registered on loopback (127.0.0.2): a
head (1 CPU, the dashboard and job server on 127.0.0.1) and a worker node (2 CPUs and the custom resource `worker_node`), each with its own temp
dir (as on separate machines), free ports and process group, and token authentication on a token
of its own. Trials ask for `worker_node`, so they can only run on the worker. The sweep drivers
are subprocesses (this test process may hold the session's own local Ray, and a process attaches
to one cluster only).

Stopping is scoped to this cluster: never `ray stop`, which kills every Ray process on the machine
(other tests' and other users' too). Every process started here, including the workers that the
raylets spawn in process groups of their own, carries an environment marker; `stop` SIGKILLs the
process groups it started, then any process left with the marker, and checks none is left.
"""
from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from stablesweep.sweep.search import study_summary
from stablesweep.tracking import Tracker
from tests.conftest import ROOT

RAY = str(Path(sys.executable).parent / "ray")
MARK = "STABLESWEEP_TEST_CLUSTER"  # names the cluster a process belongs to
NODE_MARK = "STABLESWEEP_TEST_NODE"  # and its node
INTERVAL = 10
STEPS = 20
# three stable lrs and one that diverges in the first report interval: four trials, one each
SPACE = "training.lr: {grid: [1.0e-3, 3.0e-3, 1.0e-2, 1.0e+3]}\n"
N = 4
NODE_IP = "127.0.0.2"  # every node registers on loopback (Ray rewrites 127.0.0.1 to the outward address)

pytestmark = [
    pytest.mark.timeout(420),
    pytest.mark.skipif(os.environ.get("STABLESWEEP_CLUSTER_TEST") != "1",
                       reason="minutes of a two-node Ray cluster: runs in `make cluster-test` (STABLESWEEP_CLUSTER_TEST=1)"),
]


def dashboard_missing() -> str | None:
    """Why the dashboard (and the job server behind `ray job submit`) cannot start, if it cannot:
    it needs ray[default], not the minimal ray that ray[tune] brings."""
    import ray._private.utils as ray_utils

    return ray_utils.get_dashboard_dependency_error()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    """A process as /proc shows it (Linux; no psutil needed)."""

    pid: int

    def _read(self, what: str) -> bytes:
        return Path(f"/proc/{self.pid}/{what}").read_bytes()

    def environ(self) -> dict[str, str]:
        items = [kv.split("=", 1) for kv in self._read("environ").decode(errors="replace").split("\0") if "=" in kv]
        return dict(items)

    def cmdline(self) -> str:
        return self._read("cmdline").decode(errors="replace").replace("\0", " ").strip()

    def name(self) -> str:
        return self._read("comm").decode(errors="replace").strip()

    def cwd(self) -> str:
        return os.readlink(f"/proc/{self.pid}/cwd")

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def all_procs() -> list[Proc]:
    return [Proc(int(d)) for d in os.listdir("/proc") if d.isdigit() and int(d) != os.getpid()]


@dataclass
class Node:
    name: str
    pgid: int
    node_id: str = ""


class LocalCluster:
    """A Ray cluster of several nodes on this machine, started with `ray start`."""

    def __init__(self) -> None:
        # short: Ray's unix sockets live under it (107 characters at most)
        self.temp_dir = tempfile.mkdtemp(prefix="ssc-", dir="/tmp")
        self.marker = Path(self.temp_dir).name
        self.port, self.dashboard_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env.update({
            MARK: self.marker,
            # token authentication on a token of this cluster's own (Ray 2.60 turns it on for a head
            # when ~/.ray/auth_token exists, but not for a joining node: say it for every process)
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
            # notice a lost node in about 3 s, not 15 s
            "RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3",
            "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1",
        })
        self.env = env
        self.nodes: dict[str, Node] = {}

    @property
    def address(self) -> str:
        return f"{NODE_IP}:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, args: list[str]) -> Node:
        # a temp dir a node: nodes of one machine that share one would share its runtime_resources/,
        # and one node's runtime-env agent would delete a job's working_dir that another node runs in
        node_dir = Path(self.temp_dir, name)
        node_dir.mkdir()
        log = Path(self.temp_dir, f"{name}.log")
        cmd = [RAY, "start", *args, "--node-ip-address", NODE_IP, "--temp-dir", str(node_dir), "--disable-usage-stats",
               "--dashboard-agent-listen-port", str(free_port())]
        with log.open("w") as f:
            p = subprocess.Popen(cmd, env={**self.env, NODE_MARK: f"{self.marker}/{name}"}, stdout=f,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        node = self.nodes[name] = Node(name, p.pid)  # known before it is up: stop() can kill it
        try:
            rc = p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            rc = None
        assert rc == 0, f"ray start ({name}) failed:\n{log.read_text()[-4000:]}"
        node.node_id = self._node_id(name)
        return node

    def start_head(self, num_cpus: int) -> Node:
        from ray._private.utils import get_ray_client_dependency_error

        dashboard = dashboard_missing() is None  # without it the cluster still runs; `ray job` does not
        # the Ray Client server listens on 10001 unless told (only where ray[client] is installed)
        client = [] if get_ray_client_dependency_error() else ["--ray-client-server-port", str(free_port())]
        return self._start("head", ["--head", "--port", str(self.port), "--num-cpus", str(num_cpus),
                                    "--include-dashboard", str(dashboard).lower(), "--dashboard-host", "127.0.0.1",
                                    "--dashboard-port", str(self.dashboard_port), *client])

    def add_node(self, name: str, num_cpus: int, resources: dict) -> Node:
        return self._start(name, ["--address", self.address, "--num-cpus", str(num_cpus),
                                  "--resources", json.dumps(resources)])

    def procs(self, name: str | None = None) -> list[Proc]:
        """This cluster's processes (of one node), found by the marker in their environment."""
        found = []
        want = f"{self.marker}/{name}" if name else None
        for p in all_procs():
            try:
                env = p.environ()
            except OSError:  # gone, or not ours to read
                continue
            if env.get(MARK) == self.marker and (want is None or env.get(NODE_MARK) == want):
                found.append(p)
        return found

    def _node_id(self, name: str) -> str:
        deadline = time.time() + 30
        while time.time() < deadline:
            for p in self.procs(name):
                try:
                    if p.name() == "raylet":
                        m = re.search(r"--node_id=([0-9a-f]+)", p.cmdline())
                        if m:
                            return m.group(1)
                except OSError:
                    continue
            time.sleep(0.2)
        raise AssertionError(f"no raylet found for node {name}")

    def kill_node(self, name: str) -> None:
        """What a machine's loss looks like: SIGKILL to the node's process group (raylet and its
        agents) and to every other process of the node (the trial workers)."""
        _killpg(self.nodes[name].pgid)
        for p in self.procs(name):
            p.kill()

    def stop(self) -> None:
        for node in self.nodes.values():
            _killpg(node.pgid)
        deadline, left = time.time() + 30, []
        while time.time() < deadline:
            left = self.procs()
            if not left:
                break
            for p in left:
                p.kill()
            time.sleep(0.3)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        assert not left, f"processes of the test cluster still alive: {[p.pid for p in left]}"


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.fixture(scope="module")
def cluster(request):
    c = LocalCluster()
    request.addfinalizer(c.stop)  # before anything starts: stopped also when starting fails
    c.start_head(num_cpus=1)
    c.add_node("worker", num_cpus=2, resources={"worker_node": 4})
    return c


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("space") / "tiny.yaml"
    p.write_text(SPACE)
    return p


def sweep_args(space: Path, name: str, *extra: str, steps: int = STEPS) -> list[str]:
    return ["sweep", "configs/demo.yaml", "--space", str(space), "--sampler", "grid", "--samples", str(N),
            "--steps", str(steps), "--set", f"training.report_interval={INTERVAL}", "--no-asha", "--name", name,
            "--resources-per-trial", '{"worker_node": 1}', *extra]


def run_driver(cluster: LocalCluster, args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stablesweep", *args], env=cluster.env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def check_sweep(sweep_dir: Path, tracking_uri: str, on_node: str, output: str, stable: int = 3) -> pd.DataFrame:
    """Every trial once, with one verdict, on the node given; the region files and MLflow complete."""
    table = pd.read_csv(sweep_dir / "trials.csv")
    assert len(table) == N and table["trial_id"].is_unique, table
    assert (table["node_id"] == on_node).all(), table[["trial_id", "node_id"]]
    assert (table["verdict"] == "stable").sum() == stable, table[["name", "verdict", "reason", "steps"]]
    assert set(table["verdict"]) <= {"stable", "diverged"}
    stable_rows = table[table["verdict"] == "stable"]
    assert (stable_rows["steps"] == stable_rows["budget_steps"]).all()
    assert len([ln for ln in output.splitlines() if re.match(r"^\[\s*\d+/\d+\] ", ln)]) == N  # a line a trial
    region = json.loads((sweep_dir / "stable_region.json").read_text())
    assert sum(region["counts"].values()) == N and region["counts"]["stable"] == stable
    for f in ("stable_region.md", "recommended.yaml", "optuna.db", "sweep.json", "figures/region_lr_clip.png"):
        assert (sweep_dir / f).exists(), f
    state = json.loads((sweep_dir / "sweep.json").read_text())
    rows = study_summary(state["study_url"], state["study_name"])
    assert sorted(r["tune_trial_id"] for r in rows) == sorted(table["trial_id"])
    assert not [r for r in rows if r["state"] == "RUNNING"]
    tr = Tracker(tracking_uri)
    parents = tr.sweep_runs()
    assert [p.run_id for p in parents] == [state["parent_run_id"]]
    assert parents[0].status == "FINISHED"
    arts = {a.path for a in tr.client.list_artifacts(state["parent_run_id"])}
    assert {"stable_region.json", "stable_region.md", "recommended.yaml", "trials.csv"} <= arts
    children = {c.tags["stablesweep.trial_id"]: c for c in tr.children(state["parent_run_id"])}
    assert sorted(children) == sorted(table["trial_id"])
    for _, t in table.iterrows():
        c = children[t["trial_id"]]
        assert c.tags["verdict"] == t["verdict"] and c.tags["node_id"] == on_node
        steps = [m.step for m in tr.client.get_metric_history(c.run_id, "loss")]
        # each report once; a diverged trial's last where it stopped (its first bad step, on the CPU)
        assert steps == sorted({*range(INTERVAL, int(t["steps"]) + 1, INTERVAL), int(t["steps"])}), steps
    return table


def test_a_local_out_is_refused_on_two_nodes(cluster, space, tmp_path):
    p = run_driver(cluster, sweep_args(space, "refused", "--address", cluster.address, "--out", str(tmp_path / "out")),
                   timeout=120)
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-3000:]
    err = p.stderr
    assert f"error: --out {tmp_path / 'out'}: a plain local path, but the Ray cluster has 2 nodes" in err, err
    assert "own disk" in err and "--shared-storage" in err and "s3://" in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_sweep_with_address_runs_its_trials_on_the_worker_node(cluster, space, tmp_path):
    out = tmp_path / "shared"
    t0 = time.time()
    p = run_driver(cluster, sweep_args(space, "direct", "--address", cluster.address, "--out", str(out),
                                       "--shared-storage"))
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    assert "cluster: 2 nodes" in p.stdout and "retried 2 times" in p.stdout, p.stdout
    check_sweep(out / "direct", f"sqlite:///{out / 'mlflow.db'}", cluster.nodes["worker"].node_id, p.stdout)
    print(f"direct sweep: {time.time() - t0:.0f}s")


def test_sweep_submitted_as_a_ray_job_finishes_the_same_way(cluster, space, tmp_path):
    """`ray job submit --working-dir .` as docs/cluster.md says, to the head's job server; the
    bucket layout: Tune's storage a URI (file:// stands in for s3://), the region on the head."""
    if dashboard_missing():
        pytest.fail(f"the Ray dashboard cannot start ({dashboard_missing()}): `ray job submit` needs ray[default]; "
                    "the project must depend on it (pyproject.toml: ray[default,tune])")
    bucket, local, sid = tmp_path / "bucket", tmp_path / "local", f"stablesweep-{secrets.token_hex(4)}"
    runtime_env = {"working_dir": str(ROOT), "excludes": ["/.git/", "/data/", "/runs/", "/demo-out/"]}
    cmd = [RAY, "job", "submit", "--address", cluster.dashboard, "--submission-id", sid,
           "--runtime-env-json", json.dumps(runtime_env), "--", sys.executable, "-m", "stablesweep",
           *sweep_args(space, "job", "--address", "auto", "--out", bucket.as_uri(), "--shared-storage",
                       "--local-dir", str(local))]
    t0 = time.time()
    p = subprocess.run(cmd, env=cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    ask = ("import sys; from ray.job_submission import JobSubmissionClient as C; "
           "print(C(sys.argv[1]).get_job_status(sys.argv[2]).value)")
    status = subprocess.run([sys.executable, "-c", ask, cluster.dashboard, sid], env=cluster.env,
                            capture_output=True, text=True, timeout=60)
    assert status.stdout.strip() == "SUCCEEDED", status.stdout + status.stderr
    assert "sweep job: 4 trials" in p.stdout  # the job's log, followed by `ray job submit`
    table = check_sweep(local / "job", f"sqlite:///{local / 'mlflow.db'}", cluster.nodes["worker"].node_id, p.stdout)
    # Tune's experiment in the "bucket"; the sweep's own files and MLflow on the driver (the head)
    assert sorted(q.name for q in (bucket / "job").glob("trial_*")) == sorted(f"trial_{t}" for t in table["trial_id"])
    assert list((bucket / "job").glob("experiment_state-*.json"))
    assert not (bucket / "job" / "trials.csv").exists() and not (bucket / "mlflow.db").exists()
    state = json.loads((local / "job" / "sweep.json").read_text())
    assert (state["storage"], state["experiment_path"]) == (bucket.as_uri(), f"{bucket.as_uri()}/job")
    print(f"job sweep: {time.time() - t0:.0f}s")
    # --resume finds the sweep in --local-dir and restores Tune's experiment from the URI: all done
    p = run_driver(cluster, sweep_args(space, "job", "--address", cluster.address, "--out", bucket.as_uri(),
                                       "--shared-storage", "--local-dir", str(local), "--resume"), timeout=180)
    assert p.returncode == 0 and "resuming sweep job" in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]
    again = pd.read_csv(local / "job" / "trials.csv")
    assert sorted(again["trial_id"]) == sorted(table["trial_id"]) and not re.search(r"^\[\s*\d+/", p.stdout, re.M)
    assert len(Tracker(f"sqlite:///{local / 'mlflow.db'}").children(state["parent_run_id"])) == N


def _trial_on(cluster: LocalCluster, name: str, exp_dir: Path) -> str | None:
    """A trial running on node `name` whose first checkpoint the driver has registered: Tune runs
    each trial in a working directory named after it (its cwd); the worker writes its checkpoints
    to storage; and it goes on to a second one only after the driver registered the first (Tune
    asks the trial for the checkpoint of a report before it lets it train on)."""
    for p in cluster.procs(name):
        try:
            if "ImplicitFunc" not in p.cmdline():
                continue
            trial_dir = Path(p.cwd()).name
        except OSError:
            continue
        if trial_dir.startswith("trial_") and any(int(c.name.rsplit("_", 1)[1]) >= 1
                                                  for c in (exp_dir / trial_dir).glob("checkpoint_*")):
            return trial_dir.removeprefix("trial_")
    return None


def test_worker_node_killed_mid_sweep_trials_resume_elsewhere(cluster, space, tmp_path):
    """A third node with the resource takes two of the four trials; SIGKILL it once one of them
    has a checkpoint. Those trials are retried on the remaining worker from their checkpoints and
    the sweep ends with every trial once, each with one verdict."""
    lost = cluster.add_node("lost", num_cpus=2, resources={"worker_node": 4})
    stable_space = tmp_path / "stable.yaml"
    stable_space.write_text("training.lr: {grid: [1.0e-3, 2.0e-3, 3.0e-3, 5.0e-3]}\n")
    out, steps = tmp_path / "shared", 40
    args = sweep_args(stable_space, "kill", "--address", cluster.address, "--out", str(out), "--shared-storage",
                      "--max-concurrent", "4", steps=steps)
    log = tmp_path / "driver.log"
    t0 = time.time()
    with log.open("w") as f:
        driver = subprocess.Popen([sys.executable, "-m", "stablesweep", *args], env=cluster.env, cwd=ROOT,
                                  stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        victim, deadline = None, time.time() + 150
        while victim is None and time.time() < deadline and driver.poll() is None:
            victim = _trial_on(cluster, "lost", out / "kill")
            time.sleep(0.2)
        assert victim is not None, "no trial reached a checkpoint on the third node\n" + log.read_text()[-4000:]
        cluster.kill_node("lost")
        killed_at = time.time() - t0
        rc = driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            _killpg(driver.pid)
            driver.wait(timeout=30)
    output = log.read_text()
    assert rc == 0, output[-5000:]
    assert "cluster: 3 nodes" in output
    assert not cluster.procs("lost")

    worker = cluster.nodes["worker"].node_id
    table = check_sweep(out / "kill", f"sqlite:///{out / 'mlflow.db'}", worker, output, stable=N)
    assert (table["steps"] == steps).all()  # none lost: every trial ran its whole budget
    # the trials of the lost node ran there first, then went on from their last checkpoint
    resumed = 0
    for tid in table["trial_id"]:
        reports = [json.loads(ln) for ln in (out / "kill" / f"trial_{tid}" / "result.json").open()]
        nodes = [r["node_id"] for r in reports]
        if lost.node_id not in nodes:
            assert set(nodes) == {worker}
            continue
        resumed += 1
        k = nodes.index(worker)
        assert set(nodes[:k]) == {lost.node_id} and set(nodes[k:]) == {worker}, nodes
        before, after = [r["step"] for r in reports[:k]], [r["step"] for r in reports[k:]]
        # from its last registered checkpoint (not from step 0): at most the last report before the
        # loss is reported again (Tune registers a report's checkpoint one round trip after the report)
        assert INTERVAL < after[0] <= before[-1] + INTERVAL, (before, after)
        assert before[-1] + INTERVAL - after[0] <= INTERVAL, (before, after)
        assert after == list(range(after[0], steps + 1, INTERVAL))
        assert sorted(set(before + after)) == list(range(INTERVAL, steps + 1, INTERVAL))  # no step skipped
        assert math.isclose(reports[-1]["initial_loss"], reports[0]["initial_loss"])  # the monitor's state came along
    assert resumed >= 1 and victim in set(table["trial_id"])
    retries = [ln for ln in output.splitlines() if ln.startswith("[retry]")]
    assert any(f"(trial {victim})" in ln and "from its checkpoint at step" in ln for ln in retries), retries
    print(f"kill sweep: node lost at {killed_at:.0f}s, done at {time.time() - t0:.0f}s; {resumed} trial(s) resumed")


def test_ramp_on_two_nodes_continue_mode_warm_starts_from_checkpoints_in_the_bucket(cluster, tmp_path):
    """`stablesweep ramp` on the cluster: a local --out is refused as for a sweep; with the bucket
    layout (Tune's rounds at a URI, the ramp's files on the driver) every probe runs on the worker
    node, and continue mode warm-starts each rung from the last stable rung's checkpoint read back
    from the URI (the step counter carries on)."""
    ramp = ["ramp", "configs/demo.yaml", "--lr-start", "0.025", "--lr-stop", "0.1", "--ladder", "x2", "--steps", "10", "--target-steps", "10",
            "--samples", "0",  # the climb's warm starts alone, no samples below the edge
            "--mode", "continue", "--set", "training.report_interval=5", "--set", "training.warmup_steps=0",
            "--set", "training.schedule=constant", "--resources-per-trial", '{"worker_node": 1}',
            # the mechanics of continue mode, not the stall rule: 10-step rungs at these lrs may not
            # yet fall 10%, and a stalled rung is no rung to climb from
            "--set", "monitor.min_progress=0",
            "--address", cluster.address, "--name", "r"]
    p = run_driver(cluster, [*ramp, "--out", str(tmp_path / "plain")], timeout=120)
    assert p.returncode == 2 and "a plain local path, but the Ray cluster has 2 nodes" in p.stderr, p.stderr[-3000:]
    assert not (tmp_path / "plain").exists()

    bucket, local = tmp_path / "bucket", tmp_path / "local"
    p = run_driver(cluster, [*ramp, "--out", bucket.as_uri(), "--shared-storage", "--local-dir", str(local)])
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    assert "cluster: 2 nodes" in p.stdout, p.stdout
    doc = json.loads((local / "r" / "ramp.json").read_text())
    x = doc["settings"][0]
    probes = x["probe_list"]
    assert [q["lr"] for q in probes] == [0.025, 0.05, 0.1] and x["status"] == "never_diverged", probes
    worker = cluster.nodes["worker"].node_id
    assert all(q["node_id"] == worker for q in probes), [q["node_id"] for q in probes]
    # each rung went on from the one before it, from a checkpoint in the "bucket"
    assert [(q["start_step"], q["steps"]) for q in probes] == [(0, 10), (10, 20), (20, 30)]
    for q in probes:
        assert q["checkpoint"].startswith(bucket.as_uri() + "/r/tune/trial_"), q["checkpoint"]
        assert (Path(q["checkpoint"].removeprefix("file://")) / "checkpoint.pt").is_file()
    assert not (bucket / "r" / "ramp.json").exists() and (local / "r" / "ramp.png").is_file()
    tr = Tracker(f"sqlite:///{local / 'mlflow.db'}")
    [parent] = tr.client.search_runs([tr.experiment_id], "tags.`stablesweep.kind` = 'ramp'")
    children = tr.children(parent.info.run_id)
    assert len(children) == 3 and {c.tags["node_id"] for c in children} == {worker}
    assert {c.tags["verdict"] for c in children} == {"stable"}
