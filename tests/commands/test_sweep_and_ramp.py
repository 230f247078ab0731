"""`stablesweep sweep` and `stablesweep ramp` as a user runs them: every flag reaches the options,
bad input exits 2 before Ray starts, an interrupted sweep says how to resume."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest

from stablesweep.commands import ramp as ramp_command
from stablesweep.commands import sweep as sweep_command
from stablesweep.commands.args import resume_command
from stablesweep.sweep.options import RampOptions, SweepOptions
from tests.conftest import DEMO, ROOT


def parse(command, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


@pytest.mark.parametrize("command, options, argv", [
    (sweep_command, SweepOptions, ["sweep", "c.yaml", "--space", "s.yaml", "--out", "s3://b/x", "--local-dir", "l",
                                   "--shared-storage", "--resources-per-trial", '{"w": 1}', "--no-asha", "--steps", "9",
                                   "--target-steps", "36", "--max-steps", "18", "--confirm", "1"]),
    (ramp_command, RampOptions, ["ramp", "c.yaml", "--mode", "continue", "--max-failures", "3", "--set", "a.b=1"]),
])
def test_every_flag_is_an_option_of_the_same_name(command, options, argv):
    args = parse(command, argv)
    flags = set(vars(args)) - {"command", "func"}
    assert flags <= {f.name for f in fields(options)}  # none is dropped on the way
    opts = options.from_args(args)
    assert all(getattr(opts, k) == v for k, v in vars(args).items() if k in flags)


def test_the_ramp_defaults_to_its_own_directory():
    opts = RampOptions.from_args(parse(ramp_command, ["ramp", "c.yaml"]))
    assert opts.out == RampOptions.DEFAULT_DIR == "runs/ramps"
    assert SweepOptions.from_args(parse(sweep_command, ["sweep", "c.yaml", "--space", "s"])).out == "runs/sweeps"


def test_resume_command_repeats_the_command_line():
    argv = ["/x/__main__.py", "sweep", "c.yaml", "--space", "my space.yaml", "--set", "training.lr=1", "--steps", "40"]
    assert resume_command(argv, "n1", "sweep") == ("stablesweep sweep c.yaml --space 'my space.yaml' --set "
                                                   "training.lr=1 --steps 40 --name n1 --resume")
    argv = ["/x/stablesweep", "ramp", "c.yaml", "--steps", "40", "--name", "r"]
    assert resume_command(argv, "r", "ramp") == "stablesweep ramp c.yaml --steps 40 --name r --resume"


def stablesweep(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stablesweep", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd)


def test_bad_space_fails_fast_before_ray(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training.lr: {loguniform: [1.0e-3, 1.0]}\ntraining.max_grad_nrom: {choice: [null, 1.0]}\n")
    t0 = time.time()
    p = stablesweep("sweep", str(DEMO), "--space", str(bad), "--out", str(tmp_path / "out"))
    took = time.time() - t0
    assert p.returncode == 2, p.stderr
    assert f"{bad}:2: training.max_grad_nrom: unknown config key; did you mean 'training.max_grad_norm'?" in p.stderr
    assert took < 10, took
    assert "Ray" not in p.stderr and not (tmp_path / "out").exists()


def test_bad_sweep_input_exits_2(tmp_path, cli):
    space = tmp_path / "grid.yaml"
    space.write_text("training.lr: {grid: [1.0e-3, 1.0e+3]}\n")
    p = cli("sweep", str(DEMO), "--space", str(space), "--samples", "0", "--out", str(tmp_path / "out"))
    assert p.returncode == 2 and "--samples 0" in p.stderr
    assert not (tmp_path / "out").exists()


def test_bad_ramp_input_exits_2_before_ray(tmp_path, cli):
    p = stablesweep("ramp", str(DEMO), "--out", str(tmp_path), "--lr-start", "1", "--lr-stop", "0.1")
    assert p.returncode == 2 and "need 0 < lr-start < lr-stop" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    # the others in this process (each refused before Ray starts: cli() checks Ray is as it was)
    for args, msg in [(["--resolution", "1"], "--resolution 1.0: must be above 1"),
                      (["--set", "training.lr=oops"], "training.lr: expected a number"),
                      (["--local-dir", str(tmp_path / "l")], "--local-dir"),
                      (["--resources-per-trial", '{"gpu": 1}'], "use --gpus-per-trial"),
                      (["--max-failures", "-1"], "--max-failures -1: out of range"),
                      (["--replicates", "-1"], "--replicates -1: must be at least 0")]:
        p = cli("ramp", DEMO, "--out", tmp_path, *args)
        assert p.returncode == 2 and msg in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_ramp_resume_needs_a_ramp_and_a_second_start_is_refused_naming_resume(tmp_path, cli):
    p = cli("ramp", DEMO, "--out", tmp_path, "--name", "nope", "--resume")
    assert p.returncode == 2 and f"--resume --name nope: {tmp_path / 'nope'} does not exist" in p.stderr, p.stderr
    p = cli("ramp", DEMO, "--out", tmp_path, "--resume")
    assert p.returncode == 2 and f"--resume: no ramp in {tmp_path} to continue" in p.stderr, p.stderr
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "ramp.md").write_text("a ramp's files\n")
    p = cli("ramp", DEMO, "--out", tmp_path, "--name", "r")
    assert p.returncode == 2 and "already holds a ramp; continue it with --resume" in p.stderr, p.stderr
    p = cli("ramp", DEMO, "--out", tmp_path, "--name", "r", "--resume")
    assert p.returncode == 2 and "holds no ramp that can be continued" in p.stderr, p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["r"]  # nothing written


def test_replicates_need_the_grid_or_qmc_sampler(tmp_path, cli):
    space = tmp_path / "grid.yaml"
    space.write_text("training.lr: {grid: [1.0e-3, 1.0e+3]}\n")
    for args, msg in [([], "--replicates with --sampler tpe: replicates need --sampler grid or qmc"),
                      (["--sampler", "random"], "--replicates with --sampler random"),
                      (["--sampler", "grid", "--replicates", "-1"], "--replicates -1: must be at least 0")]:
        p = cli("sweep", DEMO, "--space", space, "--replicates", "2", *args, "--out", tmp_path / "out")
        assert p.returncode == 2 and msg in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
    assert not (tmp_path / "out").exists()  # nothing written


REFUSED_LIGHT = """
import sys
from stablesweep.cli import main
rc = main(sys.argv[1:])
print("heavy:", ",".join(m for m in ("ray", "torch", "mlflow", "optuna", "matplotlib") if m in sys.modules))
sys.exit(rc)
"""


@pytest.mark.parametrize("argv, msg", [
    (["sweep", str(DEMO), "--space", str(ROOT / "search_spaces" / "quick.yaml"), "--samples", "0"], "--samples 0"),
    (["sweep", str(DEMO), "--space", str(ROOT / "search_spaces" / "quick.yaml"), "--sampler", "grid"],
     "cannot be gridded"),
    (["ramp", str(DEMO), "--lr-start", "1", "--lr-stop", "0.1"], "need 0 < lr-start < lr-stop"),
    (["ramp", str(DEMO), "--set", "training.lr=oops"], "training.lr: expected a number"),
    (["ramp", str(DEMO), "--steps", "200"], "--target-steps 120: below the probes' budget (--steps 200)"),
    (["ramp", str(DEMO), "--steps", "30", "--max-steps", "20"], "--max-steps 20: below the probes' budget"),
    (["ramp", str(DEMO), "--confirm", "-1"], "--confirm -1: must be at least 0"),
    (["sweep", str(DEMO), "--space", str(ROOT / "search_spaces" / "quick.yaml"), "--steps", "20", "--target-steps",
      "10"], "--target-steps 10: below the probes' budget (--steps 20)"),
    (["sweep", str(DEMO), "--space", str(ROOT / "search_spaces" / "quick.yaml"), "--target-steps", "480",
      "--max-steps", "60"], "--max-steps 60: below the probes' budget (--steps 120)"),
    (["sweep", str(DEMO), "--space", str(ROOT / "search_spaces" / "quick.yaml"), "--confirm", "-1"],
     "--confirm -1: must be at least 0"),
])
def test_bad_input_is_refused_before_ray_torch_mlflow_are_imported(tmp_path, argv, msg):
    p = subprocess.run([sys.executable, "-c", REFUSED_LIGHT, *argv, "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 2 and msg in p.stderr, p.stderr
    assert p.stdout.strip() == "heavy:", p.stdout
    assert not (tmp_path / "out").exists()


def test_gpus_asked_of_a_local_ray_on_a_machine_without_them_refused_without_ray(tmp_path):
    from stablesweep.sweep.placement import local_gpus

    if local_gpus() != 0:
        pytest.skip("this machine has GPUs (or cannot tell)")
    p = subprocess.run([sys.executable, "-c", REFUSED_LIGHT, "sweep", str(DEMO), "--space",
                        str(ROOT / "search_spaces" / "quick.yaml"), "--gpus-per-trial", "3", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, "RAY_ADDRESS": ""})
    assert p.returncode == 2 and "--gpus-per-trial 3: this machine has no GPUs" in p.stderr, p.stderr
    assert "ray" not in p.stdout.split("heavy:")[1] and "torch" not in p.stdout.split("heavy:")[1], p.stdout
