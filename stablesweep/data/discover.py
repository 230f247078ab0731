"""A folder of datasets read as a config's `datasets` section (`stablesweep init`).

Recognised in the folder, each a dataset:
- JSONL manifests `NAME_train.jsonl` (and `NAME_val.jsonl`): one JSON object a line with `image`
  (a path relative to the manifest) and an integer `label`; the classes are max(label) + 1, or
  max(label) when the labels run 1..K (reported: 1-based labels are a data error to fix, not to
  configure around).
- ImageFolder directories `NAME/train/<class>/...` (and `NAME/val/<class>/...`), or `NAME/<class>/...`
  without a split: the classes are the class folders.
Nothing is decoded: labels are read as text and folders listed, so it takes a second on a large set.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from stablesweep.data.problems import DataError

# torchvision's ImageFolder extensions (torchvision.datasets.folder.IMG_EXTENSIONS), named here so
# that reading a folder's layout imports no torch
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class Found:
    """One dataset found: its config entry (paths relative to the folder) and what was seen."""

    name: str
    entry: dict
    kind: str  # manifest | folder
    samples: int
    notes: list[str] = field(default_factory=list)


def discover(root: str | Path) -> list[Found]:
    """The datasets in `root`, by name. Raises DataError naming the folder when it holds none."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected a folder of datasets: NAME_train.jsonl manifests "
                        "or NAME/train/<class>/ image folders)")
    found = {f.name: f for f in _manifests(root)}
    for f in _folders(root, skip=_image_dirs(root)):
        if f.name in found:
            found[f.name].notes.append(f"{f.name}/ is also an image folder; the manifest is used")
        else:
            found[f.name] = f
    if not found:
        raise DataError(f"{root}: no dataset found (expected NAME_train.jsonl manifests, or NAME/train/<class>/ "
                        f"or NAME/<class>/ folders of {', '.join(IMG_EXTENSIONS[:3])}... images)")
    return [found[k] for k in sorted(found)]


def _manifests(root: Path) -> list[Found]:
    out = []
    for train in sorted(root.glob("*_train.jsonl")):
        name = train.name[: -len("_train.jsonl")]
        labels, samples = _labels(train)
        val = root / f"{name}_val.jsonl"
        if val.is_file():
            labels |= _labels(val)[0]
        entry = {"num_classes": 0, "train": train.name}
        if val.is_file():
            entry["val"] = val.name
        f = Found(name, entry, "manifest", samples)
        if not labels:
            raise DataError(f"{train}: no integer labels found (expected one JSON object a line with "
                            "an integer 'label')")
        lo, hi = min(labels), max(labels)
        if lo >= 1 and 0 not in labels and hi == len(labels):
            f.notes.append(f"{train.name}: labels run {lo}..{hi}: 1-based? classes set to {hi}; "
                           "`stablesweep data check` will name the lines to fix")
            entry["num_classes"] = hi
        else:
            entry["num_classes"] = hi + 1
        out.append(f)
    return out


def _image_dirs(root: Path) -> set[str]:
    """The top folders the manifests' images live in (not datasets of their own)."""
    dirs = set()
    for manifest in root.glob("*.jsonl"):
        with manifest.open() as fh:
            for line in fh:
                try:
                    image = json.loads(line).get("image")
                except (ValueError, AttributeError):
                    continue
                if isinstance(image, str) and len(Path(image).parts) > 1:
                    dirs.add(Path(image).parts[0])
                break
    return dirs


def _labels(path: Path) -> tuple[set[int], int]:
    labels, n = set(), 0
    with path.open() as fh:
        for line in fh:
            if not line.strip():
                continue
            n += 1
            try:
                label = json.loads(line).get("label")
            except (ValueError, AttributeError):
                continue  # `data check` names the bad line
            if isinstance(label, int) and not isinstance(label, bool):
                labels.add(label)
    return labels, n


def _classes(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(d: Path) -> int:
    return sum(1 for p in d.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)


def _folders(root: Path, skip: set[str]) -> list[Found]:
    out = []
    for d in _classes(root):
        if d.name in skip:
            continue
        if (d / "train").is_dir():
            train, val = d / "train", d / "val"
        elif _classes(d) and not any((d / s).is_dir() for s in ("train", "val")):
            train, val = d, None
        else:
            continue
        classes = _classes(train)
        samples = _images(train)
        if not classes or not samples:
            continue
        entry = {"num_classes": len(classes), "train": str(train.relative_to(root))}
        if val is not None and val.is_dir():
            entry["val"] = str(val.relative_to(root))
        out.append(Found(d.name, entry, "folder", samples))
    return out
