"""Fixtures for the data tests: tiny real PNG files, JSONL manifests and configs in tmp_path."""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stablesweep.config import config_from_dict


def write_png(path: Path, value: int = 128, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size, size, 3), value, dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def write_manifest(root: Path, name: str, labels: list, split: str = "train", *,
                   images: bool = True, raw_lines: dict[int, str] | None = None) -> str:
    """root/<name>_<split>.jsonl with one line per label (image img/<name>/<split>/<i>.png, relative);
    raw_lines replaces the given 1-based line numbers with raw text. Returns the manifest name."""
    lines = []
    for i, lab in enumerate(labels):
        rel = f"img/{name}/{split}/{i}.png"
        if images:
            write_png(root / rel, value=(37 * i) % 256)
        lines.append(json.dumps({"image": rel, "label": lab}))
    for ln, text in (raw_lines or {}).items():
        lines[ln - 1] = text
    fname = f"{name}_{split}.jsonl"
    (root / fname).write_text("\n".join(lines) + "\n")
    return fname


def make_config(root: Path, dataset_configs: dict, /, **sections):
    raw = {"training": {"steps": 10, "batch_size": 4}, "datasets": {"dataset_configs": dataset_configs},
           "data": {"image_size": 8}}
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    return config_from_dict(raw, source=str(root / "config.yaml"), base_dir=str(root))


def synthetic_cfg(root: Path, sizes: dict[str, tuple[int, int]], **sections):
    """Synthetic datasets {name: (num_classes, train_size)} with 8x8 images."""
    dcs = {n: {"num_classes": c, "source": "synthetic", "train_size": t, "val_size": 2 * c}
           for n, (c, t) in sizes.items()}
    return make_config(root, dcs, **sections)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch) -> Path:
    """data.cache: auto writes under this test's own directory, never the user's ~/.cache."""
    d = tmp_path / "image-cache"
    monkeypatch.setenv("STABLESWEEP_CACHE_DIR", str(d))
    return d


def jpeg_manifest(root: Path, name: str, n: int, num_classes: int, *, size=(40, 30), split: str = "train") -> str:
    """root/<name>_<split>.jsonl over n JPEGs of `size` (w, h), each its own noisy picture; label i % classes."""
    rng = np.random.default_rng(zlib.crc32(f"{name}/{split}".encode()))
    lines = []
    for i in range(n):
        rel = f"jpg/{name}/{split}/{i}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / rel, quality=90)
        lines.append(json.dumps({"image": rel, "label": i % num_classes}))
    fname = f"{name}_{split}.jsonl"
    (root / fname).write_text("\n".join(lines) + "\n")
    return fname


def jpeg_config(root: Path, sizes: dict[str, tuple[int, int]], *, val: int = 0, **sections):
    """JPEG manifest datasets {name: (num_classes, train images)}, image_size 16, batch 8, 8 steps."""
    dcs = {}
    for name, (nc, n) in sizes.items():
        dcs[name] = {"num_classes": nc, "train": jpeg_manifest(root, name, n, nc)}
        if val:
            dcs[name]["val"] = jpeg_manifest(root, name, val, nc, split="val")
    defaults = {"training": {"steps": 8, "batch_size": 8}, "data": {"image_size": 16}}
    return make_config(root, dcs, **{k: {**defaults.get(k, {}), **sections.get(k, {})}
                                     for k in defaults.keys() | sections.keys()})
