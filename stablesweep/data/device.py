"""Batches onto the device: uint8 pixels copied (pinned, non-blocking, on a side CUDA stream so the
copy overlaps the step before), then normalised and augmented on the device in the model's dtype.

Augmentation (`data.augment`, off by default) is per sample, with parameters drawn on the host from a
generator seeded by (training.seed, step): the same seed gives the same batches on any device, with
or without workers or a cache, and a resumed run augments step k as an uninterrupted one does.
Random resized crop and horizontal flip are one affine resampling (`grid_sample`, bilinear) of the
image at the run's size. Evaluation is never augmented.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F

from stablesweep.config import AugmentConfig

from .images import normalise
from .mixing import Batch, seed_of

ATTEMPTS = 10  # boxes tried per sample before the whole image is used (as torchvision's RandomResizedCrop)


def crop_boxes(n: int, aug: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """[n, 4] boxes (centre x, centre y, width, height) as fractions of a square image: area in
    `aug.scale`, aspect (w/h) log-uniform in `aug.ratio`, inside the image; the whole image where
    none of ATTEMPTS draws fits."""
    area = torch.empty(n, ATTEMPTS, dtype=torch.float64).uniform_(*aug.scale, generator=g)
    logr = torch.empty(n, ATTEMPTS, dtype=torch.float64).uniform_(math.log(aug.ratio[0]), math.log(aug.ratio[1]),
                                                                  generator=g)
    w, h = (area * logr.exp()).sqrt(), (area / logr.exp()).sqrt()
    fits = (w <= 1) & (h <= 1)
    first = fits.to(torch.int8).argmax(1, keepdim=True)
    ok = fits.any(1)
    w = torch.where(ok, w.gather(1, first)[:, 0], torch.ones(n, dtype=torch.float64))
    h = torch.where(ok, h.gather(1, first)[:, 0], torch.ones(n, dtype=torch.float64))
    u = torch.rand(n, 2, dtype=torch.float64, generator=g)
    cx = w / 2 + u[:, 0] * (1 - w)
    cy = h / 2 + u[:, 1] * (1 - h)
    return torch.stack([cx, cy, w, h], 1)


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor onto the device without a host sync (a blocking copy waits for the stream)."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


class DeviceInput:
    """What happens to a batch between the loader and the model, on the device."""

    def __init__(self, device: torch.device, dtype: torch.dtype | None, augment: AugmentConfig, seed: int,
                 channels_last: bool = False):
        self.device = torch.device(device)
        self.dtype = dtype or torch.float32  # the model's input dtype (bf16 / fp16 under autocast)
        self.augment = augment
        self.seed = seed
        self.channels_last = channels_last
        self.augmenting = augment.random_resized_crop or augment.hflip

    def __call__(self, batch: Batch, step: int | None = None) -> Batch:
        """The batch on the device, ready for the model; augmented (training step `step`) unless step is None."""
        return self.transform(batch.to(self.device), step)

    def transform(self, batch: Batch, step: int | None) -> Batch:
        x = batch.images
        if x.dtype != torch.uint8:  # already normalised floats (a caller that built its own batch)
            return batch
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        augment = self.augmenting and step is not None and len(x) > 0
        x = normalise(x, torch.float32 if augment else self.dtype)
        if augment:
            x = self._augment(x, step).to(self.dtype)
        return batch._replace(images=x)

    def _augment(self, x: torch.Tensor, step: int) -> torch.Tensor:
        n, a = len(x), self.augment
        g = torch.Generator().manual_seed(seed_of("augment", self.seed, step))
        if a.random_resized_crop:
            cx, cy, w, h = crop_boxes(n, a, g).unbind(1)
        else:
            cx = cy = torch.full((n,), 0.5, dtype=torch.float64)
            w = h = torch.ones(n, dtype=torch.float64)
        flip = torch.rand(n, generator=g) < 0.5 if a.hflip else torch.zeros(n, dtype=torch.bool)
        if not a.random_resized_crop:  # a flip alone moves pixels exactly: no resampling
            return torch.where(_to(flip, x.device)[:, None, None, None], x.flip(-1), x)
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)  # output [-1, 1] -> the box, in input coordinates
        theta[:, 0, 0] = torch.where(flip, -w, w)
        theta[:, 0, 2] = 2 * cx - 1
        theta[:, 1, 1] = h
        theta[:, 1, 2] = 2 * cy - 1
        grid = F.affine_grid(_to(theta.float(), x.device), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def batches(self, loader: Iterator[Batch], step: int) -> Iterator[Batch]:
        """Training batches from `loader` (pinned on CUDA), step `step` first, ready for the model. On
        CUDA each copy is issued on a side stream when the batch is asked for, so it runs while the
        GPU still works through the previous step's kernels."""
        if self.device.type != "cuda":
            for batch in loader:
                yield self(batch, step)
                step += 1
            return
        side = torch.cuda.Stream(self.device)
        main = torch.cuda.current_stream(self.device)
        for batch in loader:
            with torch.cuda.stream(side):
                batch = batch.to(self.device, non_blocking=True)
            main.wait_stream(side)
            for t in (batch.images, batch.labels, batch.local_labels, batch.dataset_ids):
                t.record_stream(main)  # allocated on the side stream, used on main
            yield self.transform(batch, step)
            step += 1
