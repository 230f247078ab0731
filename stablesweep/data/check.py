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

from .cache import cache_lookup, size_text
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
    report, sources = scan(cfg, cfg.data.verify_images if check_images else "none", cache_lookup(cfg) if cache else None)
    cached = [f"{s.dataset} {s.split}" for s in report.splits if s.cached]
    if cached and log is not None:  # one line for all of them
        log(f"data check: images of {len(cached)} split(s) not checked one by one ({', '.join(cached[:3])}"
            f"{', ...' if len(cached) > 3 else ''}): their decoded-image caches are whole and keyed to these "
            "very files (path, size, mtime)")
    on_bad = cfg.loss.on_bad_label
    names = list(cfg.datasets.dataset_configs)
    for name in names:  # a train split with nothing to train on
        src, rep = sources.get((name, "train")), report.get(name, "train")
        if src is not None and len(src) == 0 and rep is not None and rep.errors(on_bad) == 0:
            rep.add(ProblemKind.NO_USABLE_SAMPLES, f"{name}: {rep.path}: the train split has no usable samples")
    if not report.ok(on_bad):
        n = sum(s.errors(on_bad) for s in report.splits)
        raise DataError(f"{cfg.source}: data check failed ({n} problem(s)); nothing was trained:\n"
                        + report.format_problems(on_bad_label=on_bad), report)
    skipped = report.skipped_labels()
    if skipped:
        warnings.warn(skipped, stacklevel=2)
    from .mixing import LabelSpace, MultiData  # torch: the data passed its check

    space = LabelSpace.from_config(cfg)
    train = [sources[(n, "train")] for n in space.names]
    val = {n: sources.get((n, "val")) for n in space.names}
    data = MultiData(cfg, space, train, val, report)
    if cache and cfg.data.cache != "off":
        reads = total_steps(cfg, data.train_size) * cfg.training.batch_size
        summary = data.use_cache(build=cfg.data.cache != "auto" or reads >= data.train_size, log=log)
        if log is not None and summary["read"] + summary["built"]:
            log(f"data.cache: {summary['read'] + summary['built']} split(s) from {summary['directory']} "
                f"({size_text(summary['bytes'])})")
    return data
