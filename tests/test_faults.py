"""Faults and bad input at the edges, as a user meets them: each test runs the real CLI
against a real fault (an existing file, a read-only bind mount, a closed port, a truncated or empty
manifest) and checks the exit status, the message and what was (not) written. None of these starts
Ray: every refusal comes before it. The CLI runs in this process (conftest's `cli`: no seconds of
imports a call), in a subprocess where it is cheap or where Python's own warnings are part of
what the user sees."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import DEMO, ROOT

QUICK = ROOT / "search_spaces" / "quick.yaml"


def stablesweep(*args, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "stablesweep", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


@contextlib.contextmanager
def read_only(path: Path):
    """`path` (a folder) as a read-only bind mount of itself; unmounted however the test ends."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a bind mount")
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the socket is: nothing listens there


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# ---- 1. output places checked before any work ---------------------------------------------------

def commands(out: Path) -> dict[str, list]:
    return {"sweep": ["sweep", DEMO, "--space", QUICK, "--out", out, "--samples", 1],
            "ramp": ["ramp", DEMO, "--out", out, "--steps", 5],
            "train": ["train", DEMO, "--out", out],
            "diagnose": ["diagnose", DEMO, "--out", out],
            "data synth": ["data", "synth", "--out", out, "--scale", 0.01, "--per-class", 1]}


