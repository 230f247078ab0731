"""Label space, deterministic resumable batching, mixing, eval subsets and skip_evaluation."""
from __future__ import annotations

import itertools

import pytest
import torch

from stablesweep.data import DataError, LabelSpace, build_data
from stablesweep.data.mixing import MixingBatchSampler, eval_subset

from .conftest import make_config, synthetic_cfg


def _take(it, n):
    return list(itertools.islice(it, n))


def test_label_space_offsets_and_mask(root):
    cfg = synthetic_cfg(root, {"a": (3, 6), "b": (2, 4), "c": (4, 8)})
    ls = LabelSpace.from_config(cfg)
    assert ls.names == ("a", "b", "c") and ls.num_classes == (3, 2, 4)
    assert ls.offsets == (0, 3, 5) and ls.total == 9
    m = ls.allowed_mask()
    assert m.dtype == torch.bool and m.shape == (3, 9)
    assert m[1].nonzero().flatten().tolist() == [3, 4]
    assert m.sum(1).tolist() == [3, 2, 4] and (m.sum(0) == 1).all()


def test_global_labels_and_sorted_segments(root):
    cfg = synthetic_cfg(root, {"a": (3, 30), "b": (2, 20), "c": (4, 40)})
    md = build_data(cfg)
    ls = md.label_space
    seen = set()
    for b in _take(md.train_batches(16, seed=1), 12):
        assert b.images.shape == (16, 3, 8, 8) and b.labels.dtype == torch.int64 and b.dropped == 0
        off = torch.tensor(ls.offsets)[b.dataset_ids]
        assert torch.equal(b.labels, off + b.local_labels)
        assert (b.local_labels < torch.tensor(ls.num_classes)[b.dataset_ids]).all()
        ids = b.dataset_ids.tolist()
        assert ids == sorted(ids)
        # segments: contiguous, ascending, covering the batch, each one dataset
        assert b.segments[0][1] == 0 and b.segments[-1][2] == 16
        for (d, s, e), nxt in zip(b.segments, b.segments[1:] + ((None, 16, None),)):
            assert s < e and e == nxt[1]
            assert set(ids[s:e]) == {d}
        assert [d for d, _, _ in b.segments] == sorted(set(ids))
        seen.update(ids)
    assert seen == {0, 1, 2}


def test_resume_matches_uninterrupted_across_epoch_boundary(root):
    cfg = synthetic_cfg(root, {"a": (3, 10), "b": (2, 7)})  # 17 samples, batch 5: 3 steps an epoch
    md = build_data(cfg)
    assert md.steps_per_epoch(5) == 3
    full = _take(md.train_batches(5, seed=42), 10)
    for k in (2, 4, 7):  # 2 crosses the first boundary, 7 starts mid epoch 2
        resumed = _take(md.train_batches(5, seed=42, start_step=k), 10 - k)
        for a, b in zip(full[k:], resumed):
            assert torch.equal(a.labels, b.labels) and torch.equal(a.images, b.images)
            assert a.segments == b.segments
    # epochs differ from each other and seeds differ from each other
    assert [b.labels.tolist() for b in full[:3]] != [b.labels.tolist() for b in full[3:6]]
    other = _take(md.train_batches(5, seed=43), 3)
    assert [b.labels.tolist() for b in full[:3]] != [b.labels.tolist() for b in other]


def test_workers_give_the_same_batches(root):
    cfg = synthetic_cfg(root, {"a": (3, 12), "b": (2, 8)})
    md = build_data(cfg)
    a = _take(md.train_batches(4, seed=0), 6)
    b = _take(md.train_batches(4, seed=0, num_workers=2), 6)
    assert all(torch.equal(x.images, y.images) and x.segments == y.segments for x, y in zip(a, b))


def test_proportional_is_a_permutation_per_epoch():
    s = MixingBatchSampler([7, 5], batch_size=4, seed=3)
    epoch = [i for batch in itertools.islice(iter(s), 3) for i in batch]
    assert sorted(epoch) == list(range(12))
    s2 = MixingBatchSampler([7, 6], batch_size=4, seed=3)  # 13 samples: one dropped per epoch
    assert s2.steps_per_epoch == 3


def _dataset_shares(sampler, sizes, batches):
    counts = [0] * len(sizes)
    for batch in itertools.islice(iter(sampler), batches):
        for i in batch:
            counts[0 if i < sizes[0] else 1] += 1
    total = sum(counts)
    return [c / total for c in counts]


