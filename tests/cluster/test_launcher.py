"""Ray's own cluster launcher, end to end, on this machine, with the shipped on-prem cluster file:
`ray up` of a head (127.0.0.2) and a worker (127.0.0.3) over SSH, the cluster checked, a sweep
submitted as a Ray Job, `stablesweep cluster stop` and `ray down`, and nothing left running.

The machines are loopback addresses of this one (not 127.0.0.1: Ray replaces that node IP with
the machine's outward address). An sshd of the test's own (a throwaway host key and user key, a
free port on both addresses) gives each address a home directory and a temp dir of its own
(sshd's SetEnv), so the head's files and the worker's are apart as on two machines; the test's
side (where `ray up` runs) has a third. Ray's launcher has no SSH port option, and the head
reaches the worker with its own `ssh`: an `ssh` first on every PATH here adds the port. The
cluster file is configs/cluster_onprem.yaml with only what must differ here changed: the name,
addresses and SSH user and key, ports, temp dirs and node IPs, and no pip installs (the nodes'
venv is this test's interpreter's, linked as ~/stablesweep-venv). A `ray` on the nodes' login
PATH is a stub that only records its calls: a blanket `ray stop` (which `ray down` runs there)
stops nothing of this machine's other Ray processes.

Every process the test starts carries a marker in its environment (the nodes' through sshd's
SetEnv) or holds files under its temp dir (Ray's, whose renamed processes lose what /proc shows of
their environment); the teardown kills the process groups it started and then anything left of
either kind, and checks that nothing is left, also when the test fails.
"""
from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.cluster.test_two_node import _killpg, all_procs, dashboard_missing, free_port

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "configs" / "cluster_onprem.yaml"
BIN = Path(sys.executable).parent
MARK = "STABLESWEEP_TEST_LAUNCHER"
HEAD, WORKER = "127.0.0.2", "127.0.0.3"
APT = "apt-get install -y --no-install-recommends openssh-server openssh-client rsync"

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.environ.get("STABLESWEEP_CLUSTER_TEST") != "1",
                       reason="minutes of `ray up`: runs in `make cluster-test` (STABLESWEEP_CLUSTER_TEST=1)"),
]

