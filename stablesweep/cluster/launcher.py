"""A Ray cluster made by Ray's cluster launcher (`ray up`): its cluster YAML checked before a
sweep runs on it, and the cluster stopped without touching anything else on its machines.

- `check_file(path)`: what a cluster YAML will give a sweep, read without a cluster: Ray's own
  schema, the node types and their GPUs, token authentication on every node, the autoscaler
  version, where the project is mounted, how `ray start` is run.
- `stop_nodes(path)`: this cluster's Ray on every machine of an on-prem (provider: local)
  cluster, over SSH, and nothing else. Ray's own `ray stop` stops every Ray process of the account
  on a machine; `ray down` of a local provider stops no worker at all.

A cluster's processes on a machine are found by its Ray temp dir (`ray start --temp-dir`, one of
the cluster's own): every Ray process there (GCS, raylet, agents, workers, job drivers) writes its
logs under it and holds them open. Not by name, nor by a variable in their environment: Ray
renames its processes (`ray::IDLE`), which overwrites what /proc shows of their environment.

The check returns the lines of a report and the problems found; each problem names the place and
says what to do. The conventions a file is held to are those of cluster.yaml and
configs/cluster_onprem.yaml; docs/cluster.md says why each one is there. The running cluster is
checked by `stablesweep.cluster.live`.
"""
from __future__ import annotations

import copy
import logging
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from stablesweep.vocab import InputError

MAX_TEMP_DIR = 40  # Ray's unix sockets live under TEMP_DIR/session_<date>_<pid>/sockets/ (107 bytes at most)
_RAY_START = re.compile(r"(\S*?)\bray\s+start\b")
_ENV = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)=(\S*?);?(?=\s|$)")
_NUM_CPUS_0 = re.compile(r"--num-cpus[= ]0(?:\.0*)?(?:\s|$)")
_TEMP_DIR = re.compile(r"--temp-dir[= ](\S+)")
# a `pip install`, and the path its pip or python is run from ('' for the login shell's PATH)
_PIP_INSTALL = re.compile(r"(\S*?)\b(?:pip3?(?:\.\d+)*|python3?(?:\.\d+)*\s+-m\s+pip)\s+install\b")
_RAY_PIN = re.compile(r"\bray(?:\[[^\]]*\])?==([0-9][\w.]*)")


class ClusterError(InputError):
    """A cluster file or a running cluster that will not serve a sweep as it is."""


def node_stop_command(temp_dir: str, grace: int = 20) -> str:
    """A shell line that stops the Ray whose temp dir is `temp_dir` on the machine it runs on: the
    processes with a file open, or their working directory, under it; SIGTERM first, SIGKILL after
    `grace` seconds. (A process that closed all of them, such as multiprocessing's helpers, ends
    with its parent.)"""
    return (f"p() {{ find /proc/[0-9]*/cwd /proc/[0-9]*/fd -maxdepth 1 -lname '{temp_dir}/*' 2>/dev/null "
            "| cut -d/ -f3 | sort -u; }; n=$(p | wc -l); kill $(p) 2>/dev/null; i=0; "
            f'while [ -n "$(p)" ] && [ $i -lt {grace} ]; do sleep 1; i=$((i+1)); done; '
            f'kill -9 $(p) 2>/dev/null; echo "stopped $n processes of {temp_dir}"')


# ---- the cluster file -----------------------------------------------------------------------------

@dataclass
class ClusterFile:
    path: str
    raw: dict   # as written
    config: dict  # as `ray up` sees it: Ray's defaults filled in, validated

    @property
    def name(self) -> str:
        return self.config["cluster_name"]

    @property
    def provider(self) -> str:
        return self.config["provider"]["type"]


