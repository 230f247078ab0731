"""Synthetic image classification data: in memory (lazy) and written out as real files.

Every image is a pure function of (seed, global class, split, index): a per-class random
low-frequency prototype (GRID x GRID random values per channel, bilinearly upsampled to the image
size) plus Gaussian pixel noise of std `noise`, mapped into [0, 1] pixel space and quantised to
uint8, as every source yields pixels. Nothing is stored
per sample and only the tiny low-resolution prototypes are cached, so 2000 classes cost nothing
until an image is asked for. `write_synthetic` writes the very same pixels as PNG files with
JSONL manifests and a training config, so files and in-memory data agree bit for bit.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml
from PIL import Image

from stablesweep.config import FOOD_DATASETS, Config, DatasetConfig, config_from_dict

if TYPE_CHECKING:  # pragma: no cover
    import torch

# torch is imported where pixels are made: a synthetic split is described (and data checked) without it
GRID = 4  # prototype resolution per channel
PIXEL_SCALE = 0.22  # pixel = MEAN[c] + PIXEL_SCALE * (prototype + noise * N(0, 1)), clipped to [0, 1]
_SPLIT_ID = {"train": 0, "val": 1}


def synthetic_sizes(cfg: Config, d: DatasetConfig) -> dict[str, int]:
    per = cfg.data.synthetic_per_class
    return {"train": d.train_size or per * d.num_classes,
            "val": d.val_size or max(per // 4, 2) * d.num_classes}


@lru_cache(maxsize=None)
def class_prototype(seed: int, global_class: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 0x5EED, global_class])
    return rng.standard_normal((3, GRID, GRID), dtype=np.float32)


def synth_pixels(seed: int, global_class: int, split: str, index: int, size: int, noise: float) -> torch.Tensor:
    """The synthetic image (float32 [3,size,size] in [0,1]) of sample `index` of class `global_class`."""
    import torch
    import torch.nn.functional as F

    proto = torch.from_numpy(class_prototype(seed, global_class))[None]
    up = F.interpolate(proto, size=(size, size), mode="bilinear", align_corners=False)[0]
    rng = np.random.default_rng([seed, _SPLIT_ID[split], global_class, index])
    eps = torch.from_numpy(rng.standard_normal((3, size, size), dtype=np.float32))
    return (_base() + PIXEL_SCALE * (up + noise * eps)).clamp_(0.0, 1.0)


@lru_cache(maxsize=None)
def _base() -> torch.Tensor:
    """The ImageNet mean as float32 [3,1,1]: the pixel every image is drawn around."""
    import torch

    from .images import MEAN

    return torch.tensor(MEAN, dtype=torch.float32).view(3, 1, 1)


def synth_uint8(seed: int, global_class: int, split: str, index: int, size: int, noise: float) -> torch.Tensor:
    """The same image quantised to pixels: uint8 [3,size,size] (what a loader yields and a file holds)."""
    import torch

    x = synth_pixels(seed, global_class, split, index, size, noise)
    return (x * 255.0).round_().to(torch.uint8)


class SyntheticSource:
    """One split of a synthetic dataset. Sample i has local label i % num_classes (balanced)."""

    kind = "synthetic"

    def __init__(self, dataset: str, split: str, num_classes: int, offset: int, size: int,
                 image_size: int, seed: int, noise: float):
        self.dataset = dataset
        self.split = split
        self.num_classes = num_classes
        self.offset = offset  # global class = offset + local label: prototypes differ across datasets
        self.size = size
        self.image_size = image_size
        self.seed = seed
        self.noise = noise
        self.display = f"<synthetic {dataset} {split}>"

    def __len__(self) -> int:
        return self.size

    def label(self, i: int) -> int:
        return i % self.num_classes

    def where(self, i: int) -> str:
        return f"{self.display} #{i}"

    def pixels(self, i: int) -> torch.Tensor:
        """uint8 [3,S,S]: exactly the pixels of the PNG `write_synthetic` writes for this sample."""
        return synth_uint8(self.seed, self.offset + i % self.num_classes, self.split, i, self.image_size,
                           self.noise)

    def load(self, i: int) -> torch.Tensor:
        from .images import normalise

        return normalise(self.pixels(i))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_synthetic(out_dir, scale: float = 1.0, *, per_class: int = 16, image_size: int = 32,
                    seed: int = 1234, noise: float = 0.6,
                    names_classes: dict[str, int] | None = None) -> Path:
    """Write synthetic datasets as PNG files + JSONL manifests + a training config; return its path.

    Layout: out_dir/images/<dataset>/<split>/<n>.png, out_dir/<dataset>_train.jsonl and
    <dataset>_val.jsonl ({"image": path relative to the manifest, "label": local int}) and
    out_dir/config.yaml (model small_cnn, manifests as dataset_configs). Default datasets: the six
    food datasets with class counts scaled by `scale` (at least 2 each). Train has per_class samples
    a class, val max(per_class // 4, 2). Image i of a split is exactly the in-memory synthetic image
    i of a synthetic config with the same datasets, seed, noise and image size, quantised to uint8.
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    if image_size < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}")
    if names_classes is None:
        names_classes = {n: max(2, round(c * scale)) for n, c in FOOD_DATASETS.items()}
    if not names_classes:
        raise ValueError("names_classes is empty")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {"train": per_class, "val": max(per_class // 4, 2)}
    dcs = {}
    offset = 0
    for name, nc in names_classes.items():
        if nc < 1:
            raise ValueError(f"{name}: number of classes must be at least 1, got {nc}")
        for split, per in sizes.items():
            img_dir = out / "images" / name / split
            img_dir.mkdir(parents=True, exist_ok=True)
            lines = []
            for i in range(per * nc):
                local = i % nc
                arr = synth_uint8(seed, offset + local, split, i, image_size, noise).permute(1, 2, 0).numpy()
                Image.fromarray(arr).save(img_dir / f"{i}.png", compress_level=1)
                lines.append(json.dumps({"image": f"images/{name}/{split}/{i}.png", "label": local}))
            _write_atomic(out / f"{name}_{split}.jsonl", "\n".join(lines) + "\n")
        dcs[name] = {"num_classes": nc, "source": "manifest", "train": f"{name}_train.jsonl",
                     "val": f"{name}_val.jsonl", "eval_ratio": 1.0}
        offset += nc
    raw = {
        "training": {"lr": 2e-3, "max_grad_norm": 1.0, "precision": "fp32", "steps": 200,
                     "batch_size": min(32, per_class * offset), "optimizer": "adamw", "seed": 0,
                     "report_interval": 20, "num_workers": 0},
        "datasets": {"enable_logits_masking": True, "mixing": "proportional", "dataset_configs": dcs},
        "loss": {"type": "cross_entropy", "on_bad_label": "error"},
        "model": {"name": "small_cnn"},
        "data": {"image_size": image_size, "synthetic_per_class": per_class, "synthetic_noise": noise,
                 "synthetic_seed": seed, "verify_images": "header"},
    }
    cfg_path = out / "config.yaml"
    cfg = config_from_dict(raw, source=str(cfg_path), base_dir=str(out.resolve()))  # validates
    header = (f"# synthetic data written by stablesweep.data.write_synthetic: {len(dcs)} datasets, "
              f"{offset} classes, {per_class} train images a class, {image_size}x{image_size} px\n")
    _write_atomic(cfg_path, header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return cfg_path
