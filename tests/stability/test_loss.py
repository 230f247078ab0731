"""The guarded loss, and the numeric facts of CONTEXT.md reproduced with real torch."""
import math

import pytest
import torch
import torch.nn.functional as F

from stablesweep.config import LossConfig
from stablesweep.data import Batch, LabelSpace
from stablesweep.stability.loss import GuardedLoss, mask_value

SPACE = LabelSpace(names=("a", "b", "c"), num_classes=(3, 5, 4), offsets=(0, 3, 8))


def make_batch(seed=0, n_per=(4, 3, 5)):
    g = torch.Generator().manual_seed(seed)
    ids, local, segs, start = [], [], [], 0
    for d, n in enumerate(n_per):
        ids += [d] * n
        local += torch.randint(0, SPACE.num_classes[d], (n,), generator=g).tolist()
        segs.append((d, start, start + n))
        start += n
    ids_t, local_t = torch.tensor(ids), torch.tensor(local)
    labels = local_t + torch.tensor(SPACE.offsets)[ids_t]
    images = torch.zeros(len(ids), 3, 8, 8)
    logits = torch.randn(len(ids), SPACE.total, generator=g) * 3
    return Batch(images, labels, local_t, ids_t, tuple(segs), 0), logits


def loss_of(masking, logits, batch, **kw):
    return GuardedLoss(LossConfig(masking=masking, **kw), masking, SPACE)(logits, batch)


@pytest.mark.parametrize("masking", ["neg_inf", "large_negative", "finfo_min"])
def test_masked_modes_equal_slice_when_labels_are_right(masking):
    batch, logits = make_batch()
    ref = loss_of("slice", logits, batch)
    out = loss_of(masking, logits, batch)
    torch.testing.assert_close(out.per_sample, ref.per_sample)
    torch.testing.assert_close(out.loss, ref.loss)


def test_slice_is_each_datasets_own_cross_entropy():
    batch, logits = make_batch(seed=3)
    out = loss_of("slice", logits, batch)
    for d, s, e in batch.segments:
        off, n = SPACE.offsets[d], SPACE.num_classes[d]
        want = F.cross_entropy(logits[s:e, off:off + n], batch.local_labels[s:e], reduction="none")
        torch.testing.assert_close(out.per_sample[s:e], want)


def test_none_is_softmax_over_the_union_and_differs_from_masking():
    batch, logits = make_batch(seed=1)
    none = loss_of("none", logits, batch)
    torch.testing.assert_close(none.per_sample, F.cross_entropy(logits, batch.labels, reduction="none"))
    assert (none.per_sample > loss_of("slice", logits, batch).per_sample).all()


def test_masked_target_gives_inf_loss_with_finite_gradients():
    # CONTEXT: a -inf mask that hits the target (a label mapped to another dataset's column).
    logits = torch.randn(2, 6, requires_grad=True)
    mask = torch.tensor([[True, True, True, False, False, False]] * 2)
    x = logits.masked_fill(~mask, float("-inf"))
    loss = F.cross_entropy(x, torch.tensor([1, 4]))  # sample 1's target (4) is masked
    assert math.isinf(loss.item())
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_all_logits_masked_gives_nan():
    x = torch.full((1, 4), float("-inf"))
    assert math.isnan(F.cross_entropy(x, torch.tensor([0])).item())


def test_minus_1e9_does_not_exist_in_fp16():
    half = torch.zeros(2, 3, dtype=torch.float16)
    m = torch.tensor([[True, False, False], [False, False, False]])
    half[m] = -1e9  # silently stores -inf
    assert half[0, 0].item() == float("-inf")
    with pytest.raises(RuntimeError, match="overflow"):
        torch.zeros(2, 3, dtype=torch.float16).masked_fill(m, -1e9)
    assert mask_value("large_negative", torch.float16).item() == float("-inf")
    bf = mask_value("large_negative", torch.bfloat16).item()
    assert bf == pytest.approx(-9.98e8, rel=1e-3)  # bf16 holds it, approximately


def test_label_smoothing_over_neg_inf_mask_is_inf_even_with_right_labels():
    batch, logits = make_batch(seed=2)
    eps = dict(type="label_smoothing", label_smoothing=0.1)
    assert math.isinf(loss_of("neg_inf", logits, batch, **eps).loss.item())
    big = loss_of("large_negative", logits, batch, **eps).loss.item()
    assert 1e7 < big < 1e8  # about 5e7: smoothing mass on masked classes at -1e9
    sl = loss_of("slice", logits, batch, **eps).loss.item()
    assert math.isfinite(sl) and sl < 10


def test_mask_in_autocast_dtype_reproduces_the_fp16_break():
    batch, logits = make_batch(seed=4)
    eps = dict(type="label_smoothing", label_smoothing=0.1, mask_value=-1e9)
    fp32 = loss_of("large_negative", logits.half(), batch, mask_in="fp32", **eps).loss.item()
    in_half = loss_of("large_negative", logits.half(), batch, mask_in="autocast", **eps).loss.item()
    assert math.isfinite(fp32)
    assert math.isinf(in_half)  # -1e9 became -inf in fp16


def test_finfo_min_follows_the_mask_dtype():
    assert mask_value("finfo_min", torch.float16).item() == torch.finfo(torch.float16).min
    assert mask_value("finfo_min", torch.float32).item() == torch.finfo(torch.float32).min


def test_z_loss_adds_mean_squared_logsumexp_and_logit_clip_bounds_logits():
    batch, logits = make_batch(seed=5)
    base = loss_of("slice", logits, batch).loss
    z = loss_of("slice", logits, batch, z_loss=1e-2).loss
    lse = torch.cat([torch.logsumexp(logits[s:e, SPACE.offsets[d]:SPACE.offsets[d] + SPACE.num_classes[d]], 1)
                     for d, s, e in batch.segments])
    torch.testing.assert_close(z - base, 1e-2 * lse.pow(2).mean())
    huge = logits * 1e4
    clipped = loss_of("slice", huge, batch, logit_clip=50.0).per_sample
    assert clipped.max().item() <= 100 + math.log(5) + 1e-3  # spread of [-50, 50] plus log n
    assert loss_of("slice", huge, batch).per_sample.max().item() > 1e4  # unclipped it is huge


def test_predict_stays_within_the_samples_dataset():
    batch, logits = make_batch(seed=6)
    logits[:, 0] = 100.0  # a class of dataset a dominates everywhere
    fn = GuardedLoss(LossConfig(masking="slice"), "slice", SPACE)
    pred = fn.predict(logits, batch)
    off = torch.tensor(SPACE.offsets)[batch.dataset_ids]
    n = torch.tensor(SPACE.num_classes)[batch.dataset_ids]
    assert ((pred >= off) & (pred < off + n)).all()
    none = GuardedLoss(LossConfig(masking="none"), "none", SPACE).predict(logits, batch)
    assert (none == 0).all()


@pytest.mark.parametrize("masking", ["slice", "neg_inf", "none"])
def test_an_empty_batch_has_a_nan_loss_in_every_mode_and_backpropagates(masking):
    """Every sample dropped for a bad label (on_bad_label skip): no loss, a NaN the monitor skips."""
    empty = Batch(torch.zeros(0, 3, 8, 8), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                  torch.zeros(0, dtype=torch.long), (), 4)
    logits = torch.zeros(0, SPACE.total, requires_grad=True)
    out = loss_of(masking, logits, empty)
    assert math.isnan(out.loss.item()) and out.per_sample.shape == (0,)
    out.loss.backward()
    assert logits.grad.shape == logits.shape
