"""`stablesweep data synth|check`: write a synthetic multi-dataset as real files; check labels and files."""
from __future__ import annotations

import argparse
from pathlib import Path

SYNTH_EPILOG = """\
examples:
  stablesweep data synth --out data/synth --scale 0.02      # 56 classes, a few seconds
  stablesweep data synth --out data/full                    # all 2816 classes (about 56k PNGs)
  stablesweep train data/synth/config.yaml

Writes OUT/images/<dataset>/<split>/<n>.png, one JSONL manifest per dataset and split
(OUT/<dataset>_train.jsonl: {"image": "images/...png", "label": <local int>}) and OUT/config.yaml,
a training config over those manifests. The images carry class structure a small CNN learns.
"""

CHECK_EPILOG = """\
Checks every manifest line of every dataset before any training: labels in [0, num_classes)
(file and line named; 1-based labels recognised), missing or unreadable images, ImageFolder class
counts. Prints count, min, max and distinct labels per dataset and split.
Exit status: 0 clean, 1 problems found, 2 the config cannot be read.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="write synthetic data, check a config's labels and images",
                       description="Data utilities.")
    dsub = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    s = dsub.add_parser("synth", help="write a synthetic multi-dataset (PNG + JSONL + config)",
                        description="Write the six food datasets of the incident as synthetic PNG "
                                    "images with JSONL manifests and a matching config.",
                        epilog=SYNTH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--out", required=True, metavar="DIR", help="folder to write into")
    s.add_argument("--scale", type=float, default=1.0,
                   help="scale the class counts (101, 172, 251, 2000, 92, 200); at least 2 each (default 1.0)")
    s.add_argument("--per-class", type=int, default=16, help="train images a class (val: a quarter; default 16)")
    s.add_argument("--image-size", type=int, default=32, help="square image side in pixels (default 32)")
    s.add_argument("--seed", type=int, default=1234, help="generator seed (default 1234)")
    s.add_argument("--force", action="store_true",
                   help="write into an --out that is not empty (its manifests and config.yaml are overwritten)")
    s.set_defaults(func=run_synth)
    c = dsub.add_parser("check", help="pre-flight check of every label and image of a config",
                        description="Validate every manifest of a config without training.",
                        epilog=CHECK_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("config", help="training config YAML")
    c.add_argument("--images", choices=["none", "header", "full"], default=None,
                   help="how far to open images (default: the config's data.verify_images)")
    c.set_defaults(func=run_check)


def run_synth(args: argparse.Namespace) -> int:
    from stablesweep.config import ConfigError, check_output_dir
    from stablesweep.data import write_synthetic

    out = check_output_dir(args.out)
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise ConfigError(f"--out {args.out}: not empty (its manifests or config.yaml may be yours); pass --force "
                          "to overwrite them, or another --out")

    try:
        path = write_synthetic(args.out, args.scale, per_class=args.per_class, image_size=args.image_size,
                               seed=args.seed)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    print(f"wrote {Path(args.out)}: images, manifests and {path}")
    print(f"next: stablesweep train {path}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from stablesweep.config import load_config
    from stablesweep.data import DataError, build_data

    overrides = [f"data.verify_images={args.images}"] if args.images else []
    cfg = load_config(args.config, overrides)
    try:  # train's own pre-flight: what it refuses, this reports
        report = build_data(cfg).report
    except DataError as e:
        if e.report is None:
            raise
        report = e.report
    print(report.format())
    if report.ok(cfg.loss.on_bad_label):
        print("labels and images: ok")
        return 0
    print(report.format_problems(on_bad_label=cfg.loss.on_bad_label))
    return 1
