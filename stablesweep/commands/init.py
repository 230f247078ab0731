"""`stablesweep init DATA_DIR`: a starting config for a folder of datasets."""
from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
examples:
  stablesweep init data/mine                     # writes data/mine/config.yaml
  stablesweep init data/mine --out my.yaml --model resnet18 --image-size 128

Each dataset in DATA_DIR is one of:
  NAME_train.jsonl (+ NAME_val.jsonl)   JSONL manifests: {"image": "relative/path.jpg", "label": 0}
  NAME/train/<class>/*.jpg (+ NAME/val/<class>/...), or NAME/<class>/*.jpg   image folders
Classes are counted from the labels (max + 1) or the class folders. The config trains every dataset
at once with one head over all their classes, each sample's loss over its own dataset's classes.

Then, in this order:
  stablesweep data check CONFIG     every label and image, before training
  stablesweep diagnose CONFIG       the config's settings against the incident's known causes
  stablesweep ramp CONFIG           the largest stable lr, and a recommended config
  stablesweep train RECOMMENDED     train it
Exit status: 0 written, 2 no dataset found or CONFIG exists (--force replaces it).
"""

HEADER = """\
# Written by `stablesweep init {root}` for {n} dataset(s). Relative paths resolve from this file's
# folder. Next: `stablesweep data check {config}`, then `stablesweep ramp {config}`.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="write a starting config for a folder of datasets",
                       description="Write a starting training config for the datasets in a folder.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data_dir", metavar="DATA_DIR", help="the folder of datasets (manifests or image folders)")
    p.add_argument("--out", default=None, metavar="CONFIG", help="where to write it (default DATA_DIR/config.yaml)")
    p.add_argument("--model", default="resnet18",
                   help="a torchvision model name, small_cnn, or timm:NAME (default resnet18)")
    p.add_argument("--image-size", type=int, default=64, metavar="PX", help="image side in pixels (default 64)")
    p.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--force", action="store_true", help="replace CONFIG if it exists")
    p.set_defaults(func=run)


def starting_config(found: list, *, model: str, image_size: int, steps: int, batch_size: int) -> dict:
    """The config of the datasets found (`data.discover`): AdamW at lr 1e-3 with clipping, a short
    warm-up and cosine decay, fp32 (bf16 where a GPU trains it), the per-dataset slice loss."""
    return {
        "training": {"lr": 1.0e-3, "max_grad_norm": 1.0, "precision": "fp32", "steps": steps,
                     "batch_size": batch_size, "optimizer": "adamw", "warmup_steps": max(1, steps // 20),
                     "schedule": "cosine", "seed": 0, "report_interval": max(1, min(50, steps // 10))},
        "datasets": {"enable_logits_masking": len(found) > 1,
                     "dataset_configs": {f.name: f.entry for f in found}},
        "loss": {"type": "cross_entropy", "masking": "slice" if len(found) > 1 else "none"},
        "model": {"name": model},
        "data": {"image_size": image_size},
    }


def run(args: argparse.Namespace) -> int:
    import yaml

    from stablesweep.data.discover import discover
    from stablesweep.vocab import InputError

    root = Path(args.data_dir)
    out = Path(args.out) if args.out else root / "config.yaml"
    if out.exists() and not args.force:
        raise InputError(f"{out} exists; pass --force to replace it, or --out another path")
    for flag, v in (("--image-size", args.image_size), ("--steps", args.steps), ("--batch-size", args.batch_size)):
        if v < 1:
            raise InputError(f"{flag} {v}: must be at least 1")
    found = discover(root)
    # paths in the config resolve from its own folder
    rel = Path(_relpath(root.resolve(), out.resolve().parent))
    for f in found:
        for split in ("train", "val"):
            if split in f.entry:
                f.entry[split] = str(rel / f.entry[split]) if str(rel) != "." else f.entry[split]
    samples = sum(f.samples for f in found)
    batch = args.batch_size
    if samples < batch:  # a batch is never larger than the train set (batches drop the remainder)
        batch = 1 << (samples.bit_length() - 1)
        print(f"note: {samples} train samples in all: batch_size {batch}, not {args.batch_size}")
    cfg = starting_config(found, model=args.model, image_size=args.image_size, steps=args.steps,
                          batch_size=batch)
    from stablesweep.config import config_from_dict

    config_from_dict(cfg, source=str(out), base_dir=str(out.resolve().parent))  # the schema's own checks
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    body = "".join(yaml.safe_dump({k: v}, sort_keys=False, default_flow_style=None if k == "datasets" else False)
                   for k, v in cfg.items())  # a dataset a line, every other key on its own
    tmp.write_text(HEADER.format(root=args.data_dir, n=len(found), config=out) + body)
    tmp.replace(out)
    total = sum(f.entry["num_classes"] for f in found)
    print(f"{out}: {len(found)} dataset(s), {total} classes in all")
    for f in found:
        print(f"  {f.name:<16} {f.kind:<8} {f.entry['num_classes']:>5} classes  {f.samples} train samples")
        for note in f.notes:
            print(f"    note: {note}")
    print(f"next: stablesweep data check {out}")
    return 0


def _relpath(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path, start)
