"""Batches onto the device: normalisation, augmentation (seeded per step, never in evaluation), and
training runs that are the same with or without the cache, augmented or not, resumed or not."""
from __future__ import annotations

import pytest
import torch

from stablesweep.config import AugmentConfig, ConfigError, config_from_dict
from stablesweep.data import DeviceInput, build_data
from stablesweep.data.device import crop_boxes
from stablesweep.data.images import normalise
from stablesweep.train import run_training

from .conftest import jpeg_config

CPU = torch.device("cpu")


def a_batch(root, n=16):
    data = build_data(jpeg_config(root, {"a": (3, 24), "b": (2, 16)}, data={"cache": "off"}))
    return data, next(data.train_batches(n, seed=0))


def test_normalisation_matches_the_sources_own_load(root):
    data, batch = a_batch(root)
    x = DeviceInput(CPU, None, AugmentConfig(), seed=0)(batch).images
    assert x.dtype == torch.float32 and x.shape == batch.images.shape
    d, i = 0, 5
    src = data.train_set.sources[d]
    assert torch.equal(normalise(src.pixels(i)), src.load(i))
    assert torch.equal(x, normalise(batch.images))
    bf = DeviceInput(CPU, torch.bfloat16, AugmentConfig(), seed=0)(batch).images
    assert bf.dtype == torch.bfloat16 and torch.equal(bf, x.to(torch.bfloat16))  # the model's dtype, same values
    floats = batch._replace(images=x)
    assert DeviceInput(CPU, None, AugmentConfig(), seed=0)(floats).images is x  # a caller's own floats pass


def test_flip_alone_is_an_exact_mirror_per_sample_and_seeded_by_step(root):
    _, batch = a_batch(root, 32)
    inp = DeviceInput(CPU, None, AugmentConfig(hflip=True), seed=3)
    plain = normalise(batch.images)
    a = inp(batch, step=7).images
    flipped = [torch.equal(a[k], plain[k].flip(-1)) for k in range(32)]
    kept = [torch.equal(a[k], plain[k]) for k in range(32)]
    assert all(f or k for f, k in zip(flipped, kept)) and 4 < sum(flipped) < 28
    assert torch.equal(a, inp(batch, step=7).images)  # same seed and step: same augmentation
    assert not torch.equal(a, inp(batch, step=8).images)
    assert not torch.equal(a, DeviceInput(CPU, None, AugmentConfig(hflip=True), seed=4)(batch, step=7).images)
    assert torch.equal(inp(batch).images, plain)  # evaluation: step None, never augmented


def test_random_resized_crop(root):
    g = torch.Generator().manual_seed(0)
    aug = AugmentConfig(random_resized_crop=True, scale=(0.2, 0.6), ratio=(0.5, 2.0))
    cx, cy, w, h = crop_boxes(4000, aug, g).unbind(1)
    assert (w <= 1).all() and (h <= 1).all() and (cx - w / 2 >= 0).all() and (cx + w / 2 <= 1 + 1e-12).all()
    assert (cy - h / 2 >= 0).all() and (cy + h / 2 <= 1 + 1e-12).all()
    area = w * h
    assert area.min() >= 0.2 - 1e-9 and area.max() <= 0.6 + 1e-9
    assert (w / h).min() >= 0.5 - 1e-9 and (w / h).max() <= 2.0 + 1e-9
    _, batch = a_batch(root)
    plain = normalise(batch.images)
    whole = DeviceInput(CPU, None, AugmentConfig(random_resized_crop=True, scale=(1, 1), ratio=(1, 1)), seed=0)
    assert torch.allclose(whole(batch, step=0).images, plain, atol=1e-5)  # the whole image: itself
    inp = DeviceInput(CPU, torch.bfloat16, aug, seed=0)
    x = inp(batch, step=1).images
    assert x.dtype == torch.bfloat16 and x.shape == plain.shape and torch.isfinite(x.float()).all()
    assert torch.equal(x, inp(batch, step=1).images) and not torch.equal(x, inp(batch, step=2).images)
    # bilinear resampling: every value lies within the range of the batch's pixels
    assert x.float().min() >= plain.min() - 1e-2 and x.float().max() <= plain.max() + 1e-2


def test_augment_keys_are_validated():
    base = {"training": {"steps": 1}, "datasets": {"dataset_configs": {"a": {"num_classes": 2}}}}
    cfg = config_from_dict(base, ["data.augment.hflip=true", "data.augment.random_resized_crop=true"])
    assert cfg.data.augment.hflip and cfg.data.augment.scale == (0.08, 1.0)
    assert not config_from_dict(base).data.augment.hflip  # off by default
    with pytest.raises(ConfigError, match=r"data.augment.scale: must be \[lo, hi\] with 0 < lo <= hi <= 1"):
        config_from_dict(base, ["data.augment.scale=[0.5, 1.5]"])
    with pytest.raises(ConfigError, match="data.augment.ratio"):
        config_from_dict(base, ["data.augment.ratio=[2, 1]"])
    with pytest.raises(ConfigError, match="unknown key 'data.augment.flip'"):
        config_from_dict(base, ["data.augment.flip=true"])


# ---- whole runs ------------------------------------------------------------------------------

def run_cfg(root, **data):
    return jpeg_config(root, {"a": (3, 24), "b": (2, 16)}, val=6,
                       training={"steps": 12, "report_interval": 4, "lr": 3e-3},
                       model={"name": "small_cnn"}, data=data)


def test_a_run_is_the_same_with_or_without_the_cache(root, cache_dir):
    off = run_training(run_cfg(root, cache="off"), device="cpu")
    on = run_training(run_cfg(root), device="cpu")
    assert any(cache_dir.glob("*.u8"))
    assert (off.initial_loss, off.final_loss, off.datasets) == (on.initial_loss, on.final_loss, on.datasets)


def test_evaluation_is_never_augmented(root):
    from stablesweep.train import Trainer

    plain = Trainer(run_cfg(root), device="cpu").evaluate()
    augmented = Trainer(run_cfg(root, augment={"random_resized_crop": True, "hflip": True}), device="cpu").evaluate()
    assert plain == augmented and set(plain) == {"a", "b"}


def test_an_augmented_run_is_deterministic_and_resumes_exactly(root, tmp_path):
    aug = {"augment": {"random_resized_crop": True, "hflip": True}}
    plain = run_training(run_cfg(root), device="cpu")
    full = []
    a = run_training(run_cfg(root, **aug), report=lambda m, c: full.append(m), device="cpu")
    assert a.final_loss != plain.final_loss  # augmentation changes training ...
    b = run_training(run_cfg(root, **aug), device="cpu")
    assert (a.final_loss, a.datasets) == (b.final_loss, b.datasets)  # ... the same way every time

    class Stop(Exception):
        pass

    ck = {}

    def stop_at_4(m, c):
        if m["step"] == 4:
            ck["dir"] = c
            raise Stop

    with pytest.raises(Stop):
        run_training(run_cfg(root, **aug), report=stop_at_4, device="cpu", checkpoint_dir=tmp_path / "ck")
    resumed = []
    run_training(run_cfg(root, **aug), report=lambda m, c: resumed.append(m), device="cpu", resume_from=ck["dir"])
    assert [m["step"] for m in resumed] == [8, 12]
    assert [m["last_loss"] for m in resumed] == [m["last_loss"] for m in full[1:]]