# `ssh` on every PATH of the test: the sshd's port, and a key path ~/... (the launcher's `-i
# ~/ray_bootstrap_key.pem` on the head) in $HOME, where ssh itself would look in the account's home
SSH = """#!/bin/sh
k=; for a; do shift; [ "$k" = -i ] && a=$(echo "$a" | sed "s|^~/|$HOME/|"); k=$a; set -- "$@" "$a"; done
exec {ssh} -p {port} "$@"
"""
# the login shell's `ray` on the nodes: records the call, runs nothing
RAY_STUB = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/calls"
echo "stub: the login shell's ray ($*) does nothing in this test"
"""


def _tools_missing() -> str | None:
    missing = [t for t in ("ssh", "ssh-keygen", "rsync") if not shutil.which(t)]
    if not _sshd():
        missing.append("sshd")
    return f"{', '.join(missing)} not found; install them with `{APT}`" if missing else None


def _sshd() -> str | None:
    return shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.access(p, os.X_OK)),
                                        None)


def _port_free(port: int) -> bool:
    for ip in (HEAD, WORKER):
        with socket.socket() as s:
            try:
                s.bind((ip, port))
            except OSError:
                return False
    return True


class Machines:
    """An sshd that makes 127.0.0.1 and 127.0.0.2 two machines with homes of their own, and the
    test's own side, all under one temp dir, every process marked."""

    def __init__(self) -> None:
        # short: Ray's unix sockets live under the nodes' temp dirs (107 characters at most)
        self.dir = Path(tempfile.mkdtemp(prefix="ssl-", dir="/tmp"))
        self.marker = self.dir.name
        self.cluster = ""  # its name, once there is a cluster file
        self.pgids: list[int] = []
        self.home = {role: self.dir / role for role in ("here", "head", "worker")}
        for h in self.home.values():
            h.mkdir()
        self.key = self.dir / "id_ed25519"
        self.port = next(p for p in iter(free_port, None) if _port_free(p))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        token = self.home["here"] / ".ray" / "auth_token"
        token.parent.mkdir()
        token.write_text(secrets.token_hex(32))
        self.env.update({
            MARK: self.marker, "HOME": str(self.home["here"]), "TMPDIR": str(self.home["here"]),
            "RAY_TMPDIR": str(self.home["here"]), "PATH": os.pathsep.join([str(BIN), str(self.dir / "ssh"),
                                                                           os.environ.get("PATH", "")]),
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "PYTHONUNBUFFERED": "1",
        })

    def start_sshd(self) -> None:
        d = self.dir
        for name in ("host_key", "id_ed25519"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
        shutil.copy(d / "id_ed25519.pub", d / "authorized_keys")
        for name, text in (("ssh/ssh", SSH.format(ssh=shutil.which("ssh"), port=self.port)),
                           ("bin/ray", RAY_STUB)):
            (d / name).parent.mkdir(exist_ok=True)
            (d / name).write_text(text)
            (d / name).chmod(0o755)
        nodes = ""
        for role, ip in (("head", HEAD), ("worker", WORKER)):
            home = self.home[role]
            # Ray's launcher runs every command in a login shell that sources ~/.bashrc
            (home / ".bashrc").write_text(f'export PATH="{d / "bin"}:{d / "ssh"}:$PATH"\n')
            (home / "stablesweep-venv").symlink_to(sys.prefix)
            nodes += (f"Match LocalAddress {ip}\n  SetEnv HOME={home} TMPDIR={home} RAY_TMPDIR={home} "
                      f"{MARK}={self.marker} RAY_USAGE_STATS_ENABLED=0\n")
        (d / "sshd_config").write_text(
            f"ListenAddress {HEAD}:{self.port}\nListenAddress {WORKER}:{self.port}\n"
            f"HostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
            f"AllowUsers {getpass.getuser()}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            f"PidFile {d / 'sshd.pid'}\n" + nodes)
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        log = (d / "sshd.log").open("w")
        p = subprocess.Popen([_sshd(), "-D", "-e", "-f", str(d / "sshd_config")], env=self.env, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
        self.pgids.append(p.pid)
        deadline = time.time() + 20
        while time.time() < deadline and p.poll() is None:
            try:
                socket.create_connection((WORKER, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"sshd did not start:\n{(d / 'sshd.log').read_text()[-3000:]}")

    def run(self, args: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
        """A command on the test's side, in a process group of its own (killed on a timeout)."""
        p = subprocess.Popen(args, env=self.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True, **kw)
        self.pgids.append(p.pid)
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _killpg(p.pid)
            out, _ = p.communicate()
            raise AssertionError(f"{' '.join(args[:4])} ... ran past {timeout:g} s:\n{out[-6000:]}") from None
        return subprocess.CompletedProcess(args, p.returncode, out, "")

    def procs(self, under: Path | None = None) -> list[int]:
        """This test's processes: those with its marker in their environment, or a file open (or
        their working directory) under its temp dir; with `under`, only the latter, under that
        path. Both, since Ray renames its processes, which overwrites what /proc shows of their
        environment."""
        root = str(under or self.dir) + "/"
        found = []
        for p in all_procs():
            try:
                if under is None and p.environ().get(MARK) == self.marker:
                    found.append(p.pid)
                    continue
                links = [os.readlink(f"/proc/{p.pid}/cwd")]
                for fd in os.listdir(f"/proc/{p.pid}/fd"):
                    with contextlib.suppress(OSError):
                        links.append(os.readlink(f"/proc/{p.pid}/fd/{fd}"))
            except OSError:  # gone, or not ours to read
                continue
            if any(link.startswith(root) for link in links):
                found.append(p.pid)
        return found

    def stop(self) -> None:
        for pgid in self.pgids:
            _killpg(pgid)
        deadline, left = time.time() + 30, []
        while time.time() < deadline:
            left = self.procs()
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, 9)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.3)
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.cluster:  # the launcher's SSH control sockets (/tmp/ray_ssh_USER/CLUSTER, as Ray names them)
            h = [hashlib.sha256(s.encode()).hexdigest()[:10] for s in (getpass.getuser(), self.cluster)]
            shutil.rmtree(f"/tmp/ray_ssh_{h[0]}/{h[1]}", ignore_errors=True)
            with contextlib.suppress(OSError):
                os.rmdir(f"/tmp/ray_ssh_{h[0]}")  # if no other cluster's are there
        assert not left, f"processes of the launcher test still alive: {left}"


def cluster_file(m: Machines, name: str, gcs: int, dashboard: int) -> Path:
    """configs/cluster_onprem.yaml as this machine needs it."""
    c = yaml.safe_load(SHIPPED.read_text())
    shipped_name = c["cluster_name"]
    c["cluster_name"] = m.cluster = name
    c["provider"].update(head_ip=HEAD, worker_ips=[WORKER])
    c["auth"] = {"ssh_user": getpass.getuser(), "ssh_private_key": str(m.key)}
    c["setup_commands"] = [cmd for cmd in c["setup_commands"] if "pip install" not in cmd]

    def node(role: str, cmd: str, *extra: str) -> str:
        # each "machine" its own temp dir (the shipped /tmp/ray-NAME would be one for both here)
        cmd = cmd.replace(f"/tmp/ray-{shipped_name}", str(m.home[role] / "ray")).replace("6379", str(gcs))
        return cmd + (" " + " ".join(extra) if re.search(r"\bray start\b", cmd) else "")

    from ray._private.utils import get_ray_client_dependency_error

    # the Ray Client server listens on 10001 unless told (only where ray[client] is installed)
    client = [] if get_ray_client_dependency_error() else [f"--ray-client-server-port={free_port()}"]
    c["head_start_ray_commands"] = [
        node("head", cmd, f"--node-ip-address={HEAD}", f"--dashboard-port={dashboard}",
             f"--dashboard-agent-listen-port={free_port()}", *client) for cmd in c["head_start_ray_commands"]]
    c["worker_start_ray_commands"] = [
        node("worker", cmd, f"--node-ip-address={WORKER}", "--num-cpus=2", f"--dashboard-agent-listen-port={free_port()}")
        for cmd in c["worker_start_ray_commands"]]
    path = m.dir / "cluster.yaml"
    path.write_text(yaml.safe_dump(c, sort_keys=False))
    return path


def alive_nodes(dashboard: str, token: str) -> list[dict]:
    req = urllib.request.Request(f"{dashboard}/api/v0/nodes", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            data = json.load(r)
    except OSError:
        return []
    return [n for n in data["data"]["result"]["result"] if n["state"] == "ALIVE"]


@pytest.fixture
def machines(request):
    why = _tools_missing()
    if why:
        pytest.skip(why)
    if dashboard_missing():
        pytest.fail(f"the Ray dashboard cannot start ({dashboard_missing()}): `ray job submit` needs ray[default]")
    m = Machines()
    request.addfinalizer(m.stop)  # before anything starts: stopped also when starting fails
    m.start_sshd()
    return m


def test_ray_up_job_submit_stop_and_down_with_the_shipped_onprem_file(machines):
    m, t0, took = machines, time.time(), {}
    name, gcs, dport = f"ss-{m.marker}", free_port(), free_port()
    dashboard, token = f"http://127.0.0.1:{dport}", Path(m.env["RAY_AUTH_TOKEN_PATH"]).read_text()
    path = cluster_file(m, name, gcs, dport)
    stablesweep = [sys.executable, "-m", "stablesweep"]

    p = m.run([*stablesweep, "cluster", "check", str(path)], timeout=60)
    assert p.returncode == 0 and "ok: no problem found" in p.stdout, p.stdout

    # `ray up` with Ray's defaults (no RAY_UP_enable_autoscaler_v2): the file itself picks autoscaler v1
    p = m.run([str(BIN / "ray"), "up", "-y", "--no-config-cache", str(path)], timeout=300)
    assert p.returncode == 0, p.stdout[-6000:]
    took["ray up"] = time.time() - t0
    deadline = time.time() + 180
    while len(alive_nodes(dashboard, token)) < 2 and time.time() < deadline:
        time.sleep(2)
    nodes = alive_nodes(dashboard, token)
    if len(nodes) < 2:
        log = (m.home["head"] / "ray" / "session_latest" / "logs" / "monitor.out").read_text(errors="replace")
        raise AssertionError(f"the worker did not join: {nodes}\nthe head's monitor.out:\n{log[-6000:]}")
    took["worker joined"] = time.time() - t0
    assert not (m.dir / "bin" / "calls").exists()  # every `ray` the file runs is the venv's, by its path
    ids = {n["node_ip"]: n["node_id"] for n in nodes}

    def job(*args: str, timeout: float = 300) -> str:
        runtime_env = {"working_dir": str(ROOT), "excludes": ["/.git/", "/data/", "/runs/", "/demo-out/"]}
        p = m.run([str(BIN / "ray"), "job", "submit", "--address", dashboard, "--runtime-env-json",
                   json.dumps(runtime_env), "--", "stablesweep", *args], timeout=timeout)  # `stablesweep` of the venv
        assert p.returncode == 0, p.stdout[-6000:]
        return p.stdout

    shared = m.dir / "shared"  # one machine: one disk, shared by its "nodes"
    out = job("cluster", "check", "--address", "auto", "--out", str(shared))
    took["live check"] = time.time() - t0
    assert "2 node(s) alive" in out and "ok: no problem found" in out, out
    head_line = next(ln for ln in out.splitlines() if ln.strip().startswith(f"head {HEAD}"))
    worker_line = next(ln for ln in out.splitlines() if ln.strip().startswith(f"worker {WORKER}"))
    assert "0 CPUs" in head_line and "2 CPUs" in worker_line, out  # the head takes no trials
    for ln in (head_line, worker_line):
        assert "RAY_AUTH_MODE=token" in ln and "sees --out: yes" in ln, ln

    space = m.dir / "space.yaml"
    space.write_text("training.lr: {grid: [3.0e-3]}\n")
    out = job("sweep", "configs/demo.yaml", "--space", str(space), "--sampler", "grid", "--samples", "1",
              "--steps", "10", "--set", "training.report_interval=5", "--no-asha", "--address", "auto",
              "--out", str(shared), "--shared-storage", "--name", "launcher")
    took["sweep job"] = time.time() - t0
    table = pd.read_csv(shared / "launcher" / "trials.csv")
    assert len(table) == 1 and set(table["verdict"]) == {"stable"}, out[-4000:]
    assert set(table["node_id"]) == {ids[WORKER]}, (table["node_id"], ids)  # trials on the worker only

    temps = [m.home[role] / "ray" for role in ("head", "worker")]
    assert all(m.procs(under=t) for t in temps)
    p = m.run([*stablesweep, "cluster", "stop", str(path)], timeout=180)
    assert p.returncode == 0, p.stdout
    for ip, role in ((WORKER, "worker"), (HEAD, "head")):
        n = re.search(rf"^{re.escape(ip)} \({role}\): stopped (\d+) processes of {m.home[role] / 'ray'}$", p.stdout,
                      re.MULTILINE)
        assert n and int(n.group(1)) > 0, p.stdout
    p = m.run([str(BIN / "ray"), "down", "-y", str(path)], timeout=180)
    assert p.returncode == 0, p.stdout[-4000:]
    took["stop and down"] = time.time() - t0
    # `ray down` ran `ray stop` in the head's login shell (Ray's launcher, whatever the file says)
    assert (m.dir / "bin" / "calls").read_text().split() == ["stop"]
    assert not [pid for t in temps for pid in m.procs(under=t)], "Ray processes of the cluster left"
    print("launcher test, seconds since start: " + ", ".join(f"{k} {v:.0f}" for k, v in took.items()))
