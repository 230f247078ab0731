"""The data check (`validate_labels`) and the pre-flight that builds a run's data (`build_data`).

Every label and image is checked before torch is imported: this module and what it reads
(`manifests`, `problems`, `cache`'s lookup of a whole cache) import no torch, so `data check`, and
`train`, `sweep` and `ramp` before any work, refuse bad data in well under a second; the torch
side (`mixing.MultiData`, the decoded-image cache's sources) is imported once the data passed.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from stablesweep.config import total_steps

from .cache import cache_lookup, cached, size_text
from .manifests import scan
from .problems import DataError, LabelReport, ProblemKind

if TYPE_CHECKING:  # pragma: no cover
    from stablesweep.config import Config

    from .mixing import MultiData


def validate_labels(cfg: "Config", *, check_images: str = "header") -> LabelReport:
    """Check every label (and, per check_images none|header|full, every image) of every dataset;
    a split whose whole decoded-image cache is found is not opened image by image.

    Never raises for data problems: they are collected in the report. `check_images=True` means
    the config's data.verify_images, False means none.
    """
    report, _ = scan(cfg, check_images, cache_lookup(cfg))
    return report


def build_data(cfg: "Config", *, check_images: bool = True, cache: bool = True, log=None) -> "MultiData":
    """Validate every label (and image, per data.verify_images when check_images) first; raise one
    DataError listing the problems, each with dataset, file and line; then build the data.

    With `cache` (and data.cache not off), manifest and folder splits are read from their decoded-image
    cache when it is there; `data.cache: auto` builds it when the run reads its train set at least once
    (steps x batch_size >= train images), a PATH always. `log` hears what the cache did."""
    report, train, val = _checked(cfg, check_images, cache, log)
    from .mixing import LabelSpace, MultiData  # torch: the data passed its check

    data = MultiData(cfg, LabelSpace.from_config(cfg), train, val, report)
    if cache and cfg.data.cache != "off":
        _cache_note(data.use_cache(build=_builds_cache(cfg, data.train_size), log=log), log)
    return data


def preflight(cfg: "Config") -> int:
    """What `build_data` checks and caches, without torch (a sweep's or a ramp's driver, whose trials
    build their own data): the same DataError before any work, the decoded-image caches the trials
    will read built once here. Returns the train set's size (the images an epoch)."""
    _, train, val = _checked(cfg, True, True, None)
    size = sum(len(s) for s in train)
    if cfg.data.cache != "off":
        cached(cfg, train + [s for s in val.values() if s is not None], build_missing=_builds_cache(cfg, size))
    return size


def _checked(cfg: "Config", check_images: bool, cache: bool, log) -> tuple[LabelReport, list, dict]:
    """The data check of `build_data` and `preflight`: DataError unless every split passed; the
    report, the train sources in the label space's order, and the val sources a run evaluates (by
    dataset; None where it evaluates none)."""
    report, found = scan(cfg, cfg.data.verify_images if check_images else "none", cache_lookup(cfg) if cache else None)
    cached_splits = [f"{s.dataset} {s.split}" for s in report.splits if s.cached]
    if cached_splits and log is not None:  # one line for all of them
        log(f"data check: images of {len(cached_splits)} split(s) not checked one by one ({', '.join(cached_splits[:3])}"
            f"{', ...' if len(cached_splits) > 3 else ''}): their decoded-image caches are whole and keyed to these "
            "very files (path, size, mtime)")
    on_bad = cfg.loss.on_bad_label
    names = list(cfg.datasets.dataset_configs)
    for name in names:  # a train split with nothing to train on
        src, rep = found.get((name, "train")), report.get(name, "train")
        if src is not None and len(src) == 0 and rep is not None and rep.errors(on_bad) == 0:
            rep.add(ProblemKind.NO_USABLE_SAMPLES, f"{name}: {rep.path}: the train split has no usable samples")
    if not report.ok(on_bad):
        n = sum(s.errors(on_bad) for s in report.splits)
        raise DataError(f"{cfg.source}: data check failed ({n} problem(s)); nothing was trained:\n"
                        + report.format_problems(on_bad_label=on_bad), report)
    skipped = report.skipped_labels()
    if skipped:
        warnings.warn(skipped, stacklevel=3)
    val = {}
    for n in names:  # MultiData evaluates a dataset with a val split that has samples, unless skipped
        src = found.get((n, "val"))
        val[n] = src if src is not None and len(src) and not cfg.eval_skipped(n) else None
    return report, [found[(n, "train")] for n in names], val


def _builds_cache(cfg: "Config", train_size: int) -> bool:
    """data.cache: a PATH always builds; auto builds when the run reads its train set at least once."""
    return cfg.data.cache != "auto" or total_steps(cfg, train_size) * cfg.training.batch_size >= train_size


def _cache_note(summary: dict, log) -> None:
    if log is not None and summary["read"] + summary["built"]:
        log(f"data.cache: {summary['read'] + summary['built']} split(s) from {summary['directory']} "
            f"({size_text(summary['bytes'])})")
