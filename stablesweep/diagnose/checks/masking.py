"""Masking against precision and loss: -inf masking, a mask value beyond its dtype, label smoothing
over value-masked logits, masks applied before the fp32 upcast, no masking over several datasets."""
from __future__ import annotations

import math

import torch

from stablesweep.config import Config
from stablesweep.data.mixing import Batch, LabelSpace
from stablesweep.stability.loss import VALUE_MASKS, GuardedLoss, mask_value

from ..findings import MAX_LINES, Finding
from .context import Context

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def measure_loss(cfg: Config, masking: str, space: LabelSpace, dtype: torch.dtype = torch.float32) -> float:
    """The guarded loss of one sample of the first dataset with a correct label and all-zero logits
    (of the dtype the model emits under the run's precision): what the loss config does to a
    healthy sample (e.g. inf for label smoothing over -inf masks)."""
    logits = torch.zeros(1, space.total, dtype=dtype)
    batch = Batch(torch.empty(0), torch.tensor([space.offsets[0]]), torch.tensor([0]), torch.tensor([0]),
                  ((0, 0, 1),))
    return float(GuardedLoss(cfg.loss, masking, space)(logits, batch).loss)


def check_masking(ctx: Context) -> list[Finding]:
    cfg = ctx.cfg
    space = LabelSpace.from_config(cfg)
    lo, t = cfg.loss, cfg.training
    masking = cfg.masking
    eps = lo.label_smoothing if lo.type == "label_smoothing" else 0.0
    amp = t.precision in DTYPES
    dtype = DTYPES.get(t.precision, torch.float32)
    in_dtype = dtype if lo.mask_in == "autocast" else torch.float32
    out: list[Finding] = []
    mkey = "loss.masking"
    src = "loss.masking" if lo.masking is not None else "datasets.enable_logits_masking (loss.masking unset)"
    bad_labels = ctx.bad_labels

    if masking in VALUE_MASKS and bad_labels:
        ev = []
        for b in bad_labels[:MAX_LINES]:
            d = space.index(b.dataset)
            col = space.offsets[d] + b.value
            own = space.owner(col)
            if own is None:
                ev.append(f"{b.file}:{b.line}: {b.dataset} label {b.value} (num_classes "
                          f"{space.num_classes[d]}) -> global column {col}, beyond all {space.total} columns: "
                          "an IndexError on CPU, a device-side assert on CUDA")
            else:
                ev.append(f"{b.file}:{b.line}: {b.dataset} label {b.value} (num_classes {space.num_classes[d]}) "
                          f"-> global column {col} = {own[0]} class {own[1]}, masked for {b.dataset} samples")
        if len(bad_labels) > MAX_LINES:
            ev.append(f"... and {len(bad_labels) - MAX_LINES} more")
        v = float(mask_value(masking, in_dtype, lo.mask_value))
        what = "inf" if v == float("-inf") else f"about {-v:.3g}"
        ev.append(f"{src}: {masking}: the target logit of such a sample is {v:.3g}, its cross entropy {what} "
                  "with finite gradients: training goes on while every loss that includes it reads inf")
        out.append(Finding("masking.target_masked", "error",
                           f"{len(bad_labels)} out-of-range label(s) land in another dataset's columns, which the "
                           f"{masking} mask hides: this is what makes the loss inf",
                           ev, "fix the labels (findings labels.*); loss.masking: slice computes each sample's loss "
                               "over its own dataset's columns, so a label error fails loudly instead of reading inf",
                           mkey, {mkey: "slice"}))

    if masking in VALUE_MASKS and eps > 0:
        loss = measure_loss(cfg, masking, space, dtype)
        sev = "error" if not math.isfinite(loss) else "warning"
        ev = [f"loss.type: label_smoothing, loss.label_smoothing: {eps:g}; {src}: {masking}"
              + (f", loss.mask_value: {lo.mask_value:g}" if masking == "large_negative" else ""),
              f"measured: the guarded loss of a sample with a correct label and zero logits over {space.total} "
              f"classes is {loss:.4g} (chance level for its dataset, {space.names[0]} with "
              f"{space.num_classes[0]} classes, is {math.log(max(2, space.num_classes[0])):.3g})",
              "smoothing puts mass eps/C on every class, the masked ones included"]
        out.append(Finding("masking.smoothing", sev,
                           f"label smoothing over {masking}-masked logits: the loss is {loss:.3g} even when every "
                           "label is right", ev,
                           "loss.masking: slice (smoothing over the dataset's own classes only)", mkey,
                           {mkey: "slice"}))

    fp16_min = torch.finfo(torch.float16).min
    if masking == "large_negative" and lo.mask_in == "autocast" and amp:
        fmin = torch.finfo(dtype).min
        stored = float(mask_value(masking, dtype, lo.mask_value))
        if lo.mask_value < fmin:
            ev = [f"loss.mask_value: {lo.mask_value:g}, loss.mask_in: autocast, training.precision: {t.precision}",
                  f"the smallest {t.precision} value is {fmin:g}: {lo.mask_value:g} stored in {t.precision} is "
                  f"{stored:g} (measured: the conversion `x[mask] = {lo.mask_value:g}` makes); masked_fill raises "
                  "instead",
                  "so this is -inf masking, with all its failure modes (a label error or label smoothing -> inf)"]
            out.append(Finding("masking.value_overflow", "error",
                               f"mask value {lo.mask_value:g} does not exist in {t.precision}: it becomes {stored:g}",
                               ev, "loss.masking: slice (no mask value at all; exact); or mask in fp32 "
                                   "(loss.mask_in: fp32), or use bf16", mkey, {mkey: "slice"}))
    elif masking == "large_negative" and t.precision == "fp16" and lo.mask_value < fp16_min:
        out.append(Finding("masking.value_fp32_only", "info",
                           f"mask value {lo.mask_value:g} is beyond fp16 but applied in fp32 (loss.mask_in: fp32)",
                           [f"fp16 min is {fp16_min:g}; in fp16 it would be -inf"],
                           "keep loss.mask_in: fp32, or use loss.masking: slice which needs no mask value",
                           "loss.mask_value"))

    if masking in VALUE_MASKS and lo.mask_in == "autocast" and amp:
        stored = float(mask_value(masking, dtype, lo.mask_value))
        out.append(Finding("masking.mask_in_autocast", "warning",
                           f"masks are applied in {t.precision}, before the fp32 upcast of the loss",
                           [f"loss.mask_in: autocast with training.precision: {t.precision}; {masking} in "
                            f"{t.precision} is {stored:g}",
                            "under autocast cross_entropy/log_softmax run in fp32 but the masking op does not"],
                           "loss.mask_in: fp32 (cast the logits, then mask)", "loss.mask_in",
                           {"loss.mask_in": "fp32"}))

    if masking == "neg_inf" and not any(f.code == "masking.target_masked" for f in out):
        out.append(Finding("masking.neg_inf", "warning",
                           "-inf masking turns any label mapping error into loss inf with finite gradients",
                           [f"{src}: neg_inf",
                            "a masked target logit gives cross entropy inf; training goes on while every logged "
                            "loss reads inf (the incident); all logits masked gives NaN"],
                           "loss.masking: slice: equal to -inf masking when the labels are right, needs no mask "
                           "value, and a wrong label fails loudly", mkey, {mkey: "slice"}))

    if masking == "none" and len(space.names) > 1:
        out.append(Finding("masking.none", "info",
                           f"no logits masking: each sample's softmax runs over all {space.total} classes of "
                           f"{len(space.names)} datasets",
                           [f"{src}: none"],
                           "with one head over several label spaces, datasets.enable_logits_masking: true "
                           "(masking slice) keeps each sample's loss and prediction within its own dataset",
                           mkey))
    return out
