"""A recommended config runs where it is written: the sweep's writer on a user's config with
relative data paths and comments, then `stablesweep train` on the written file from another
working directory."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from stablesweep.analysis import region as region_mod
from stablesweep.config import load_config
from stablesweep.data import write_synthetic

ROOT = Path(__file__).resolve().parents[2]
KEYS = ["training.lr", "loss.masking"]


def _user_config(tmp: Path) -> Path:
    """The user's file in proj/, its data in data/ (paths relative to proj/), with their comments."""
    written = write_synthetic(tmp / "data", 0.02, per_class=2, image_size=16)
    raw = yaml.safe_load(written.read_text())
    names = list(raw["datasets"]["dataset_configs"])[:2]
    sets = "\n".join(f"    {n}: {{num_classes: {raw['datasets']['dataset_configs'][n]['num_classes']}, "
                     f"source: manifest, train: ../data/{n}_train.jsonl, val: ../data/{n}_val.jsonl}}"
                     for n in names)
    text = (f"# my two datasets, trained short\ntraining:\n  lr: 0.002  # what I had\n  steps: 4\n"
            f"  batch_size: 8\n  report_interval: 2\n  warmup_steps: 0\ndatasets:\n  dataset_configs:\n{sets}\n"
            "loss:\n  masking: slice\nmodel:\n  name: small_cnn\ndata:\n  image_size: 16\n")
    (tmp / "proj").mkdir()
    path = tmp / "proj" / "my.yaml"
    path.write_text(text)
    return path


def test_the_sweeps_recommended_config_keeps_comments_and_trains_from_another_directory(tmp_path):
    path = _user_config(tmp_path)
    cfg = load_config(path)
    runs = [("slice", 1e-3, "stable", 0.9), ("slice", 1e-2, "stable", 0.6), ("slice", 1.0, "diverged", 3.0),
            ("neg_inf", 1e-3, "stable", 1.0), ("neg_inf", 0.1, "diverged", 3.0)]
    df = pd.DataFrame([{"trial_id": f"t{i}", "training.lr": lr, "loss.masking": m, "verdict": v, "objective": o,
                        "initial_loss": 3.0, "steps": 4, "budget_steps": 4} for i, (m, lr, v, o) in enumerate(runs)])
    region = region_mod.analyze(df, group_keys=["loss.masking"], param_keys=KEYS, importance=False)
    files = region_mod.write_region(region, df, tmp_path / "sweep", base=cfg.to_dict(), figures=False,
                                    source=cfg.source, base_dir=cfg.base_dir)
    assert sorted(k for k in files if k.startswith("recommended")) == [
        "recommended", "recommended/neg_inf.yaml", "recommended/slice.yaml"]  # named by the setting
    text = files["recommended"].read_text()
    assert "# my two datasets, trained short" in text and "# what I had" in text  # the user's comments
    got = yaml.safe_load(text)
    assert got["training"]["lr"] == 1e-2 and got["loss"]["masking"] == "slice"  # the best-training safe lr
    assert got["training"]["steps"] == 4 and "optimizer" not in got["training"]  # only the changed keys
    for d in got["datasets"]["dataset_configs"].values():
        assert Path(d["train"]).is_absolute() and Path(d["train"]).is_file()
    assert yaml.safe_load(files["recommended/neg_inf.yaml"].read_text())["training"]["lr"] == 1e-3
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for rec in (files["recommended"], files["recommended/slice.yaml"]):
        p = subprocess.run([sys.executable, "-m", "stablesweep", "train", str(rec), "--device", "cpu"], cwd=elsewhere,
                           capture_output=True, text=True, timeout=300, env=env)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "stable" in p.stdout or "stalled" in p.stdout, p.stdout
