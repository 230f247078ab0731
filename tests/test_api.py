"""The Python API (stablesweep.train, sweep, ramp, diagnose) as a user calls it, and what a newcomer
meets first on the command line: quiet output with progress from the first step, a default --out
that never overwrites, data check's problems once, sweeps and ramps in one default MLflow store."""
from __future__ import annotations

import doctest
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import stablesweep

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
# lines only the libraries print: Ray's and MLflow's log format, their known messages
LIBRARY_LINE = re.compile(r"\b(INFO|WARNING|WARN)\b.*(ray|mlflow|alembic|tensorboardX)|Token authentication|"
                          r"operation took|NaN or Inf found|Creating initial MLflow database|Context impl SQLite")


def test_import_stablesweep_is_cheap_and_the_api_loads_on_first_use():
    code = ("import sys, stablesweep; print('torch' in sys.modules, 'ray' in sys.modules); "
            "print(callable(stablesweep.train), callable(stablesweep.diagnose)); "
            "import stablesweep.diagnose.checks, stablesweep.train; print(callable(stablesweep.diagnose), callable(stablesweep.train))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["False", "False", "True", "True", "True", "True"]


def test_doctests():
    from stablesweep import api_inputs, quiet

    for mod in (api_inputs, quiet):
        assert doctest.testmod(mod).failed == 0


def test_train_stable_then_diverged_with_overrides_as_keywords(tmp_path):
    lines: list[str] = []
    run = stablesweep.train(DEMO, training__steps=40, out=tmp_path / "run", log=lines.append)
    assert (run.verdict, run.reason, run.steps) == ("stable", None, 40)
    assert run.config["training"]["steps"] == 40 and run.progress >= 0.1
    written = json.loads((tmp_path / "run" / "result.json").read_text())
    assert (written["verdict"], written["steps"], written["objective"]) == ("stable", 40, run.objective)
    assert repr(run).startswith("Trained(stable, 40 steps, objective ")
    assert lines[0].startswith("training 40 steps of small_cnn on cpu (fp32, ") and " threads, " in lines[0]
    assert lines[1].startswith("step  1/40  loss ")  # a line after the first step, before the first report

    raw = yaml.safe_load(DEMO.read_text())
    hot = stablesweep.train(raw, training__lr=1e3, training__steps=40, log=None)  # a dict config
    assert (hot.verdict, hot.out) == ("diverged", None)
    assert hot.reason in ("loss_explosion", "nonfinite_loss", "nonfinite_grad") and 0 < hot.first_bad_step <= 40
    assert hot.steps < 40 and f"diverged ({hot.reason} at step {hot.first_bad_step})" in repr(hot)
    with pytest.raises(TypeError, match="unknown keyword argument.*lrr.*training__lr"):
        stablesweep.train(DEMO, lrr=1)


def test_diagnose_through_the_api_writes_only_into_out(tmp_path):
    cfg = tmp_path / "my.yaml"
    cfg.write_text(DEMO.read_text().replace("masking: slice", "masking: neg_inf"))
    d = stablesweep.diagnose(cfg, training__max_grad_norm=None, log=None)
    assert not d.healthy and d.exit_code == 1 and d.fixed_path is None
    assert {"masking.neg_inf", "clip.none"} & {f.code for f in d.findings} or d.fixed
    assert list(tmp_path.iterdir()) == [cfg]  # nothing written beside the config
    d = stablesweep.diagnose(cfg, out=tmp_path / "fixed", log=None)
    assert d.fixed_path == tmp_path / "fixed" / "my_fixed.yaml" and d.fixed_path.exists()
    assert repr(d).startswith("Diagnosed(not healthy: ")


def test_train_command_quiet_progress_and_a_new_folder_each_run(tmp_path, cli):
    args = [sys.executable, "-m", "stablesweep", "train", str(DEMO), "--set", "training.steps=6",
            "--set", "training.report_interval=3", "--device", "cpu"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode in (0, 3), p.stderr
    out = p.stdout.splitlines()
    assert out[0].startswith("training 6 steps of small_cnn on cpu (fp32, ") and out[1].startswith("step 1/6  loss ")
    assert not [s for s in (p.stdout + p.stderr).splitlines() if LIBRARY_LINE.search(s)]
    assert "results: runs/demo/result.json" in p.stderr
    p = cli(*args[3:], "--set", "training.precision=bf16", "--quiet", cwd=tmp_path)  # in this process
    assert "results: runs/demo-2/result.json" in p.stderr  # the first run's folder is kept
    assert "bf16 on CPU is emulated" in p.stderr
    assert json.loads((tmp_path / "runs" / "demo" / "result.json").read_text())["budget_steps"] == 6


def test_an_unknown_flag_is_answered_with_the_subcommands_usage(cli):
    p = cli("train", DEMO, "--bogus")
    assert p.returncode == 2 and "usage: stablesweep train " in p.stderr and "unrecognized arguments: --bogus" in p.stderr
    p = cli("data", "check", DEMO, "--verbose", "--bogus")  # --verbose is accepted after the command
    assert p.returncode == 2 and "usage: stablesweep data check " in p.stderr


def test_data_check_says_each_problem_once_grouped_by_file(tmp_path, cli):
    from tests.data.conftest import make_config, write_manifest

    tr = write_manifest(tmp_path, "food", [1, 2, 3] * 10)  # 1-based: 10 lines with label 3
    bad = write_manifest(tmp_path, "veg", [0, 1, 7, 9, 8, 7, 7, 7, 7, 0])
    cfg = make_config(tmp_path, {"food": {"num_classes": 3, "train": tr}, "veg": {"num_classes": 2, "train": bad}})
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    p = cli("data", "check", tmp_path / "c.yaml")
    assert p.returncode == 1
    assert p.stdout.count("problems (") == 1 and p.stdout.count("labels look 1-based") == 1
    assert "food train, food_train.jsonl: 11 problem(s)" in p.stdout
    assert "(10 line(s) with a label outside the range: the 1-based fix above mends them)" in p.stdout
    assert "food_train.jsonl:3: label 3" not in p.stdout  # covered by the 1-based diagnosis
    assert "veg train, veg_train.jsonl: 7 problem(s)" in p.stdout and "... and 2 more in veg_train.jsonl" in p.stdout
    assert "validate_labels" not in p.stdout + p.stderr


def test_sweep_and_ramp_through_the_api_share_the_default_store(tmp_path, monkeypatch, ray_cluster, capfd):
    """A tiny grid sweep and ramp with the default --out: answers equal to their files, and one
    MLflow store (runs/mlflow.db) that a plain `compare` reads both from; no library lines."""
    monkeypatch.chdir(tmp_path)
    space = {"training.lr": {"grid": [0.003, 1000.0]}}
    fast = dict(training__report_interval=3, training__warmup_steps=0, datasets__skip_evaluation=True)
    swept = stablesweep.sweep(DEMO, space, sampler="grid", steps=6, asha=False, name="tiny-sweep", log=None,
                              max_concurrent=1, **fast)
    assert swept.dir == (tmp_path / "runs" / "sweeps" / "tiny-sweep").resolve()
    assert swept.tracking_uri == f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}"
    assert sum(swept.counts.values()) == 2 and swept.counts["stable"] == 1  # lr 1e3 diverged or stalled
    assert swept.recommended == yaml.safe_load(swept.recommended_path.read_text())
    region = json.loads((swept.dir / "stable_region.json").read_text())
    assert swept.settings[0]["min_failed_lr"] == 1000.0 == region["groups"][0]["min_failed_lr"]
    assert swept.settings[0]["max_stable_lr"] == 0.003 == region["groups"][0]["max_stable_lr"]
    assert "Swept(tiny-sweep: " in repr(swept)

    edge = stablesweep.ramp(DEMO, lr_start=0.01, lr_stop=1000.0, ladder="x10", resolution=10, steps=6, target_steps=6,
                            name="tiny-ramp", log=None, max_concurrent=1, **fast)
    assert edge.dir == (tmp_path / "runs" / "ramps" / "tiny-ramp").resolve() and edge.tracking_uri == swept.tracking_uri
    doc = json.loads((edge.dir / "ramp.json").read_text())
    assert [x["max_stable_lr"] for x in edge.settings] == [x["max_stable_lr"] for x in doc["settings"]]
    assert set(edge.recommended_paths) == {x["setting"] for x in doc["settings"] if x.get("recommended_file")}
    for key, path in edge.recommended_paths.items():
        assert path.is_file() and edge.recommended[key] == yaml.safe_load(path.read_text())
    assert "Ramped(tiny-ramp: " in repr(edge)

    captured = capfd.readouterr()
    assert not [s for s in (captured.out + captured.err).splitlines() if LIBRARY_LINE.search(s)]
    from stablesweep.cli import main

    code = main(["compare", "--out", str(tmp_path / "cmp")])  # the default store: both there
    printed = capfd.readouterr()
    assert code == 0, printed.err
    assert "tiny-sweep" in printed.out and "tiny-ramp" in printed.out


def test_the_default_out_of_sweep_and_ramp_shares_one_store(tmp_path, monkeypatch):
    from stablesweep.sweep.options import RampOptions, SweepOptions

    monkeypatch.chdir(tmp_path)
    shared = f"sqlite:///{tmp_path.resolve() / 'runs' / 'mlflow.db'}"
    sweep, ramp = SweepOptions(config="c.yaml", space="s.yaml"), RampOptions(config="c.yaml")
    assert sweep.default_tracking_uri(Path(sweep.out).resolve()) == shared
    assert ramp.default_tracking_uri(Path(ramp.out).resolve()) == shared
    mine = tmp_path / "mine"
    assert sweep.default_tracking_uri(mine) == f"sqlite:///{mine.resolve() / 'mlflow.db'}"
