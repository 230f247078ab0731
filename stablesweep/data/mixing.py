"""The unified label space, deterministic resumable mixed batching, eval subsets, `MultiData`.

Global class = offsets[d] + local label, datasets in config order. The order of train epoch e is
a pure function of (seed, e), so a run resumed at step k sees exactly the batches an
uninterrupted run sees from step k on. Every batch is sorted by dataset id in the loader, so each
dataset's samples form one contiguous slice whose bounds are known on the host (`segments`): a
loss over each dataset's own slice of the logits needs neither a mask nor a device sync. A loader
makes whole batches of uint8 pixels (in a worker, straight into shared memory); normalisation and
augmentation happen on the device (`device.DeviceInput`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, get_worker_info

from .cache import cached
from .problems import DataError, LabelReport

if TYPE_CHECKING:  # pragma: no cover
    from stablesweep.config import Config

MIXINGS = ("proportional", "balanced", "weighted")
PREFETCH = 2  # batches in flight a loader worker


def seed_of(*parts: Any) -> int:
    """A stable 63-bit seed from parts (sha256; never Python's salted hash)."""
    text = "/".join(str(p) for p in ("stablesweep",) + parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


# ---- label space ------------------------------------------------------------------------------

@dataclass(frozen=True)
class LabelSpace:
    names: tuple[str, ...]  # dataset names in config order
    num_classes: tuple[int, ...]
    offsets: tuple[int, ...]  # global class = offsets[d] + local label

    @property
    def total(self) -> int:
        return (self.offsets[-1] + self.num_classes[-1]) if self.names else 0

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"unknown dataset {name!r} (known: {', '.join(self.names)})") from None

    def owner(self, column: int) -> tuple[str, int] | None:
        """(dataset, local class) of a global column; None beyond the last dataset."""
        for name, off, n in zip(self.names, self.offsets, self.num_classes):
            if off <= column < off + n:
                return name, column - off
        return None

    def allowed_mask(self, device=None) -> torch.Tensor:
        """bool [n_datasets, total]: True where the class belongs to the dataset."""
        mask = torch.zeros(len(self.names), self.total, dtype=torch.bool)
        for d, (o, n) in enumerate(zip(self.offsets, self.num_classes)):
            mask[d, o:o + n] = True
        return mask.to(device) if device is not None else mask

    @classmethod
    def from_config(cls, cfg: "Config") -> "LabelSpace":
        names, nums, offs = [], [], []
        o = 0
        for name, d in cfg.datasets.dataset_configs.items():
            names.append(name)
            nums.append(d.num_classes)
            offs.append(o)
            o += d.num_classes
        return cls(tuple(names), tuple(nums), tuple(offs))


# ---- batches ----------------------------------------------------------------------------------

class Batch(NamedTuple):
    images: torch.Tensor  # uint8 [B,3,H,W] pixels from a loader; float, normalised, once on the device
    #                       (data.device.DeviceInput), which leaves float images as they are
    labels: torch.Tensor  # int64 [B], global class ids
    local_labels: torch.Tensor  # int64 [B]
    dataset_ids: torch.Tensor  # int64 [B], sorted ascending
    segments: tuple[tuple[int, int, int], ...]  # (dataset_index, start, end) of each dataset present
    dropped: int = 0  # samples dropped for a bad label (loss.on_bad_label: skip)

    def to(self, device, non_blocking: bool = True) -> "Batch":
        return self._replace(images=self.images.to(device, non_blocking=non_blocking),
                             labels=self.labels.to(device, non_blocking=non_blocking),
                             local_labels=self.local_labels.to(device, non_blocking=non_blocking),
                             dataset_ids=self.dataset_ids.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":  # called by DataLoader(pin_memory=True); keeps segments a tuple
        return self._replace(images=self.images.pin_memory(), labels=self.labels.pin_memory(),
                             local_labels=self.local_labels.pin_memory(),
                             dataset_ids=self.dataset_ids.pin_memory())


def _as_is(batch: Batch) -> Batch:  # the DataLoader's collate_fn: __getitems__ made the whole batch
    return batch


def _empty_images(n: int, size: int) -> torch.Tensor:
    """uint8 [n,3,size,size]; in a loader worker, in shared memory from the start (as torch's
    default_collate does), so handing the batch to the main process copies nothing."""
    shape = (n, 3, size, size)
    if get_worker_info() is None:
        return torch.empty(shape, dtype=torch.uint8)
    storage = torch.UntypedStorage._new_shared(n * 3 * size * size)
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


def _read(source, idx: np.ndarray, out: torch.Tensor) -> None:
    """The pixels of samples `idx` of one source into `out`: a cache reads them in one gather."""
    if hasattr(source, "read"):
        source.read(idx, out)
    else:
        for k, i in enumerate(idx.tolist()):
            out[k] = source.pixels(i)


class _Batches(Dataset):
    """Whole batches (`__getitems__`): sampled indices -> a Batch of uint8 images sorted by dataset id,
    with the host-side label guard. Subclasses say which (dataset, sample) an index is."""

    def __init__(self, label_space: LabelSpace, on_bad_label: str, image_size: int):
        self.space = label_space
        self.on_bad_label = on_bad_label
        self.image_size = image_size
        self._offsets = torch.tensor(label_space.offsets, dtype=torch.int64)
        self._classes = np.asarray(label_space.num_classes, dtype=np.int64)

    def locate(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # (dataset ids, sample indices)
        raise NotImplementedError

    def source(self, d: int):
        raise NotImplementedError

    def __getitems__(self, indices: list[int]) -> Batch:
        ds, idx = self.locate(np.asarray(indices, dtype=np.int64))
        labels = np.array([self.source(d).label(i) for d, i in zip(ds.tolist(), idx.tolist())], dtype=np.int64)
        bad = (labels < 0) | (labels >= self._classes[ds])
        dropped = int(bad.sum())
        if dropped:
            k = int(np.argmax(bad))
            d, i, lab = int(ds[k]), int(idx[k]), int(labels[k])
            if self.on_bad_label == "error":
                raise DataError(f"{self.space.names[d]}: {self.source(d).where(i)}: label {lab} is outside "
                                f"[0, {self._classes[d]}) (loss.on_bad_label is error; 'skip' drops such samples)")
            ds, idx, labels = ds[~bad], idx[~bad], labels[~bad]
        order = np.argsort(ds, kind="stable")  # stable: keeps the sampled order within a dataset
        ds, idx, labels = ds[order], idx[order], labels[order]
        segs = segments(ds.tolist())
        images = _empty_images(len(ds), self.image_size)
        for d, start, end in segs:
            _read(self.source(d), idx[start:end], images[start:end])
        local, ids = torch.from_numpy(labels), torch.from_numpy(ds)
        return Batch(images, self._offsets[ids] + local, local, ids, segs, dropped)


class MixedDataset(_Batches):
    """The train splits concatenated: flat index -> (dataset id, sample index)."""

    def __init__(self, sources: list, label_space: LabelSpace, on_bad_label: str, image_size: int):
        super().__init__(label_space, on_bad_label, image_size)
        self.sources = sources
        self.starts = np.cumsum([0] + [len(s) for s in sources], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = np.searchsorted(self.starts, index, side="right") - 1
        return d, index - self.starts[d]

    def source(self, d: int):
        return self.sources[d]


class EvalDataset(_Batches):
    """One dataset's eval subset: position k -> sample indices[k]."""

    def __init__(self, source, d: int, indices: np.ndarray, label_space: LabelSpace, on_bad_label: str,
                 image_size: int):
        super().__init__(label_space, on_bad_label, image_size)
        self.src = source
        self.d = d
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def locate(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.full(len(index), self.d, dtype=np.int64), self.indices[index]

    def source(self, d: int):
        return self.src


def segments(dataset_ids: list[int]) -> tuple[tuple[int, int, int], ...]:
    """(dataset index, start, end) of each run of equal ids: a Batch's `segments`."""
    out = []
    start = 0
    for k in range(1, len(dataset_ids) + 1):
        if k == len(dataset_ids) or dataset_ids[k] != dataset_ids[start]:
            out.append((dataset_ids[start], start, k))
            start = k
    return tuple(out)


# ---- sampling ---------------------------------------------------------------------------------

class MixingBatchSampler:
    """Endless batches of flat indices over epochs; epoch e's order depends only on (seed, e).

    proportional: a permutation of all samples (each sample equally likely).
    balanced: each dataset has equal probability per draw; a uniform sample within it (with
    replacement). weighted: dataset probability proportional to its weight. An epoch has as many
    draws as the mixed train set has samples; the last partial batch is dropped.
    """

    def __init__(self, sizes: list[int], batch_size: int, seed: int, mixing: str = "proportional",
                 weights: list[float] | None = None, start_step: int = 0, shard: tuple[int, int] = (0, 1)):
        if mixing not in MIXINGS:
            raise ValueError(f"mixing: expected one of {', '.join(MIXINGS)}, got {mixing!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if start_step < 0:
            raise ValueError(f"start_step must be 0 or more, got {start_step}")
        self.sizes = list(sizes)
        self.n = sum(self.sizes)
        if self.n < batch_size:
            raise DataError(f"the mixed train set has {self.n} samples, fewer than batch_size {batch_size}: "
                            f"no full batch (drop_last)")
        self.batch_size = batch_size
        self.seed = seed
        self.mixing = mixing
        self.start_step = start_step
        self.rank, self.world = shard  # data parallel: this rank's share of each global batch
        if mixing == "balanced":
            p = [1.0 if s > 0 else 0.0 for s in self.sizes]
        elif mixing == "weighted":
            if weights is None or len(weights) != len(self.sizes):
                raise ValueError("weighted mixing needs one weight per dataset")
            p = [float(w) if s > 0 else 0.0 for w, s in zip(weights, self.sizes)]
        else:
            p = [float(s) for s in self.sizes]
        self.probs = torch.tensor(p, dtype=torch.float64) / sum(p)
        self._sizes_t = torch.tensor(self.sizes, dtype=torch.int64)
        self._starts_t = torch.tensor(np.cumsum([0] + self.sizes[:-1]), dtype=torch.int64)

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    def epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed_of("epoch", self.seed, epoch))
        if self.mixing == "proportional":
            return torch.randperm(self.n, generator=g)
        ds = torch.multinomial(self.probs, self.n, replacement=True, generator=g)
        u = torch.rand(self.n, generator=g, dtype=torch.float64)
        sizes = self._sizes_t[ds]
        local = torch.minimum((u * sizes).to(torch.int64), sizes - 1)
        return self._starts_t[ds] + local

    def __iter__(self) -> Iterator[list[int]]:
        spe, b = self.steps_per_epoch, self.batch_size
        epoch, k = divmod(self.start_step, spe)
        while True:
            order = self.epoch_order(epoch)
            for s in range(k, spe):
                yield order[s * b + self.rank:(s + 1) * b:self.world].tolist()
            epoch, k = epoch + 1, 0


def eval_subset(name: str, n: int, ratio: float) -> np.ndarray:
    """Sorted indices of a deterministic subset of size max(1, round(ratio * n)), seeded by the name."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    k = min(n, max(1, round(ratio * n)))
    if k == n:
        return np.arange(n, dtype=np.int64)
    g = torch.Generator().manual_seed(seed_of("eval", name))
    return np.sort(torch.randperm(n, generator=g)[:k].numpy())


# ---- the data of a run ------------------------------------------------------------------------

class MultiData:
    """The mixed train set and the per-dataset eval subsets of a config."""

    def __init__(self, cfg: "Config", label_space: LabelSpace, train_sources: list,
                 val_sources: dict[str, Any], report: LabelReport):
        self.cfg = cfg
        self.label_space = label_space
        self.report = report
        self.image_size = cfg.data.image_size
        self.on_bad_label = cfg.loss.on_bad_label
        self.mixing = cfg.datasets.mixing
        dcs = cfg.datasets.dataset_configs
        self.weights = [dcs[n].weight if dcs[n].weight is not None else 1.0 for n in label_space.names]
        self.train_set = MixedDataset(train_sources, label_space, self.on_bad_label, self.image_size)
        self.train_sizes: dict[str, int] = {n: len(s) for n, s in zip(label_space.names, train_sources)}
        self.train_size = len(self.train_set)
        self.eval_sets: dict[str, EvalDataset] = {}
        self.eval_names: list[str] = []
        for d, name in enumerate(label_space.names):
            src = val_sources.get(name)
            if src is None:  # the pre-flight's choice (`check._checked`): none, empty or skip_evaluation
                continue
            self.eval_sets[name] = EvalDataset(src, d, eval_subset(name, len(src), dcs[name].eval_ratio),
                                            label_space, self.on_bad_label, self.image_size)
            self.eval_names.append(name)

    def steps_per_epoch(self, batch_size: int) -> int:
        return self.train_size // batch_size

    def batch_sampler(self, batch_size: int, seed: int, start_step: int = 0,
                      shard: tuple[int, int] = (0, 1)) -> MixingBatchSampler:
        return MixingBatchSampler(list(self.train_sizes.values()), batch_size, seed, self.mixing,
                                  self.weights, start_step, shard)

    def use_cache(self, *, build: bool, log=None, workers: int | None = None, progress=None,
                  rebuild: bool = False, strict: bool = False) -> dict:
        """Read every manifest/folder split the run reads from its decoded-image cache (data.cache), building
        the missing ones when `build`; the summary of `cache.cached` (which says what `strict` is)."""
        evals = list(self.eval_sets.values())
        sources, summary = cached(self.cfg, self.train_set.sources + [e.src for e in evals], build_missing=build,
                                  log=log, workers=workers, progress=progress, rebuild=rebuild, strict=strict)
        self.train_set.sources = sources[:len(self.train_set.sources)]
        for e, src in zip(evals, sources[len(self.train_set.sources):]):
            e.src = src
        return summary

    def train_batches(self, batch_size: int, seed: int, start_step: int = 0, num_workers: int = 0,
                      *, pin_memory: bool = False, shard: tuple[int, int] = (0, 1)) -> Iterator[Batch]:
        """Endless train batches (uint8 images) from `start_step` on (step s of an uninterrupted run =
        batch s). `num_workers` processes make whole batches; `pin_memory` pins them for a GPU.
        `shard` (rank, world): this rank's samples rank, rank + world, ... of each global batch of
        `batch_size` (DistributedSampler's split), so the ranks' shares make up the same global batches."""
        sampler = self.batch_sampler(batch_size, seed, start_step, shard)
        workers = {"persistent_workers": True, "prefetch_factor": PREFETCH} if num_workers else {}
        return iter(DataLoader(self.train_set, batch_sampler=sampler, collate_fn=_as_is, num_workers=num_workers,
                               pin_memory=pin_memory, **workers))

    def _eval_ds(self, name: str) -> EvalDataset:
        if name not in self.eval_sets:
            raise KeyError(f"{name!r} is not evaluated (evaluated: {', '.join(self.eval_names) or 'none'}; "
                           f"a dataset without a val split or with skip_evaluation is not)")
        return self.eval_sets[name]

    def eval_size(self, name: str) -> int:
        return len(self._eval_ds(name))

    def eval_batches(self, name: str, batch_size: int, num_workers: int = 0, *,
                     pin_memory: bool = False, shard: tuple[int, int] = (0, 1)) -> Iterator[Batch]:
        """The dataset's eval subset in a fixed order; the last batch may be smaller. `shard` (rank,
        world): this rank's samples rank, rank + world, ... of it."""
        ds = self._eval_ds(name)
        sampler = BatchSampler(range(shard[0], len(ds), shard[1]), batch_size, drop_last=False)
        return iter(DataLoader(ds, batch_sampler=sampler, collate_fn=_as_is, num_workers=min(num_workers, len(sampler)),
                               pin_memory=pin_memory))
