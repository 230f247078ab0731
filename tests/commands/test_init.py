"""`stablesweep init DATA_DIR` as a user runs it: a folder of manifests and image folders in, a
config that `data check` passes and `train` runs out; bad input refused with the place named."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from stablesweep.config import load_config


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(path)


def _datasets(root: Path) -> None:
    """birds: a manifest of 4 classes (train and val); pets: an image folder of 3 classes;
    nums: a manifest whose labels run 1..3 (1-based)."""
    for split, n in (("train", 8), ("val", 4)):
        rows = []
        for i in range(n):
            _png(root / "img" / f"birds_{split}_{i}.png", i)
            rows.append({"image": f"img/birds_{split}_{i}.png", "label": i % 4})
        (root / f"birds_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        for c in ("cat", "dog", "eel"):
            for i in range(2):
                _png(root / "pets" / split / c / f"{i}.png", i)
    rows = []
    for i in range(6):
        _png(root / "img" / f"nums_{i}.png", i)
        rows.append({"image": f"img/nums_{i}.png", "label": 1 + i % 3})
    (root / "nums_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_init_finds_each_dataset_and_the_config_trains_from_anywhere(tmp_path, cli, monkeypatch):
    data = tmp_path / "data"
    _datasets(data)
    (data / "nums_train.jsonl").unlink()  # the 1-based set has its own test
    out = tmp_path / "cfg" / "mine.yaml"  # the config elsewhere: its paths must still resolve
    r = cli("init", str(data), "--out", str(out), "--model", "small_cnn", "--image-size", "16", "--steps", "6")
    assert r.returncode == 0, r.stderr
    assert "2 dataset(s), 7 classes" in r.stdout
    raw = yaml.safe_load(out.read_text())
    ds = raw["datasets"]["dataset_configs"]
    assert ds["birds"]["num_classes"] == 4 and ds["pets"]["num_classes"] == 3
    assert ds["pets"]["val"].endswith("pets/val") and ds["birds"]["train"].endswith("birds_train.jsonl")
    assert "img" not in ds  # the manifests' image folder is no dataset of its own
    assert raw["loss"]["masking"] == "slice" and raw["datasets"]["enable_logits_masking"] is True
    cfg = load_config(out)
    assert cfg.training.steps == 6
    monkeypatch.chdir(tmp_path)  # another working directory
    assert cli("data", "check", str(out)).returncode == 0
    r = cli("train", str(out), "--out", str(tmp_path / "run"))
    assert r.returncode in (0, 3), r.stdout + r.stderr  # stable, or stalled in 6 steps: it ran
    assert (tmp_path / "run" / "result.json").exists()


def test_init_names_1_based_labels_and_data_check_then_names_the_lines(tmp_path, cli):
    data = tmp_path / "data"
    _datasets(data)
    r = cli("init", str(data))
    assert r.returncode == 0, r.stderr
    assert "labels run 1..3: 1-based?" in r.stdout
    assert yaml.safe_load((data / "config.yaml").read_text())["datasets"]["dataset_configs"]["nums"]["num_classes"] == 3
    check = cli("data", "check", str(data / "config.yaml"))
    assert check.returncode == 1 and "nums" in check.stdout


def test_init_refuses_an_empty_folder_and_an_existing_config(tmp_path, cli):
    (tmp_path / "empty").mkdir()
    r = cli("init", str(tmp_path / "empty"))
    assert r.returncode == 2 and "no dataset found" in r.stderr and str(tmp_path / "empty") in r.stderr
    assert not (tmp_path / "empty" / "config.yaml").exists()
    data = tmp_path / "data"
    _datasets(data)
    (data / "config.yaml").write_text("# mine\n")
    r = cli("init", str(data))
    assert r.returncode == 2 and "--force" in r.stderr
    assert (data / "config.yaml").read_text() == "# mine\n"  # nothing lost
    assert cli("init", str(data), "--force").returncode == 0


def test_the_image_extensions_are_torchvisions():
    from torchvision.datasets.folder import IMG_EXTENSIONS

    from stablesweep.data import discover

    assert discover.IMG_EXTENSIONS == IMG_EXTENSIONS
