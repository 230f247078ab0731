"""`stablesweep data synth|check|cache|bench`: write a synthetic multi-dataset as real files; check
labels and files; build the decoded-image cache ahead of a sweep; measure the input pipeline."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from stablesweep.commands.args import add_set_argument

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

CACHE_EPILOG = """\
examples:
  stablesweep data cache my.yaml                         # into data.cache (auto: ~/.cache/stablesweep/images)
  stablesweep data cache my.yaml --set data.cache=/scratch/cache --set data.image_size=224

Decodes every image of every manifest/folder split the config trains or evaluates on, once, at
data.image_size, into one memory-mapped file a split; every run and sweep trial on this machine then
reads those (run it on each node of a cluster, or point data.cache at node-local disk). Built
atomically under a lock: trials that start while it builds wait for it. Set STABLESWEEP_CACHE_DIR
to move the auto directory.
"""

BENCH_EPILOG = """\
examples:
  stablesweep data bench my.yaml                         # the input pipeline alone, cache cold and warm
  stablesweep data bench my.yaml --model --steps 60     # and the whole training step

Prints images/s of the input pipeline (batches on the device, normalised), decoding the files (cold)
and from the decoded-image cache (warm, built first if it is not there); with --model, of the whole
guarded training step, cold and warm; then what to change if the input is the bottleneck.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="write synthetic data, check labels and images, cache decoded images, "
                                    "measure the input",
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
    k = dsub.add_parser("cache", help="decode every image once into the decoded-image cache (ahead of a sweep)",
                        description="Build the decoded-image cache of a config's manifest and folder datasets.",
                        epilog=CACHE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    k.add_argument("config", help="training config YAML")
    add_set_argument(k)
    k.add_argument("--workers", type=int, default=None, help="decoding processes (default: every core)")
    k.add_argument("--rebuild", action="store_true", help="build again even where a valid cache is there")
    k.set_defaults(func=run_cache)
    b = dsub.add_parser("bench", help="images/s of the input pipeline (and of the training step)",
                        description="Measure whether the input keeps up with training, cache cold and warm.",
                        epilog=BENCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("config", help="training config YAML")
    add_set_argument(b)
    b.add_argument("--model", action="store_true", help="also time the whole training step")
    b.add_argument("--steps", type=int, default=40,
                   help="batches (steps) a measurement; the second half is timed (default 40)")
    b.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where batches go (default: auto = cuda when there is one)")
    b.set_defaults(func=run_bench)


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
    print(report.format(on_bad_label=cfg.loss.on_bad_label))  # the table, then each problem once, by file
    if report.ok(cfg.loss.on_bad_label):
        print("labels and images: ok")
        return 0
    return 1


def _progress(src):
    """A progress bar for one cache build: tqdm when it is installed, else a printed line every 10%."""
    try:
        from tqdm import tqdm
    except ImportError:
        last = [-1]

        def plain(done: int, total: int) -> None:
            tenth = 10 * done // total
            if tenth != last[0]:
                last[0] = tenth
                print(f"  {src.dataset} {src.split}: {done}/{total} images", flush=True)
        return plain
    bar = tqdm(total=len(src), desc=f"{src.dataset} {src.split}", unit="img")

    def update(done: int, total: int) -> None:
        bar.update(done - bar.n)
        if done == total:
            bar.close()
    return update


def run_cache(args: argparse.Namespace) -> int:
    from stablesweep.config import ConfigError, load_config
    from stablesweep.data import build_data
    from stablesweep.data.cache import size_text

    cfg = load_config(args.config, args.overrides)
    if cfg.data.cache == "off":
        raise ConfigError(f"{args.config}: data.cache is off: set it to auto or a directory "
                          f"(--set data.cache=auto)")
    if args.workers is not None and args.workers < 0:
        raise ConfigError(f"--workers: must be 0 or more, got {args.workers}")
    data = build_data(cfg, cache=False)  # every label and image checked first
    t0 = time.perf_counter()
    s = data.use_cache(build=True, log=print, workers=args.workers, progress=_progress, rebuild=args.rebuild,
                       strict=True)
    total = s["read"] + s["built"]
    if not total:
        print("nothing to cache: the config has no manifest or folder datasets (synthetic data is not cached)")
        return 0
    print(f"cache: {s['directory']}: {total} split(s), {size_text(s['bytes'])}; built {s['built']} "
          f"in {time.perf_counter() - t0:.1f} s, {s['read']} already there")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    import os

    from stablesweep.config import ConfigError, config_from_dict, load_config
    from stablesweep.data import build_data
    from stablesweep.throughput import advice, measure_input, measure_training
    from stablesweep.train import resolve_device

    cfg = load_config(args.config, args.overrides)
    if args.steps < 4:
        raise ConfigError(f"--steps: must be at least 4, got {args.steps}")
    device = str(resolve_device(args.device))
    t = cfg.training
    cores = len(os.sched_getaffinity(0))
    data = build_data(cfg, cache=False)
    print(f"{cfg.source}: {data.train_size} train images, {cfg.data.image_size} px, batch {t.batch_size}, "
          f"training.num_workers {t.num_workers} ({cores} cores here), {device}")
    rows = [("input, decoding the files (cache cold)", measure_input(data, cfg, device, steps=args.steps))]
    print(f"  {rows[-1][0]}: {rows[-1][1]:,.0f} images/s", flush=True)
    warm = None
    if cfg.data.cache != "off":
        s = data.use_cache(build=True, log=print)
        if s["read"] + s["built"]:
            warm = measure_input(data, cfg, device, steps=args.steps)
            rows.append(("input, from the cache (warm)", warm))
            print(f"  {rows[-1][0]}: {warm:,.0f} images/s", flush=True)
    step = None
    if args.model:
        off = config_from_dict(cfg.to_dict(), ["data.cache=off"], source=cfg.source, base_dir=cfg.base_dir)
        cold_step, _ = measure_training(off, device, steps=args.steps)
        rows.append(("training step, decoding the files (cache cold)", cold_step))
        print(f"  {rows[-1][0]}: {cold_step:,.0f} images/s", flush=True)
        step = cold_step
        if warm is not None:
            step, _ = measure_training(cfg, device, steps=args.steps)
            rows.append(("training step, from the cache (warm)", step))
            print(f"  {rows[-1][0]}: {step:,.0f} images/s", flush=True)
    print()
    print("| what | images/s |")
    print("|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} |")
    print()
    for line in advice(rows[0][1], warm, step, t.num_workers, cores, cfg.data.cache):
        print(line)
    return 0