def load_cluster_file(path: str | Path) -> ClusterFile:
    """The file as `ray up` reads it: YAML, Ray's defaults filled in, Ray's schema checked."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    p = Path(path)
    if not p.is_file():
        raise ClusterError(f"{path}: no such cluster file")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ClusterError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ClusterError(f"{path}: expected a mapping (cluster_name, provider, ...), got {type(raw).__name__}")
    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)  # its INFO lines about defaults it fills in
    try:
        config = prepare_config(copy.deepcopy(raw))
        validate_config(config)
    except (Exception, SystemExit) as e:  # noqa: BLE001 (jsonschema's ValidationError, click's abort of a local provider)
        msg = getattr(e, "message", None) or str(e) or type(e).__name__
        raise ClusterError(f"{path}: Ray's cluster launcher refuses it: {msg.splitlines()[0]}") from None
    return ClusterFile(str(path), raw, config)


def _home(p: str) -> str:
    """A remote path spelled the one way: ~/x for $HOME/x and ${HOME}/x."""
    return re.sub(r"^(\$HOME|\$\{HOME\})(?=/|$)", "~", p.strip()).rstrip("/")


def temp_dirs(cf: ClusterFile) -> dict[str, str | None]:
    """The Ray temp dir of each role (head, worker), from its `ray start` command (None: Ray's default)."""
    found: dict[str, str | None] = {}
    for role in ("head", "worker"):
        m = next((_TEMP_DIR.search(cmd) for _, cmd, _, _ in _starts(cf.config.get(f"{role}_start_ray_commands") or [])),
                 None)
        found[role] = m.group(1).rstrip("/") if m else None
    return found


def _starts(commands: list[str]) -> list[tuple[int, str, dict[str, str], str]]:
    """The `ray start` commands of a list: (index, the command, the variables set before `ray
    start` in it, the path `ray` is run from: '' for the login shell's PATH)."""
    found = []
    for i, cmd in enumerate(commands):
        m = _RAY_START.search(cmd)
        if m:
            found.append((i, cmd, dict(_ENV.findall(cmd[:m.start()])), m.group(1)))
    return found


def check_file(cf: ClusterFile, environ: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """Read a cluster file for what it will give a sweep. `environ`: the environment `ray up`
    and `ray job` run in (default: this process's)."""
    from ray import __version__ as ray_version

    env = os.environ if environ is None else environ
    c, where = cf.config, cf.path
    local = cf.provider == "local"
    lines = [f"{where}: cluster {cf.name}, provider {cf.provider}"]
    problems: list[str] = []

    # ---- nodes and their GPUs
    head_type = c["head_node_type"]
    if local:
        ips = c["provider"].get("worker_ips") or []
        lines.append(f"  head {c['provider']['head_ip']}, {len(ips)} worker(s): {', '.join(map(str, ips)) or 'none'} "
                     "(their CPUs and GPUs: what Ray detects on each machine)")
    else:
        for name, t in c["available_node_types"].items():
            res = (cf.raw.get("available_node_types") or {}).get(name, {}).get("resources") or {}
            have = ", ".join(f"{k} {v:g}" for k, v in res.items()) or "not declared"
            count = "head" if name == head_type else f"{t.get('min_workers', 0)}..{t.get('max_workers', 0)} nodes"
            lines.append(f"  {name}: {count}, {have}")
            if name != head_type and not {"CPU", "GPU"} <= set(res):
                problems.append(
                    f"available_node_types.{name}.resources: {res or '{}'} does not declare both CPU and GPU. Ray then "
                    "looks them up from the instance type at `ray up` and only warns when that fails; the autoscaler "
                    "then does not know this type has GPUs, and GPU trials never start it from zero. Write what one "
                    "node has, e.g. resources: {CPU: 48, GPU: 4} for a g5.12xlarge (GPU: 0 for a CPU-only type)")

    # ---- how Ray is started on each role
    auth_modes: dict[str, list[str]] = {}  # mode: the commands that set it
    token_paths, v1 = set(), False
    for role, key in (("head", "head_start_ray_commands"), ("worker", "worker_start_ray_commands")):
        commands = c.get(key) or []
        starts = _starts(commands)
        if not starts:
            problems.append(f"{key}: no `ray start` command")
        for i, cmd, sets, ray_path in starts:
            place = f"{key}[{i}]"
            if not ray_path:
                problems.append(f"{place}: `ray start` from the login shell's PATH, which may hold another Ray or "
                                "none; run the cluster's own by its path, e.g. $HOME/stablesweep-venv/bin/ray start")
            mode = sets.get("RAY_AUTH_MODE")
            if mode is None:
                problems.append(f"{place}: RAY_AUTH_MODE is not set for `ray start`. A head started where "
                                "~/.ray/auth_token exists requires a token, and a node that joins without "
                                "RAY_AUTH_MODE=token fails with InvalidAuthToken; put `export RAY_AUTH_MODE=token "
                                "RAY_AUTH_TOKEN_PATH=$HOME/stablesweep-cluster/auth_token;` before it (and mount the "
                                "token there: file_mounts)")
            else:
                auth_modes.setdefault(mode, []).append(place)
            if mode == "token":
                tp = sets.get("RAY_AUTH_TOKEN_PATH")
                if tp is None and "RAY_AUTH_TOKEN" not in sets:
                    problems.append(f"{place}: RAY_AUTH_MODE=token without RAY_AUTH_TOKEN_PATH: set it to the "
                                    "token file that file_mounts puts on every node")
                elif tp is not None:
                    token_paths.add(_home(tp))
            tm = _TEMP_DIR.search(cmd)
            temp = tm.group(1).rstrip("/") if tm else None
            if temp is None or temp in ("/tmp/ray", "$TMPDIR/ray") or not temp.startswith("/") \
                    or len(temp) > MAX_TEMP_DIR:
                problems.append(f"{place}: --temp-dir={temp or '(Ray default, /tmp/ray)'}: give `ray start` a temp "
                                f"dir of this cluster's own, an absolute path of at most {MAX_TEMP_DIR} characters "
                                f"(Ray's sockets live under it), e.g. --temp-dir=/tmp/ray-{cf.name}: `stablesweep "
                                "cluster stop` and the stop before each start find this cluster's processes, and "
                                "only those, by it")
            if role == "head" and local:
                if not _NUM_CPUS_0.search(cmd):
                    problems.append(f"{place}: the head would take trials: start it with --num-cpus=0 (the "
                                    "driver runs there; trials go to the workers)")
                v1 = sets.get("RAY_enable_autoscaler_v2", env.get("RAY_UP_enable_autoscaler_v2", "1")) == "0"
                if not v1:
                    problems.append(f"{place}: Ray 2.60's default autoscaler (v2) never starts the workers of a "
                                    "local provider (the head logs 'Adding 1 nodes to satisfy min count' every 5 s); "
                                    "put `export RAY_enable_autoscaler_v2=0;` before the head's `ray start`")
        if role == "head" and not local and starts:
            head_res = (cf.raw.get("available_node_types") or {}).get(head_type, {}).get("resources") or {}
            if head_res.get("CPU") != 0 and not any(_NUM_CPUS_0.search(cmd) for _, cmd, _, _ in starts):
                problems.append(f"available_node_types.{head_type}.resources: the head would take trials: "
                                "resources: {CPU: 0}")
    common = len(c.get("setup_commands") or [])  # Ray puts setup_commands first in each role's setup list
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
                "worker_start_ray_commands"):
        skip = common if key in ("head_setup_commands", "worker_setup_commands") else 0
        for i, cmd in enumerate((c.get(key) or [])[skip:]):
            if any(not m.group(1) for m in _PIP_INSTALL.finditer(cmd)):
                problems.append(f"{key}[{i}]: `pip install` into the login shell's Python, which Debian 12 and Ubuntu "
                                "23.04+ refuse (externally-managed-environment); install into a venv of the cluster's "
                                "own, by its path: python3 -m venv ~/stablesweep-venv, then ~/stablesweep-venv/bin/python "
                                "-m pip install ...")
            pin = _RAY_PIN.search(cmd) if "install" in cmd else None
            if pin and pin.group(1) != ray_version:
                problems.append(f"{key}[{i}]: the nodes get Ray {pin.group(1)}, this machine runs Ray {ray_version}: "
                                "`ray up` and `ray job` here need the nodes' version (pip install "
                                f'"ray[default]=={pin.group(1)}"), or change the pin to {ray_version}')
            if re.search(r"\bray\s+stop\b", cmd):
                problems.append(f"{key}[{i}]: `ray stop` stops every Ray process of the account on the machine, "
                                "other clusters' included; stop only this cluster's, by its --temp-dir: "
                                f"{node_stop_command(f'/tmp/ray-{cf.name}')}")
    if len(auth_modes) > 1:
        problems.append("RAY_AUTH_MODE differs between `ray start` commands ("
                        + "; ".join(f"{m} in {', '.join(places)}" for m, places in sorted(auth_modes.items()))
                        + "): nodes of one cluster need one mode")

    # ---- files on the nodes: the project, the token
    mounts = {_home(k): v for k, v in (c.get("file_mounts") or {}).items()}
    for remote, source in mounts.items():
        if remote == "~/stablesweep":
            problems.append(f"file_mounts: {remote}: a directory named stablesweep in the home directory is "
                            "imported instead of the installed package by anything run from there (`cannot import "
                            "name '__version__'`); mount the project elsewhere, e.g. ~/stablesweep-src")
        elif source in (".", "./"):
            lines.append(f"  project: {remote} on every node, from the directory `ray up` runs in")
    mode = next(iter(auth_modes)) if len(auth_modes) == 1 else None
    if mode == "token":
        for tp in sorted(token_paths):
            if tp not in mounts:
                problems.append(f"RAY_AUTH_TOKEN_PATH={tp}: no file_mounts entry puts the token there; add "
                                f'"{tp}": "~/.ray/auth_token"')
                continue
            source = Path(mounts[tp]).expanduser()
            lines.append(f"  token authentication: RAY_AUTH_MODE=token on every node, token {tp} from {mounts[tp]}")
            if not source.is_file():
                problems.append(f"file_mounts: {tp}: {mounts[tp]} does not exist here; make the token once with "
                                "`ray get-auth-token --generate`")
                continue
            mine = env.get("RAY_AUTH_TOKEN") or read_stripped(Path(env.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token").expanduser())
            theirs = source.read_text().strip()
            if env.get("RAY_AUTH_MODE") != "token" or mine != theirs:
                why = "no token" if mine is None else "another token" if mine != theirs else "the cluster's token"
                problems.append(f"this shell: RAY_AUTH_MODE={env.get('RAY_AUTH_MODE') or '(unset)'}, {why}: `ray job` "
                                "and `ray status` against this cluster fail ('Missing authentication token', "
                                f"'InvalidAuthToken'); export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={mounts[tp]}")
    elif mode is not None:
        lines.append(f"  token authentication: RAY_AUTH_MODE={mode} on every node")
    if local:
        lines.append(f"  autoscaler: {'v1' if v1 else 'v2 (Ray default)'}")
    return lines, problems


def read_stripped(p: Path) -> str | None:
    """A small file's text without surrounding whitespace (None: no such file)."""
    return p.read_text().strip() if p.is_file() else None


# ---- stop -------------------------------------------------------------------------------------------

def stop_nodes(cf: ClusterFile, echo: Callable[[str], None] = print) -> list[str]:
    """Stop this cluster's Ray on every machine of an on-prem cluster, over SSH as `ray up` reached
    them, workers first: only the processes of its Ray temp dir. Returns the machines where that
    failed, each with why."""
    if cf.provider != "local":
        raise ClusterError(f"{cf.path}: provider {cf.provider}: `ray down {cf.path}` stops and terminates a cloud "
                           "cluster's machines; `stablesweep cluster stop` is for machines you keep (provider: local)")
    temps = temp_dirs(cf)
    for role, temp in temps.items():
        if temp is None:
            raise ClusterError(f"{cf.path}: {role}_start_ray_commands: `ray start` has no --temp-dir, so this "
                               "cluster's processes cannot be told from other Ray processes of the machine")
    auth, prov = cf.config["auth"], cf.config["provider"]
    ssh = ["ssh", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={os.devnull}",
           "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    if auth.get("ssh_private_key"):
        ssh += ["-i", str(Path(auth["ssh_private_key"]).expanduser())]
    if auth.get("ssh_proxy_command"):
        ssh += ["-o", f"ProxyCommand={auth['ssh_proxy_command']}"]
    failed = []
    for role, ip in [("worker", ip) for ip in prov.get("worker_ips") or []] + [("head", prov["head_ip"])]:
        try:
            p = subprocess.run([*ssh, f"{auth['ssh_user']}@{ip}", node_stop_command(temps[role])],
                               check=False, capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            failed.append(f"{ip} ({role}): no answer in 90 s")
            continue
        said = (p.stdout.strip().splitlines() or [""])[-1]
        if p.returncode != 0 or not said.startswith("stopped"):
            failed.append(f"{ip} ({role}): ssh exited {p.returncode}: {(p.stderr or p.stdout).strip()[-500:]}")
        else:
            echo(f"{ip} ({role}): {said}")
    return failed
