"""JSONL manifests and ImageFolder directories: pre-flight validation and their sources.

Pre-flight reads EVERY line of every manifest (and every file of a folder dataset) and collects
problems instead of stopping at the first one: bad JSON, a missing key, a label that is not an
integer (a bool is not one), a label outside [0, num_classes), a missing or unreadable image.
Each `Problem` says what (its kind) and where (dataset, split, file, line, the offending value),
with a message that names them; code reads the fields, people read the message (problems.py).
Nothing is ever clamped: a label 101 in a 101-class dataset is the bug that caused the whole
incident, so it is reported, not hidden.
"""
from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from stablesweep.config import Config, DatasetConfig, data_source

from .discover import IMG_EXTENSIONS
from .problems import DataError, LabelReport, Problem, ProblemKind, SplitReport
from .synthetic import SyntheticSource, synthetic_sizes

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

# (dataset, split, image paths) -> the split's whole decoded-image cache file, or None
CacheLookup = Callable[[str, str, list[str]], Path | None]

CHECK_LEVELS = ("none", "header", "full")


# ---- image checks -----------------------------------------------------------------------------

def check_image(path: str, level: str) -> tuple[ProblemKind, str] | None:
    """None when the file passes the check of `level` (none|header|full), else (kind, why)."""
    if level == "none":
        return None
    try:
        if not os.path.isfile(path):
            return ProblemKind.MISSING_IMAGE, "not found"
        with Image.open(path) as im:
            im.verify()  # header + structure (PNG chunk CRCs), no decoding
            fmt = im.format
        if level == "full" or not _ends_whole(path, fmt):  # cut short, or odd: decoding tells
            with Image.open(path) as im:
                im.load()  # decode every pixel: catches truncated files
    except UnidentifiedImageError:
        return ProblemKind.UNREADABLE_IMAGE, "unreadable: not an image PIL can identify"
    except Exception as e:  # noqa: BLE001 - any decoder failure is a data problem to report
        return ProblemKind.UNREADABLE_IMAGE, f"unreadable: {type(e).__name__}: {e}"
    return None


# the bytes a whole file ends with: JPEG's end-of-image marker, PNG's IEND chunk (type and CRC)
_END = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}


def _ends_whole(path: str, fmt: str | None) -> bool:
    """A cheap test for a file cut short (a copy that stopped half-way), which the header check
    alone passes: its format's end marker in its last KB. False sends it to a full decode."""
    end = _END.get(fmt or "")
    if end is None:
        return True
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - 1024))
        return end in f.read()


def _check_split(rep: SplitReport, paths: list[str], level: str,
                 cached: CacheLookup | None) -> list[tuple[ProblemKind, str] | None]:
    """The image checks of one split at `level`; skipped when `cached` finds the split's decoded-image
    cache whole and keyed to these very files: building it decoded every image, and none has changed
    since."""
    if level != "none" and cached is not None:
        found = cached(rep.dataset, rep.split, paths)
        if found is not None:
            rep.cached = found.name
            logger.info("%s %s: images not checked one by one: read from their whole decoded-image cache %s",
                        rep.dataset, rep.split, found)
            return [None] * len(paths)
    return _check_many(paths, level)


def _check_many(paths: list[str], level: str) -> list[tuple[ProblemKind, str] | None]:
    if level == "none" or not paths:
        return [None] * len(paths)
    workers = min(32, 4 * (os.cpu_count() or 1), len(paths))
    if workers <= 1 or len(paths) < 64:
        return [check_image(p, level) for p in paths]
    with ThreadPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(lambda p: check_image(p, level), paths, chunksize=64))


# ---- sources: one split of one dataset --------------------------------------------------------

class FileSource:
    """Image files with local labels (from a manifest or a folder); images are decoded lazily (or read
    from a decoded-image cache: `cache.CachedSource`)."""

    kind = "file"

    def __init__(self, dataset: str, split: str, display: str, paths: list[str], labels: np.ndarray,
                 lines: np.ndarray | None, image_size: int):
        self.dataset = dataset
        self.split = split
        self.display = display  # the manifest / folder as the config names it
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)
        self.lines = None if lines is None else np.asarray(lines, dtype=np.int64)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def where(self, i: int) -> str:
        if self.lines is not None:
            return f"{self.display}:{int(self.lines[i])}"
        return self.paths[i]

    def pixels(self, i: int) -> torch.Tensor:
        """The decoded image: uint8 [3,S,S]."""
        from .images import decode  # torch: the checks import none

        try:
            return decode(self.paths[i], self.image_size)
        except (OSError, ValueError) as e:
            raise DataError(f"{self.dataset}: {self.where(i)}: image {self.paths[i]} could not be read: "
                            f"{type(e).__name__}: {e}") from None

    def load(self, i: int) -> torch.Tensor:
        """The normalised image: float32 [3,S,S]."""
        from .images import normalise

        return normalise(self.pixels(i))


