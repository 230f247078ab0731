"""Fixtures for the diagnose tests: the user's incident on real files written by write_synthetic.

The incident: food101's train manifest shifted to 1-based, one food172 label equal to num_classes,
-inf masking, bf16, lr 5e-6.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stablesweep.data import write_synthetic

ROOT = Path(__file__).resolve().parents[2]

SCALE = 0.02  # food101 2 classes, food172 3, foodx251 5, food2k 40, fru92 2, veg200 4: 56 in all
PER_CLASS = 4
IMAGE_SIZE = 16


def synth(root: Path) -> Path:
    """Healthy synthetic data as real PNG + JSONL files; returns the written config.yaml."""
    return write_synthetic(root, SCALE, per_class=PER_CLASS, image_size=IMAGE_SIZE)


def clone(src_dir: Path, dst_dir: Path) -> Path:
    shutil.copytree(src_dir, dst_dir)
    return dst_dir / "config.yaml"


def read_manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_manifest(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_incident(root: Path) -> tuple[Path, dict]:
    """The incident: food101 train shifted to 1-based, one food172 train label equal to num_classes,
    -inf masking, bf16, lr 5e-6. Returns the config path and what was broken where."""
    cfg_path = root / "config.yaml"
    raw = yaml.safe_load(cfg_path.read_text())
    n101 = raw["datasets"]["dataset_configs"]["food101"]["num_classes"]
    n172 = raw["datasets"]["dataset_configs"]["food172"]["num_classes"]
    m101 = root / "food101_train.jsonl"
    rows = read_manifest(m101)
    for r in rows:
        r["label"] += 1
    write_manifest(m101, rows)
    shifted_lines = [i + 1 for i, r in enumerate(rows) if r["label"] == n101]
    m172 = root / "food172_train.jsonl"
    rows = read_manifest(m172)
    bad_line = 5
    rows[bad_line - 1]["label"] = n172
    write_manifest(m172, rows)
    raw["training"].update(lr=5.0e-6, precision="bf16")
    raw["loss"]["masking"] = "neg_inf"
    path = root / "incident.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, {"n101": n101, "n172": n172, "shifted_lines": shifted_lines, "bad_line": bad_line}


def with_settings(src: Path, dst: Path, **sections) -> Path:
    """A copy of the config at `src` with sections updated (written next to it as `dst`)."""
    raw = yaml.safe_load(src.read_text())
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    dst.write_text(yaml.safe_dump(raw, sort_keys=False))
    return dst


def digest_tree(root: Path, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under root (relative path -> digest), except names in `exclude`."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name not in exclude:
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def diagnose_subprocess(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "stablesweep", "diagnose", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=300)


def codes(diag) -> dict[str, str]:
    """code -> severity of a Diagnosis's findings (or of a list of findings)."""
    return {f.code: f.severity for f in getattr(diag, "findings", diag)}


def find(diag, code: str):
    """The first finding with this code, of a Diagnosis (or of a list of findings)."""
    hits = [f for f in getattr(diag, "findings", diag) if f.code == code]
    assert hits, f"no {code} finding in {sorted(codes(diag))}"
    return hits[0]


@pytest.fixture(scope="package")
def healthy_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("healthy")
    synth(root)
    return root


@pytest.fixture
def healthy(healthy_dir, tmp_path) -> Path:
    """A private copy of the healthy data and config."""
    return clone(healthy_dir, tmp_path / "data")


@pytest.fixture
def incident(healthy_dir, tmp_path):
    root = tmp_path / "incident"
    clone(healthy_dir, root)
    path, info = make_incident(root)
    return path, info
