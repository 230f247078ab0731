"""The shipped cluster files, as `ray up` and `stablesweep cluster check` read them (no cluster):
Ray's own schema, and each way a file goes wrong on Ray 2.60's launcher refused with its reason."""
import copy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from stablesweep.cli import main
from stablesweep.cluster.launcher import (
    ClusterError,
    ClusterFile,
    check_file,
    load_cluster_file,
    node_stop_command,
    temp_dirs,
)

ROOT = Path(__file__).resolve().parents[2]
CLOUD, ONPREM = ROOT / "cluster.yaml", ROOT / "configs" / "cluster_onprem.yaml"
FILES = [CLOUD, ONPREM]


@pytest.fixture
def user(tmp_path, monkeypatch) -> dict:
    """A user's machine with the cluster's token in ~/.ray/auth_token, and a shell that says so."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_UP_enable_autoscaler_v2"):
        monkeypatch.delenv(k, raising=False)  # this process's shell, as `stablesweep cluster check` reads it
    token = tmp_path / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("0123abcd" * 8)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


def edited(path: Path, change) -> ClusterFile:
    raw = yaml.safe_load(path.read_text())
    change(raw)
    return ClusterFile(str(path), raw, prepare_config(copy.deepcopy(raw)))


def problems(cf: ClusterFile, env: dict) -> list[str]:
    return check_file(cf, env)[1]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_cluster_file_is_valid_for_ray_up(path):
    raw = yaml.safe_load(path.read_text())
    config = prepare_config(copy.deepcopy(raw))  # what `ray up` does before validating (no cloud call)
    validate_config(config)
    # the dashboard stays on the head's localhost
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_shipped_files_pass_the_check(path, user, capsys):
    cf = load_cluster_file(path)
    lines, found = check_file(cf, user)
    assert found == [], found
    assert any("RAY_AUTH_MODE=token on every node, token ~/stablesweep-cluster/auth_token" in ln for ln in lines)
    # each start list first stops this cluster's earlier Ray (by its temp dir), exactly as `cluster stop` does
    for role, temp in temp_dirs(cf).items():
        assert temp == f"/tmp/ray-{cf.name}"
        assert cf.config[f"{role}_start_ray_commands"][0] == node_stop_command(temp)
    # the project is installed into a venv of its own, from where it shadows nothing
    assert "~/stablesweep-src" in cf.config["file_mounts"]
    assert any("stablesweep-venv/bin/python -m pip install" in c and "-e ~/stablesweep-src" in c
               for c in cf.config["setup_commands"])
    assert main(["cluster", "check", str(path)]) == 2  # this process's shell has no token mode
    assert "this shell: RAY_AUTH_MODE=" in capsys.readouterr().err


def test_cloud_cluster_scales_gpu_workers_from_zero_with_their_gpus_declared():
    config = prepare_config(yaml.safe_load(CLOUD.read_text()))
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert workers and all(v["min_workers"] == 0 and v["max_workers"] >= 1 for v in workers.values())
    assert all(v["resources"].get("GPU", 0) >= 1 for v in workers.values())
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}
    # the head's autoscaler reaches AWS with boto3, which no extra of Ray brings: in the venv it runs from
    assert any(c.startswith("~/stablesweep-venv/bin/python -m pip install") and "boto3" in c
               for c in config["head_setup_commands"])


def test_onprem_head_takes_no_trials_and_runs_autoscaler_v1(user):
    cf = load_cluster_file(ONPREM)
    [head] = [c for c in cf.config["head_start_ray_commands"] if "ray start" in c]
    assert "--num-cpus=0" in head and "export RAY_enable_autoscaler_v2=0 " in head
    assert "  autoscaler: v1" in check_file(cf, user)[0]


def test_a_broken_cluster_file_is_refused_by_the_schema(tmp_path):
    raw = yaml.safe_load(CLOUD.read_text())
    raw["available_node_types"]["gpu_worker"]["max_wokers"] = 2  # a typo
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ClusterError, match=f"{path}: Ray's cluster launcher refuses it: .*max_wokers"):
        load_cluster_file(path)


def _start(raw: dict, role: str, old: str, new: str) -> None:
    key = f"{role}_start_ray_commands"
    raw[key] = [c.replace(old, new) for c in raw[key]]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("change, expect", [
    # 2. token authentication
    (lambda r: _start(r, "worker", "RAY_AUTH_MODE=token ", ""),
     "worker_start_ray_commands[1]: RAY_AUTH_MODE is not set for `ray start`"),
    (lambda r: _start(r, "head", " RAY_AUTH_TOKEN_PATH=$HOME/stablesweep-cluster/auth_token", ""),
     "head_start_ray_commands[1]: RAY_AUTH_MODE=token without RAY_AUTH_TOKEN_PATH"),
    (lambda r: r["file_mounts"].pop("~/stablesweep-cluster/auth_token"),
     "RAY_AUTH_TOKEN_PATH=~/stablesweep-cluster/auth_token: no file_mounts entry puts the token there"),
    (lambda r: r["file_mounts"].update({"~/stablesweep-cluster/auth_token": "~/no-token"}),
     "file_mounts: ~/stablesweep-cluster/auth_token: ~/no-token does not exist here"),
    # 3. the project where it shadows the package
    (lambda r: r["file_mounts"].update({"~/stablesweep": r["file_mounts"].pop("~/stablesweep-src")}),
     "file_mounts: ~/stablesweep: a directory named stablesweep in the home directory is imported instead"),
    # 4. the system Python, `ray` of the login shell
    (lambda r: r["setup_commands"].insert(0, "python3 -m pip install -q -e ~/stablesweep-src"),
     "setup_commands[0]: `pip install` into the login shell's Python, which Debian 12 and Ubuntu 23.04+ refuse"),
    (lambda r: _start(r, "worker", "$HOME/stablesweep-venv/bin/ray start", "ray start"),
     "worker_start_ray_commands[1]: `ray start` from the login shell's PATH"),
    # 5. a blanket stop, and the temp dir `cluster stop` finds a cluster's processes by
    (lambda r: r["head_start_ray_commands"].insert(0, "ray stop"),
     "head_start_ray_commands[0]: `ray stop` stops every Ray process of the account on the machine"),
    (lambda r: _start(r, "worker", f"--temp-dir=/tmp/ray-{r['cluster_name']} ", ""),
     "worker_start_ray_commands[1]: --temp-dir=(Ray default, /tmp/ray): give `ray start` a temp dir of this"),
    (lambda r: _start(r, "head", f"--temp-dir=/tmp/ray-{r['cluster_name']} ", "--temp-dir=/tmp/ray "),
     "head_start_ray_commands[1]: --temp-dir=/tmp/ray: give"),
    (lambda r: _start(r, "head", f"--temp-dir=/tmp/ray-{r['cluster_name']} ", f"--temp-dir=/tmp/{'x' * 40} "),
     f"head_start_ray_commands[1]: --temp-dir=/tmp/{'x' * 40}: give"),
    (lambda r: _start(r, "worker", "RAY_AUTH_MODE=token", "RAY_AUTH_MODE=disabled"),
     "RAY_AUTH_MODE differs between `ray start` commands (disabled in worker_start_ray_commands[1]; token in "
     "head_start_ray_commands[1])"),
])
def test_each_way_a_file_goes_wrong_is_named(path, change, expect, user):
    found = problems(edited(path, change), user)
    assert any(p.startswith(expect) for p in found), found
    assert len(found) == 1, found


def test_nodes_pinned_to_another_ray_than_this_machines_are_named(user):
    cf = edited(ONPREM, lambda r: r.update(setup_commands=[c.replace("==2.60.0", "==2.59.0") for c in r["setup_commands"]]))
    [found] = problems(cf, user)
    assert found.startswith(f"setup_commands[2]: the nodes get Ray 2.59.0, this machine runs Ray {ray.__version__}")


def test_a_default_setup_of_ray_that_pip_installs_into_the_system_python_is_named(user):
    """An AWS file without head_setup_commands gets Ray's default, `pip install boto3` into the
    login shell's Python; a role's own list is counted from its first command, after setup_commands."""
    found = problems(edited(CLOUD, lambda r: r.pop("head_setup_commands")), user)  # Ray's default then
    assert len(found) == 1 and found[0].startswith("head_setup_commands[0]: `pip install` into the login shell's"), found


def test_a_gpu_worker_type_without_declared_gpus_is_refused(user):
    [found] = problems(edited(CLOUD, lambda r: r["available_node_types"]["gpu_worker"].update(resources={})), user)
    assert found.startswith("available_node_types.gpu_worker.resources: {} does not declare both CPU and GPU")
    assert "GPU trials never start it from zero" in found and "resources: {CPU: 48, GPU: 4}" in found


def test_onprem_head_that_takes_trials_or_runs_autoscaler_v2_is_refused(user):
    found = problems(edited(ONPREM, lambda r: _start(r, "head", " --num-cpus=0", "")), user)
    assert len(found) == 1 and found[0].startswith("head_start_ray_commands[1]: the head would take trials"), found
    v2 = edited(ONPREM, lambda r: _start(r, "head", "RAY_enable_autoscaler_v2=0 ", ""))
    [found] = problems(v2, user)
    assert "default autoscaler (v2) never starts the workers of a local provider" in found
    assert problems(v2, {**user, "RAY_UP_enable_autoscaler_v2": "0"}) == []  # `ray up` told so instead


def test_the_users_shell_must_hold_the_clusters_token(user, tmp_path):
    cf = load_cluster_file(ONPREM)
    [found] = problems(cf, {})
    assert found.startswith("this shell: RAY_AUTH_MODE=(unset), the cluster's token:") and "export RAY_AUTH_MODE=token" in found
    other = tmp_path / "other_token"
    other.write_text("another")
    [found] = problems(cf, {**user, "RAY_AUTH_TOKEN_PATH": str(other)})
    assert found.startswith("this shell: RAY_AUTH_MODE=token, another token:")


def test_the_file_as_shipped_before_issue_16_fails_on_every_count(tmp_path, user, capsys):
    """The files of before: system pip, `ray` of the login shell, `ray stop`, no token, the project
    at ~/stablesweep, autoscaler v2 for the local provider, a head that takes trials, GPUs undeclared."""
    raw = yaml.safe_load(ONPREM.read_text())
    raw["file_mounts"] = {"~/stablesweep": "."}
    raw["setup_commands"] = ['python3 -m pip install -q -e "$HOME/stablesweep[test]"']
    raw["head_start_ray_commands"] = ["ray stop", ("ray start --head --port=6379 --dashboard-host=127.0.0.1 "
                                                   "--autoscaling-config=~/ray_bootstrap_config.yaml")]
    raw["worker_start_ray_commands"] = ["ray stop", "ray start --address=$RAY_HEAD_IP:6379"]
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["cluster", "check", str(path)]) == 2
    err = capsys.readouterr().err
    for what in ("the head would take trials", "autoscaler (v2) never starts", "RAY_AUTH_MODE is not set",
                 "`ray stop` stops every Ray process", "from the login shell's PATH", "named stablesweep in the home",
                 "setup_commands[0]: `pip install` into the login shell's Python"):
        assert what in err, what


@pytest.mark.parametrize("argv, expect", [
    (["cluster", "check"], "give a CLUSTER_YAML, --address, or both"),
    (["cluster", "check", str(ONPREM), "--out", "/tmp/x"], "--out: only with --address"),
    (["cluster", "check", "no/such.yaml"], "no/such.yaml: no such cluster file"),
    (["cluster", "stop", str(CLOUD)], "`ray down"),
])
def test_cli_refuses_bad_input(argv, expect, capsys, user):
    assert main(argv) == 2
    assert expect in capsys.readouterr().err


def test_a_local_cluster_without_temp_dirs_cannot_be_stopped(tmp_path, user, capsys):
    raw = yaml.safe_load(ONPREM.read_text())
    raw["worker_start_ray_commands"] = [c.replace(f"--temp-dir=/tmp/ray-{raw['cluster_name']} ", "")
                                        for c in raw["worker_start_ray_commands"]]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["cluster", "stop", str(path)]) == 2
    assert "worker_start_ray_commands: `ray start` has no --temp-dir" in capsys.readouterr().err


def test_the_stop_line_stops_the_processes_of_its_temp_dir_and_no_other(tmp_path):
    """Run as `cluster stop` runs it on a machine: a process with a file open under the temp dir and
    one working in it go (one of them ignoring SIGTERM, so SIGKILL follows); one of another temp dir
    stays."""
    ours, theirs = tmp_path / "ray-ours", tmp_path / "ray-theirs"
    for d in (ours / "session", theirs / "session"):
        d.mkdir(parents=True)
    hold = "import sys, time; f = open(sys.argv[1], 'w'); time.sleep(300)"
    deaf = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
    procs = [subprocess.Popen([sys.executable, "-c", hold, str(ours / "session" / "raylet.out")], start_new_session=True),
             subprocess.Popen([sys.executable, "-c", deaf], cwd=ours / "session", start_new_session=True),
             subprocess.Popen([sys.executable, "-c", hold, str(theirs / "session" / "raylet.out")],
                              start_new_session=True)]
    try:
        time.sleep(1.0)  # the files are open
        p = subprocess.run(["sh", "-c", node_stop_command(str(ours), grace=2)], capture_output=True, text=True, timeout=60,
                           check=False)
        assert p.stdout.strip() == f"stopped 2 processes of {ours}", p.stdout + p.stderr
        assert procs[0].wait(timeout=10) == -signal.SIGTERM and procs[1].wait(timeout=10) == -signal.SIGKILL
        assert procs[2].poll() is None  # another cluster's
    finally:
        for q in procs:
            q.kill()
            q.wait()