@pytest.mark.parametrize("command", ["sweep", "ramp", "train", "diagnose", "data synth"])
def test_an_existing_file_as_out_is_refused_before_any_work(tmp_path, cli, command):
    out = tmp_path / "taken"
    out.write_text("mine\n")
    t = time.monotonic()
    r = cli(*commands(out)[command], cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert f"{out}: is a file, not a folder" in r.stderr and "Traceback" not in r.stderr
    assert out.read_text() == "mine\n" and time.monotonic() - t < 60  # no training, no Ray


@pytest.mark.parametrize("command", ["sweep", "ramp", "train", "diagnose", "data synth"])
def test_a_read_only_out_is_refused_before_any_work(tmp_path, cli, command):
    place = tmp_path / "ro"
    place.mkdir()
    with read_only(place):
        r = cli(*commands(place / "new")[command], cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "cannot write in" in r.stderr and str(place) in r.stderr and "Traceback" not in r.stderr
    assert tree(place) == []


# ---- 2. sweep runs train's data pre-flight before Ray --------------------------------------------

def bad_manifest_config(tmp_path: Path) -> Path:
    from tests.data.conftest import write_manifest

    name = write_manifest(tmp_path, "food", [0, 1, 7, 1])  # line 3: label 7 of a 2-class dataset
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"training: {{steps: 4, batch_size: 2, report_interval: 2}}\n"
                   f"datasets: {{dataset_configs: {{food: {{num_classes: 2, train: {name}}}}}}}\n"
                   f"data: {{image_size: 8}}\nmodel: {{name: small_cnn}}\n")
    return cfg


def test_sweep_refuses_bad_data_before_ray(tmp_path, cli):
    cfg = bad_manifest_config(tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text("training.lr: {loguniform: [1.0e-4, 1.0e-1]}\n")
    r = cli("sweep", cfg, "--space", space, "--out", tmp_path / "out", "--samples", 2, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "food_train.jsonl:3" in r.stderr and "label 7" in r.stderr
    assert not (tmp_path / "out").exists()  # no sweep folder, no mlflow.db, no Ray session


def test_ramp_refuses_a_missing_image_before_ray(tmp_path, cli):
    from tests.data.conftest import write_manifest

    name = write_manifest(tmp_path, "food", [0, 1, 1, 0])
    (tmp_path / "img/food/train/2.png").unlink()  # line 3's image
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"training: {{steps: 4, batch_size: 2, report_interval: 2}}\n"
                   f"datasets: {{dataset_configs: {{food: {{num_classes: 2, train: {name}}}}}}}\n"
                   f"data: {{image_size: 8}}\nmodel: {{name: small_cnn}}\n")
    r = cli("ramp", cfg, "--out", tmp_path / "out", "--steps", 4, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "food_train.jsonl:3" in r.stderr and "2.png not found" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists() and "Ray" not in r.stdout + r.stderr  # nothing written, no Ray


# ---- 3. an unreachable --mlflow fails in seconds ---------------------------------------------

@pytest.mark.parametrize("command", ["sweep", "ramp"])
def test_unreachable_mlflow_server_fails_in_seconds(tmp_path, cli, command):
    uri = f"http://127.0.0.1:{closed_port()}"
    t = time.monotonic()
    r = cli(*commands(tmp_path / "out")[command], "--mlflow", uri, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert f"--mlflow {uri}: no MLflow server answers" in r.stderr
    assert time.monotonic() - t < 30 and not (tmp_path / "out").exists()


# ---- 6. nothing a user may have written is overwritten without --force ---------------------------

def test_data_synth_refuses_a_folder_that_is_not_empty(tmp_path, cli):
    out = tmp_path / "synth"
    out.mkdir()
    (out / "config.yaml").write_text("# edited by hand\n")
    r = cli("data", "synth", "--out", out, "--scale", 0.01, "--per-class", 1)
    assert r.returncode == 2 and "not empty" in r.stderr and "--force" in r.stderr
    assert tree(out) == ["config.yaml"]
    r = cli("data", "synth", "--out", out, "--scale", 0.01, "--per-class", 1, "--force")
    assert r.returncode == 0, r.stderr
    assert "edited by hand" not in (out / "config.yaml").read_text()


def test_diagnose_refuses_to_overwrite_a_fixed_config(tmp_path, cli):
    cfg = tmp_path / "my.yaml"
    cfg.write_text(DEMO.read_text().replace("masking: slice", "masking: neg_inf")
                   .replace("precision: fp32", "precision: fp16"))
    fixed = tmp_path / "my_fixed.yaml"
    fixed.write_text("# my edits\n")
    r = cli("diagnose", cfg)
    assert r.returncode == 2 and f"{fixed} exists" in r.stderr
    assert fixed.read_text() == "# my edits\n"
    r = cli("diagnose", cfg, "--force")
    assert r.returncode == 1, r.stderr  # findings
    assert "masking" in fixed.read_text()


def test_train_out_reused_needs_force_and_force_clears_the_old_run(tmp_path, cli):
    out = tmp_path / "run"
    args = ("train", DEMO, "--out", out, "--set", "training.steps=4", "--set", "training.report_interval=2",
            "--quiet")
    assert cli(*args).returncode in (0, 3)
    old = sorted(p.name for p in (out / "checkpoints").iterdir())
    r = cli(*args[:-1], "--set", "training.steps=2", "--quiet")
    assert r.returncode == 2 and "holds an earlier run" in r.stderr and "--force" in r.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == old
    r = cli(*args[:-1], "--set", "training.steps=2", "--quiet", "--force")
    assert r.returncode in (0, 3), r.stderr
    assert json.loads((out / "result.json").read_text())["steps"] == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint_00000002"]


# ---- 8. data check refuses what train refuses -----------------------------------------------------

def test_data_check_fails_on_an_empty_manifest_as_train_does(tmp_path, cli):
    (tmp_path / "empty.jsonl").write_text("")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("training: {steps: 2, batch_size: 2}\ndatasets: {dataset_configs: "
                   "{food: {num_classes: 2, train: empty.jsonl}}}\ndata: {image_size: 8}\n")
    check = cli("data", "check", cfg)
    train = cli("train", cfg, "--out", tmp_path / "run")
    assert train.returncode == 2 and "no usable samples" in train.stderr
    assert check.returncode == 1 and "no usable samples" in check.stdout


# ---- 9. smaller ones ----------------------------------------------------------------------------

def test_a_duplicated_yaml_key_is_refused_with_its_line(tmp_path):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text(DEMO.read_text().replace("  lr: 3.0e-3\n", "  lr: 3.0e-3\n  lr: 500\n"))
    r = stablesweep("diagnose", cfg, "--no-write")
    assert r.returncode == 2
    assert f"{cfg}:6:3:" in r.stderr and "'lr' given twice (first on line 5)" in r.stderr


def test_set_mistakes_are_blamed_on_set():
    r = stablesweep("train", DEMO, "--set", "training.lr=fast", "--out", "/nonexistent/never")
    assert r.returncode == 2 and f"--set training.lr=fast (over {DEMO}): training.lr: expected a number" in r.stderr
    r = stablesweep("train", DEMO, "--set", "training.lrr=1", "--out", "/nonexistent/never")
    assert r.returncode == 2 and r.stderr.count("--set training.lrr=1") == 1 and "did you mean" in r.stderr


def test_train_names_and_counts_skipped_bad_labels_and_says_fp16_on_cpu_is_slow(tmp_path):
    """loss.on_bad_label: skip: the warning names the first bad line and the count; train's output
    and result.json say how many samples were dropped. fp16 on CPU: a warning that it is slow."""
    cfg = bad_manifest_config(tmp_path)  # a tiny model on 8x8 images
    out = tmp_path / "run"
    r = stablesweep("train", cfg, "--out", out, "--device", "cpu", "--set", "loss.on_bad_label=skip",
                    "--set", "training.steps=6", "--set", "training.precision=fp16", cwd=tmp_path)
    assert r.returncode in (0, 1, 3), r.stderr
    assert "1 sample(s) have a label outside" in r.stderr and "food_train.jsonl:3: label 7" in r.stderr
    dropped = json.loads((out / "result.json").read_text())["dropped_samples"]
    assert dropped > 0  # 6 batches of 2 from 4 samples: the bad one is drawn about 3 times
    assert f"dropped: {dropped} samples" in r.stdout
    assert "fp16 on CPU is emulated and runs many times slower" in r.stderr


def test_nan_is_refused():
    r = stablesweep("diagnose", DEMO, "--no-write", "--set", "data.synthetic_noise=nan")
    assert r.returncode == 2 and "data.synthetic_noise: expected a number, got nan (not a number)" in r.stderr


# ---- 7. compare reads stores without writing them ---------------------------------------------

@pytest.mark.parametrize("kind", ["empty", "optuna"])
def test_compare_refuses_a_file_that_is_no_mlflow_store_and_leaves_it_alone(tmp_path, kind):
    import sqlite3

    path = tmp_path / "store.db"
    if kind == "empty":
        path.write_bytes(b"")
    else:  # a sweep's optuna.db: sqlite, other tables
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY)")
            db.commit()
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    r = stablesweep("compare", "--mlflow", f"sqlite:///{path}")
    assert r.returncode == 2, r.stderr
    assert "is not an MLflow store" in r.stderr and "Traceback" not in r.stderr
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
