"""Synthetic data: deterministic, lazy, learnable; written files agree with the in-memory images."""
from __future__ import annotations

import json
import time

import torch

from stablesweep.config import load_config
from stablesweep.data import build_data, validate_labels, write_synthetic
from stablesweep.data.images import normalise
from stablesweep.data.synthetic import SyntheticSource, class_prototype

from .conftest import make_config, synthetic_cfg


def test_deterministic_and_class_dependent(root):
    a = SyntheticSource("x", "train", 4, 10, 40, 8, seed=7, noise=0.6)
    b = SyntheticSource("x", "train", 4, 10, 40, 8, seed=7, noise=0.6)
    assert torch.equal(a.load(5), b.load(5))
    assert not torch.equal(a.load(5), a.load(9))  # same class, other noise
    assert a.label(5) == a.label(9) == 1
    other_seed = SyntheticSource("x", "train", 4, 10, 40, 8, seed=8, noise=0.6)
    assert not torch.equal(a.load(5), other_seed.load(5))
    val = SyntheticSource("x", "val", 4, 10, 40, 8, seed=7, noise=0.6)
    assert not torch.equal(a.load(5), val.load(5))  # splits draw different noise


def test_sizes_and_overrides(root):
    cfg = make_config(root, {"a": {"num_classes": 5, "source": "synthetic"},
                             "b": {"num_classes": 3, "source": "synthetic", "train_size": 7, "val_size": 4}},
                      data={"synthetic_per_class": 12})
    md = build_data(cfg)
    assert md.train_sizes == {"a": 60, "b": 7}
    assert md.eval_size("a") == 3 * 5 and md.eval_size("b") == 4  # val: max(12 // 4, 2) per class
    rep = validate_labels(cfg)
    assert rep.ok() and rep.get("b", "train").distinct == 3 and rep.get("a", "train").max == 4
    assert rep.get("b", "train").label_counts == {0: 3, 1: 2, 2: 2}  # sample i has label i % 3


def test_two_thousand_classes_are_lazy(root):
    before = class_prototype.cache_info().currsize
    t = time.perf_counter()
    cfg = make_config(root, {"food2k": {"num_classes": 2000, "source": "synthetic"}})
    md = build_data(cfg)
    assert time.perf_counter() - t < 1.0
    assert md.train_size == 16 * 2000
    assert class_prototype.cache_info().currsize == before  # nothing generated yet
    b = next(md.train_batches(4, seed=0))
    assert b.images.shape == (4, 3, 8, 8)
    assert class_prototype.cache_info().currsize <= before + 4


def test_normalised_and_carries_class_structure(root):
    """A nearest-class-mean classifier on raw pixels is far above chance on the val split."""
    cfg = synthetic_cfg(root, {"a": (10, 160)}, data={"image_size": 16})
    md = build_data(cfg)
    tr = next(md.train_batches(160, seed=0))
    assert tr.images.dtype == torch.uint8  # pixels; normalised on the device
    x = normalise(tr.images).flatten(1)
    assert abs(x.mean().item()) < 0.3 and 0.6 < x.std().item() < 1.4
    means = torch.stack([x[tr.local_labels == c].mean(0) for c in range(10)])
    val = next(md.eval_batches("a", 100))
    pred = torch.cdist(normalise(val.images).flatten(1), means).argmin(1)
    acc = (pred == val.local_labels).float().mean().item()
    assert acc > 0.7, acc  # chance is 0.1


def test_write_synthetic_round_trip(root):
    out = root / "syn"
    path = write_synthetic(out, scale=0.01, per_class=4, image_size=16, seed=3)
    assert path == out / "config.yaml"
    cfg = load_config(path)
    assert cfg.model.name == "small_cnn" and cfg.data.image_size == 16
    assert cfg.training.steps is not None and cfg.training.batch_size >= 1
    names = cfg.dataset_names
    assert names == ["food101", "food172", "foodx251", "food2k", "fru92", "veg200"]
    assert cfg.datasets.dataset_configs["food2k"].num_classes == 20
    assert all(cfg.datasets.dataset_configs[n].num_classes >= 2 for n in names)
    # manifests: paths relative to the manifest, labels local ints
    first = json.loads((out / "food2k_train.jsonl").read_text().splitlines()[5])
    assert first == {"image": "images/food2k/train/5.png", "label": 5}
    assert (out / first["image"]).is_file()

    md = build_data(cfg)  # header check of every written image
    assert validate_labels(cfg).ok()
    nc = cfg.datasets.dataset_configs["food2k"].num_classes
    assert md.train_sizes["food2k"] == 4 * nc and md.eval_size("food2k") == 2 * nc
    labels_in_file = [json.loads(s)["label"] for s in (out / "food2k_val.jsonl").read_text().splitlines()]
    got = [lab for b in md.eval_batches("food2k", 7) for lab in b.local_labels.tolist()]
    assert got == labels_in_file
    d = md.label_space.index("food2k")
    assert all(b.labels.tolist() == (b.local_labels + md.label_space.offsets[d]).tolist()
               for b in md.eval_batches("food2k", 7))

    # the files hold exactly the in-memory synthetic pixels
    mem_cfg = make_config(root, {n: {"num_classes": cfg.datasets.dataset_configs[n].num_classes,
                                     "source": "synthetic"} for n in names},
                          data={"image_size": 16, "synthetic_per_class": 4, "synthetic_seed": 3})
    mem = build_data(mem_cfg)
    fb = next(md.eval_batches("veg200", 100))
    mb = next(mem.eval_batches("veg200", 100))
    assert torch.equal(fb.labels, mb.labels)
    assert torch.equal(fb.images, mb.images)