def test_balanced_vs_proportional_vs_weighted():
    sizes = [300, 100]
    prop = _dataset_shares(MixingBatchSampler(sizes, 32, seed=0, mixing="proportional"), sizes, 200)
    bal = _dataset_shares(MixingBatchSampler(sizes, 32, seed=0, mixing="balanced"), sizes, 200)
    wtd = _dataset_shares(MixingBatchSampler(sizes, 32, seed=0, mixing="weighted", weights=[1.0, 3.0]),
                          sizes, 200)
    assert abs(prop[0] - 0.75) < 0.03
    assert abs(bal[0] - 0.5) < 0.03
    assert abs(wtd[0] - 0.25) < 0.03
    # within a dataset, balanced sampling still covers its samples
    seen = {i for b in itertools.islice(iter(MixingBatchSampler(sizes, 32, 0, "balanced")), 50) for i in b}
    assert len(seen & set(range(300, 400))) > 90


def test_balanced_mixing_end_to_end(root):
    cfg = synthetic_cfg(root, {"big": (2, 60), "small": (2, 12)}, datasets={"mixing": "balanced"})
    md = build_data(cfg)
    ids = torch.cat([b.dataset_ids for b in _take(md.train_batches(24, seed=0), 20)])
    share_small = (ids == 1).float().mean().item()
    assert 0.4 < share_small < 0.6  # proportional would give 12/72 = 0.17


def test_too_small_train_set_for_the_batch(root):
    md = build_data(synthetic_cfg(root, {"a": (2, 3)}))
    with pytest.raises(DataError, match="fewer than batch_size"):
        md.train_batches(4, seed=0)


def test_batch_to_keeps_host_fields(root):
    b = next(build_data(synthetic_cfg(root, {"a": (2, 8), "b": (2, 8)})).train_batches(8, seed=0))
    c = b.to("cpu")
    assert c.segments == b.segments and isinstance(c.segments, tuple) and c.dropped == b.dropped
    assert torch.equal(c.labels, b.labels)


# ---- eval -------------------------------------------------------------------------------------

def test_eval_ratio_subset_size_and_determinism(root):
    dcs = {"food101": {"num_classes": 5, "source": "synthetic", "val_size": 40, "eval_ratio": 0.25},
           "veg200": {"num_classes": 5, "source": "synthetic", "val_size": 40, "eval_ratio": 0.001},
           "fru92": {"num_classes": 5, "source": "synthetic", "val_size": 40}}
    md = build_data(make_config(root, dcs))
    assert md.eval_size("food101") == 10  # round(0.25 * 40)
    assert md.eval_size("veg200") == 1  # at least one
    assert md.eval_size("fru92") == 40
    a = eval_subset("food101", 40, 0.25)
    assert list(a) == sorted(a) and len(set(a.tolist())) == 10
    assert (a == eval_subset("food101", 40, 0.25)).all()  # same name, same subset (no salted hash)
    assert list(a) != list(eval_subset("food172", 40, 0.25))  # seeded by the name
    assert list(a) != list(range(10))
    md2 = build_data(make_config(root, dcs))
    b1 = [x.labels.tolist() for x in md.eval_batches("food101", 3)]
    b2 = [x.labels.tolist() for x in md2.eval_batches("food101", 3)]
    assert b1 == b2 and [len(x) for x in b1] == [3, 3, 3, 1]  # fixed order, last batch kept
    locals_ = [lab for x in md.eval_batches("food101", 100) for lab in x.local_labels.tolist()]
    assert locals_ == [int(i) % 5 for i in a]  # exactly the subset, in index order


@pytest.mark.parametrize("global_skip, own, evaluated", [
    (False, {}, ["a", "b"]),
    (True, {}, []),
    (True, {"a": False}, ["a"]),  # per-dataset false wins over global true
    (False, {"b": True}, ["a"]),  # per-dataset true wins over global false
])
def test_skip_evaluation_precedence(root, global_skip, own, evaluated):
    dcs = {n: {"num_classes": 2, "source": "synthetic", **({"skip_evaluation": own[n]} if n in own else {})}
           for n in ("a", "b")}
    md = build_data(make_config(root, dcs, datasets={"skip_evaluation": global_skip}))
    assert md.eval_names == evaluated
    for n in {"a", "b"} - set(evaluated):
        with pytest.raises(KeyError, match="not evaluated"):
            md.eval_size(n)
