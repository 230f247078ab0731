"""The guarded loss over a unified label space.

Masking modes (`loss.masking`):
- `none`: softmax over the whole union of classes.
- `neg_inf`, `large_negative` (`loss.mask_value`, -1e9 by default), `finfo_min` (the most negative
  value of the mask dtype): the logits of classes outside a sample's dataset are overwritten
  before cross entropy.
- `slice`: each sample's loss over its own dataset's columns only. Exact (equal to -inf masking
  when the labels are right), and needs no mask value at all.

Masks are applied to fp32 logits unless `loss.mask_in: autocast`, which masks in the logits' own
dtype the way a model under autocast would, so that a sweep can show what fp16 does to -1e9
(it silently becomes -inf, see CONTEXT.md). The loss itself is always computed in fp32.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from stablesweep.config import LossConfig

VALUE_MASKS = ("neg_inf", "large_negative", "finfo_min")  # the maskings that write a value into the logits


class LossOutput(NamedTuple):
    loss: torch.Tensor  # fp32 scalar: mean cross entropy (+ z-loss)
    per_sample: torch.Tensor  # fp32 [B]: each sample's cross entropy (no z-loss)


def mask_value(masking: str, dtype: torch.dtype, large_negative: float = -1e9) -> torch.Tensor:
    """The mask value as a 0-d tensor of `dtype`, converted the way an indexed assignment would.

    -1e9 in fp16 becomes -inf here, exactly as `x[mask] = -1e9` does on a half tensor.
    """
    if masking not in VALUE_MASKS:
        raise ValueError(f"masking {masking!r} has no mask value")
    if masking == "neg_inf":
        v = float("-inf")
    elif masking == "large_negative":
        v = large_negative
    else:  # finfo_min
        v = torch.finfo(dtype).min
    return torch.tensor(v, dtype=torch.float64).to(dtype)


class GuardedLoss:
    """Cross entropy (optionally label-smoothed, with z-loss and logit clipping) per masking mode.

    `label_space` gives dataset offsets and sizes; batches carry dataset ids and host-known
    contiguous segments (the batch is sorted by dataset), so `slice` needs no device sync.
    """

    def __init__(self, cfg: LossConfig, masking: str, label_space, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.masking = masking
        self.space = label_space
        self.smoothing = cfg.label_smoothing if cfg.type == "label_smoothing" else 0.0
        self.allowed = label_space.allowed_mask(device)  # bool [D, C]

    # -- the pieces ----------------------------------------------------------------------
    def _clip(self, logits: torch.Tensor) -> torch.Tensor:
        c = self.cfg.logit_clip
        return logits.clamp(-c, c) if c is not None else logits

    def masked_logits(self, logits: torch.Tensor, dataset_ids: torch.Tensor) -> torch.Tensor:
        """Logits with other datasets' classes masked, in fp32 (or the autocast dtype, then fp32)."""
        x = logits if self.cfg.mask_in == "autocast" else logits.float()
        value = mask_value(self.masking, x.dtype, self.cfg.mask_value).to(x.device)
        x = torch.where(self.allowed[dataset_ids], x, value)
        return x.float()

    def _slices(self, logits: torch.Tensor, batch):
        """(fp32 logits of the dataset's own columns, local labels) per contiguous segment."""
        for d, start, end in batch.segments:
            off, n = self.space.offsets[d], self.space.num_classes[d]
            yield logits[start:end, off:off + n].float(), batch.local_labels[start:end]

    # -- the loss --------------------------------------------------------------------------
    def __call__(self, logits: torch.Tensor, batch) -> LossOutput:
        logits = self._clip(logits)
        eps = self.smoothing
        if self.masking == "slice":
            ces, lses = [], []
            for seg, lab in self._slices(logits, batch):
                ces.append(F.cross_entropy(seg, lab, reduction="none", label_smoothing=eps))
                if self.cfg.z_loss:
                    lses.append(torch.logsumexp(seg, dim=1))
            # an empty batch (every sample dropped for a bad label) has no segment: its loss is the
            # mean of nothing, NaN, as in the other modes, and the monitor skips the step
            per_sample = torch.cat(ces) if ces else logits.float().sum(dim=1)
            lse = torch.cat(lses) if lses else None
        else:
            x = logits.float() if self.masking == "none" else self.masked_logits(logits, batch.dataset_ids)
            per_sample = F.cross_entropy(x, batch.labels, reduction="none", label_smoothing=eps)
            lse = torch.logsumexp(x, dim=1) if self.cfg.z_loss else None
        loss = per_sample.mean()
        if lse is not None:
            loss = loss + self.cfg.z_loss * lse.pow(2).mean()
        return LossOutput(loss, per_sample)

    @torch.no_grad()
    def predict(self, logits: torch.Tensor, batch) -> torch.Tensor:
        """Predicted GLOBAL class: within the sample's own dataset unless masking is none."""
        if self.masking == "none":
            return logits.argmax(dim=1)
        x = torch.where(self.allowed[batch.dataset_ids], logits.float(), float("-inf"))
        return x.argmax(dim=1)