# ---- ImageFolder layout ------------------------------------------------------------------------

def find_classes(root: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
    """torchvision.datasets.folder.find_classes without importing torch: the sorted class folders and
    their indices; FileNotFoundError when there are none."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise FileNotFoundError(f"Couldn't find any class folder in {root}.")
    return classes, {c: i for i, c in enumerate(classes)}


def make_dataset(root: str | os.PathLike, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """torchvision.datasets.folder.make_dataset(root, class_to_idx, IMG_EXTENSIONS, allow_empty=True)
    without importing torch: (path, class index) of every image file, in torchvision's order
    (`tests/data/test_manifests.py` holds the two to the same answer)."""
    out = []
    for name in sorted(class_to_idx):
        d = os.path.join(os.path.expanduser(root), name)
        if not os.path.isdir(d):
            continue
        for where, _, files in sorted(os.walk(d, followlinks=True)):
            out += [(os.path.join(where, f), class_to_idx[name]) for f in sorted(files)
                    if f.lower().endswith(IMG_EXTENSIONS)]
    return out


# ---- scanning ---------------------------------------------------------------------------------

@dataclass
class _Scan:
    report: SplitReport
    source: FileSource | None = None


def _label_stats(rep: SplitReport, labels: list[int]) -> None:
    n = rep.num_classes
    if labels:
        uniq, counts = np.unique(np.asarray(labels, dtype=np.int64), return_counts=True)
        rep.label_counts = dict(zip(uniq.tolist(), counts.tolist()))
        where = f"{rep.dataset}: {rep.path}"
        if rep.min == 1 and rep.max == n:
            rep.problems.insert(0, Problem(  # the split's diagnosis before its lines
                ProblemKind.ONE_BASED, rep.dataset, rep.split, rep.path, None, (1, n),
                f"{where}: labels look 1-based (shifted by one): min 1, max {n}, num_classes {n}; "
                f"labels must be 0-based, in [0, {n}): subtract 1 from every label in the manifest "
                f"(do not clamp: clamping merges class {n} into class {n - 1})"))
            rep.fatal += 1
        elif rep.min == 0 and rep.max == n:
            rep.notes.append(f"{where}: labels run from 0 to {n}: if the dataset really has {n + 1} classes, "
                             f"set num_classes: {n + 1}")
        in_range = uniq[(uniq >= 0) & (uniq < n)]
        if len(in_range) < n:
            missing = sorted(set(range(n)) - set(in_range.tolist()))
            shown = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
            rep.notes.append(f"{where}: {len(in_range)} of {n} classes present "
                             f"({len(missing)} absent: {shown})")


def _describe(v: Any) -> str:
    return {bool: "a boolean", float: "a number with a fraction", str: "a string", list: "a list",
            dict: "an object", type(None): "null"}.get(type(v), type(v).__name__)


def scan_manifest(dataset: str, split: str, d: DatasetConfig, display: str, path: Path,
                  check_images: str, image_size: int, cached: CacheLookup | None = None) -> _Scan:
    rep = SplitReport(dataset, split, "manifest", display, d.num_classes)
    n = d.num_classes
    if not path.is_file():
        rep.add(ProblemKind.MISSING_FILE, f"{dataset}: {display}: {split} manifest not found (looked at {path})",
                value=str(path))
        return _Scan(rep)
    base = path.parent
    ik, lk = d.image_key, d.label_key
    paths: list[str] = []
    labels: list[int] = []
    lines: list[int] = []
    found: list[tuple[ProblemKind, int, Any, str]] = []  # (kind, line, value, message)
    all_ints: list[int] = []
    with open(path, "rb") as f:
        for ln, raw in enumerate(f, 1):
            text = raw.strip()
            if not text:
                continue
            rep.count += 1
            at = f"{dataset}: {display}:{ln}"
            try:
                obj = json.loads(text)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                msg = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
                col = f" at column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
                found.append((ProblemKind.BAD_JSON, ln, None, f"{at}: bad JSON: {msg}{col}"))
                continue
            if not isinstance(obj, dict):
                found.append((ProblemKind.NOT_AN_OBJECT, ln, None,
                              f"{at}: expected a JSON object, got {_describe(obj)}"))
                continue
            ok = True
            img = obj.get(ik)
            if ik not in obj:
                keys = ", ".join(map(repr, list(obj)[:6]))
                found.append((ProblemKind.MISSING_KEY, ln, ik,
                              f"{at}: missing key {ik!r} (image_key; the line has {keys})"))
                ok = False
            elif not isinstance(img, str) or not img:
                found.append((ProblemKind.BAD_IMAGE_PATH, ln, img,
                              f"{at}: {ik!r} must be a non-empty string path, got {img!r}"))
                ok = False
            if lk not in obj:
                keys = ", ".join(map(repr, list(obj)[:6]))
                found.append((ProblemKind.MISSING_KEY, ln, lk,
                              f"{at}: missing key {lk!r} (label_key; the line has {keys})"))
                continue
            lab = obj[lk]
            if isinstance(lab, bool) or not isinstance(lab, int):
                found.append((ProblemKind.LABEL_NOT_INT, ln, lab,
                              f"{at}: label {json.dumps(lab)} is {_describe(lab)}, expected an integer "
                              f"in [0, {n})"))
                continue
            all_ints.append(lab)
            if not 0 <= lab < n:
                found.append((ProblemKind.LABEL_OUT_OF_RANGE, ln, lab, f"{at}: label {lab} is outside [0, {n})"))
            if ok:
                p = Path(img).expanduser()
                paths.append(str(p if p.is_absolute() else base / p))
                labels.append(lab)
                lines.append(ln)
    for ln, p, bad in zip(lines, paths, _check_split(rep, paths, check_images, cached)):
        if bad is not None:
            found.append((bad[0], ln, p, f"{dataset}: {display}:{ln}: image {p} {bad[1]}"))
    # a line with an out-of-range label AND another fault is fatal, not skippable
    fatal_lines = {ln for kind, ln, _, _ in found if kind != ProblemKind.LABEL_OUT_OF_RANGE}
    found.sort(key=lambda t: t[1])
    for kind, ln, value, msg in found:
        rep.add(kind, msg, line=ln, value=value,
                fatal=kind != ProblemKind.LABEL_OUT_OF_RANGE or ln in fatal_lines)
    _label_stats(rep, all_ints)
    if rep.count == 0:
        rep.notes.append(f"{dataset}: {display}: the {split} manifest is empty")
    if fatal_lines:  # keep only lines that can be loaded
        keep = [i for i, ln in enumerate(lines) if ln not in fatal_lines]
        paths = [paths[i] for i in keep]
        labels = [labels[i] for i in keep]
        lines = [lines[i] for i in keep]
    src = FileSource(dataset, split, display, paths, np.asarray(labels, np.int64),
                     np.asarray(lines, np.int64), image_size)
    return _Scan(rep, src)


def scan_folder(dataset: str, split: str, d: DatasetConfig, display: str, root: Path,
                check_images: str, image_size: int, class_to_idx: dict[str, int] | None = None,
                cached: CacheLookup | None = None) -> tuple[_Scan, dict[str, int] | None]:
    """An ImageFolder split (root/<class>/<image>). Class discovery is torchvision's `find_classes`
    (sorted folder names; `find_classes` above). The val split uses the train split's class -> index mapping, so a val
    folder that lacks a class does not shift the labels of the others."""
    rep = SplitReport(dataset, split, "folder", display, d.num_classes)
    n = d.num_classes
    if not root.is_dir():
        rep.add(ProblemKind.MISSING_FILE, f"{dataset}: {display}: {split} folder not found (looked at {root})",
                value=str(root))
        return _Scan(rep), None
    try:
        classes, own = find_classes(root)
    except FileNotFoundError:
        rep.add(ProblemKind.CLASS_FOLDERS, f"{dataset}: {display}: no class folders (ImageFolder expects "
                                           f"{display}/<class name>/<image>)", value=[])
        return _Scan(rep), None
    if class_to_idx is None:
        if len(classes) != n:
            rep.add(ProblemKind.CLASS_FOLDERS, f"{dataset}: {display}: {len(classes)} class folders, but "
                                               f"num_classes is {n} (first folders: {', '.join(classes[:5])})",
                    value=classes)
        mapping = own
    else:
        extra = [c for c in classes if c not in class_to_idx]
        if extra:
            rep.add(ProblemKind.CLASS_FOLDERS, f"{dataset}: {display}: class folders not in the train split: "
                                               f"{', '.join(extra[:8])}{', ...' if len(extra) > 8 else ''}",
                    value=extra)
        mapping = class_to_idx
    samples = make_dataset(str(root), mapping)
    empty = sorted(set(classes) & set(mapping) - {Path(p).relative_to(root).parts[0] for p, _ in samples})
    if empty:
        rep.notes.append(f"{dataset}: {display}: class folders without images: "
                         f"{', '.join(empty[:8])}{', ...' if len(empty) > 8 else ''}")
    paths = [p for p, _ in samples]
    labels = [c for _, c in samples]
    rep.count = len(paths)
    if not paths:
        rep.add(ProblemKind.NO_IMAGES, f"{dataset}: {display}: no image files (extensions "
                                       f"{', '.join(IMG_EXTENSIONS)})")
    bad = set()
    for i, (p, why) in enumerate(zip(paths, _check_split(rep, paths, check_images, cached))):
        if why is not None:
            rep.add(why[0], f"{dataset}: {p}: image {why[1]}", value=p)
            bad.add(i)
    _label_stats(rep, labels)
    if bad:
        paths = [p for i, p in enumerate(paths) if i not in bad]
        labels = [c for i, c in enumerate(labels) if i not in bad]
    src = FileSource(dataset, split, display, paths, np.asarray(labels, np.int64), None, image_size)
    return _Scan(rep, src), mapping


def _check_level(cfg: Config, check_images: Any) -> str:
    if check_images is True or check_images is None:
        return cfg.data.verify_images
    if check_images is False:
        return "none"
    if check_images not in CHECK_LEVELS:
        raise ValueError(f"check_images: expected one of {', '.join(CHECK_LEVELS)}, got {check_images!r}")
    return check_images


def _balanced_counts(count: int, num_classes: int) -> dict[int, int]:
    """The label counts of `count` samples labelled i % num_classes (a synthetic split)."""
    q, r = divmod(count, num_classes)
    return {c: q + (c < r) for c in range(min(count, num_classes))}


def scan(cfg: Config, check_images: Any = "header",
         cached: CacheLookup | None = None) -> tuple[LabelReport, dict[tuple[str, str], Any]]:
    """Scan every dataset split of the config: the report and the sources (None where unusable).
    `cached(dataset, split, paths)` (`cache.whole_cache` bound to the config) stands in for the image
    checks of a split whose whole decoded-image cache it finds."""
    level = _check_level(cfg, check_images)
    report = LabelReport(check_images=level)
    sources: dict[tuple[str, str], Any] = {}
    size = cfg.data.image_size
    offset = 0
    for name, d in cfg.datasets.dataset_configs.items():
        src = data_source(d)
        if src == "synthetic":
            sizes = synthetic_sizes(cfg, d)
            for split in ("train", "val"):
                count = sizes[split]
                rep = SplitReport(name, split, "synthetic", None, d.num_classes, count=count,
                                  label_counts=_balanced_counts(count, d.num_classes))
                if count < d.num_classes:
                    rep.notes.append(f"{name}: synthetic {split} split has {count} samples for "
                                     f"{d.num_classes} classes: {d.num_classes - count} classes absent")
                report.splits.append(rep)
                sources[(name, split)] = SyntheticSource(
                    name, split, d.num_classes, offset, count, size, cfg.data.synthetic_seed,
                    cfg.data.synthetic_noise)
        else:
            mapping = None
            for split in ("train", "val"):
                raw = getattr(d, split)
                if raw is None:
                    rep = SplitReport(name, split, src, None, d.num_classes)
                    if split == "train":  # config validation normally catches this
                        rep.add(ProblemKind.NO_TRAIN, f"{name}: no train {src} configured (datasets."
                                                      f"dataset_configs.{name}.train)")
                    else:
                        rep.notes.append(f"{name}: no val split configured: {name} is not evaluated")
                    report.splits.append(rep)
                    sources[(name, split)] = None
                    continue
                path = cfg.resolve_path(raw)
                if src == "manifest":
                    sc = scan_manifest(name, split, d, raw, path, level, size, cached)
                else:
                    sc, m = scan_folder(name, split, d, raw, path, level, size, class_to_idx=mapping, cached=cached)
                    if split == "train":
                        mapping = m
                report.splits.append(sc.report)
                sources[(name, split)] = sc.source
        offset += d.num_classes
    return report, sources
