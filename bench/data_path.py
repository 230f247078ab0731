"""Real image files at GPU speed: the input pipeline against a bare loop, from JPEG manifests it makes.

    python bench/data_path.py [--workers 12] [--steps 100] [--no-sweep]     # on a GPU machine
    python bench/data_path.py --small                                      # a CPU smoke run, a minute

Writes six JPEG manifests (the six food datasets with their class counts, 2816 classes; 1,200
JPEGs of 512x384 each, 7,200 in all) into a temporary directory, then times, each over the second
half of --steps steps (a steady state), with the same model (ResNet-50, 224 px, bf16, batch 256,
fused AdamW) in the same process:

  bare         the training step alone: one batch already on the GPU, stepped again and again
  hand-written a plain torchvision pipeline: Dataset with PIL (Resize, ToTensor, Normalize),
               DataLoader(--workers, pin_memory), .to(device, non_blocking) and the same plain step
  stablesweep  `stablesweep train`'s Trainer on the manifests (the guarded step), --workers workers:
               data.cache off (decoding the JPEGs), cache cold (the run builds it first: its build time
               is shown) and warm (a second run reads it)
  input alone  the input pipeline without a model, batches on the device: the hand-written pipeline,
               stablesweep decoding, stablesweep from the warm cache, at equal workers
  packed       (Ray installed) a 4-trial sweep with --gpus-per-trial 0.25 against 1 trial a GPU, from
               the same manifests through the warm cache: trials/hour

Prints one markdown table: images/s and % of bare.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from stablesweep.config import FOOD_DATASETS, config_from_dict  # noqa: E402
from stablesweep.data import build_data  # noqa: E402
from stablesweep.data.images import MEAN, STD  # noqa: E402
from stablesweep.model import build_model  # noqa: E402
from stablesweep.stability.precision import make_optimizer  # noqa: E402
from stablesweep.throughput import measure_input, measure_training  # noqa: E402

GRID = 8  # the images: a per-class low-frequency colour pattern plus noise, so JPEGs look like photos in size


def _jpeg(job: tuple[str, int, int, int, int]) -> None:
    path, cls, index, w, h = job
    rng = np.random.default_rng([cls, index])
    base = np.random.default_rng(cls).uniform(0, 255, (GRID, GRID * w // h, 3)).astype(np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.int16) + rng.normal(0, 12, (h, w, 3)).astype(np.int16)
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def make_manifests(out: Path, per_dataset: int, width: int, height: int, procs: int) -> dict:
    """Six JPEG manifests (labels spread over each dataset's classes); the datasets' config entries."""
    jobs, dcs, offset = [], {}, 0
    for name, nc in FOOD_DATASETS.items():
        (out / name).mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(per_dataset):
            label = (i * 7919) % nc
            rel = f"{name}/{i}.jpg"
            jobs.append((str(out / rel), offset + label, i, width, height))
            lines.append(json.dumps({"image": rel, "label": label}))
        (out / f"{name}_train.jsonl").write_text("\n".join(lines) + "\n")
        dcs[name] = {"num_classes": nc, "train": f"{name}_train.jsonl"}
        offset += nc
    with Pool(procs) as pool:
        pool.map(_jpeg, jobs, chunksize=64)
    return dcs


# ---- the plain loops --------------------------------------------------------------------------

class Plain:
    """The model and a plain step (autocast, cross entropy over all classes, backward, fused AdamW)."""

    def __init__(self, cfg, device: torch.device):
        torch.manual_seed(0)
        self.device = device
        self.cuda = device.type == "cuda"
        total = sum(d.num_classes for d in cfg.datasets.dataset_configs.values())
        self.model = build_model(cfg.model, total, cfg.source).to(device)
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = make_optimizer("adamw", list(self.model.parameters()), lr=1e-4, weight_decay=0.0, momentum=0.9,
                                  betas=(0.9, 0.999))
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.training.precision)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if self.cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            logits = self.model(images)
        F.cross_entropy(logits.float(), labels).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def timed(batches, steps: int, device: torch.device, work) -> float:
    """Images a second over the second half of `steps` batches, each handed to `work`."""
    half = steps // 2
    for _ in range(steps - half):
        work(*next(batches))
    sync(device)
    t0, n = time.perf_counter(), 0
    for _ in range(half):
        images, labels = next(batches)
        work(images, labels)
        n += len(labels)
    sync(device)
    return n / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class HandWritten(torch.utils.data.Dataset):
    """What a user writes: PIL, torchvision transforms, float32 normalised tensors."""

    def __init__(self, items: list[tuple[str, int]], size: int):
        from torchvision import transforms as T

        self.items = items
        self.tf = T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        with Image.open(path) as im:
            return self.tf(im.convert("RGB")), label


def hand_written_batches(cfg, device: torch.device, workers: int):
    items, offset = [], 0
    for name, d in cfg.datasets.dataset_configs.items():
        manifest = cfg.resolve_path(d.train)
        for line in manifest.read_text().splitlines():
            row = json.loads(line)
            items.append((str(manifest.parent / row["image"]), offset + row["label"]))
        offset += d.num_classes
    t = cfg.training
    loader = torch.utils.data.DataLoader(
        HandWritten(items, cfg.data.image_size), batch_size=t.batch_size, shuffle=True, drop_last=True,
        num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0))

    def forever():
        while True:
            for images, labels in loader:
                yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
    return forever()


# ---- the rows -----------------------------------------------------------------------------------

def free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def packed_sweep(cfg_path: Path, overrides: list[str], trials: int, steps: int, cpus: float,
                 log) -> list[tuple[str, float, str]]:
    """A sweep of `trials` trials at 1 and at 0.25 GPU a trial: trials/hour of each (rows to print).
    The cache of the sweep's image size is built first, as `stablesweep data cache` does before a sweep."""
    try:
        import ray  # noqa: F401

        from stablesweep.sweep.runner import SweepOptions, run_sweep
    except ImportError as e:
        log(f"packed sweep: skipped ({e.name} is not installed here)")
        return [("packed sweep", float("nan"), f"skipped: {e.name} is not installed")]
    import yaml

    from stablesweep.config import load_config

    t0 = time.time()
    s = build_data(load_config(cfg_path, overrides), cache=False).use_cache(build=True)
    log(f"packed sweep: cache of {overrides}: {s['built']} built, {s['read']} read, {time.time() - t0:.0f} s")
    space = cfg_path.parent / "space.yaml"
    lrs = [1e-5 * (1.5 ** i) for i in range(trials)]
    space.write_text(yaml.safe_dump({"training.lr": {"grid": lrs}}))
    rows = []
    for frac in (1.0, 0.25):
        opts = SweepOptions(config=str(cfg_path), space=str(space), sampler="grid", samples=trials, steps=steps,
                            gpus_per_trial=frac, cpus_per_trial=cpus, asha=False, out=str(cfg_path.parent / "sweeps"),
                            name=f"packed-{frac:g}", overrides=overrides)
        t0 = time.time()
        res = run_sweep(opts, echo=lambda s: None)
        wall = time.time() - t0
        per_hour = len(res.table) / wall * 3600
        log(f"packed sweep, {frac:g} GPU a trial: {len(res.table)} trials in {wall:.0f} s: {res.counts}")
        rows.append((f"sweep, {frac:g} GPU a trial ({trials} trials of {steps} steps)", per_hour,
                     f"trials/hour; {wall:.0f} s wall; {', '.join(f'{k} {v}' for k, v in res.counts.items() if v)}"))
    if len(rows) == 2 and rows[0][1]:
        rows.append(("packed / 1 GPU a trial", rows[1][1] / rows[0][1], "x trials/hour"))
    return rows


def peak(device: torch.device) -> str:
    """The peak GPU memory allocated since the last call (then reset), as a note: the bare step frees
    its gradients (set_to_none), stablesweep's one-graph step keeps them between steps."""
    if device.type != "cuda":
        return ""
    gib = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return f"peak {gib:.1f} GiB"


def image_rows(args, cfg, off, device: torch.device, batch: int, size: int, row) -> None:
    """bare, hand-written, stablesweep train (cache off, cold, warm), input alone; peak memory of
    the training rows."""
    cache = Path(os.environ["STABLESWEEP_CACHE_DIR"])
    peak(device)
    plain = Plain(cfg, device)
    g = torch.Generator().manual_seed(0)
    one = (torch.randn(batch, 3, size, size, generator=g).to(device),
           torch.randint(0, 2816, (batch,), generator=g).to(device))
    row("bare: the batch already on the device", timed(itertools.repeat(one), args.steps, device, plain.step),
        peak(device))
    row(f"hand-written torchvision pipeline, {args.workers} workers, pin_memory",
        timed(hand_written_batches(cfg, device, args.workers), args.steps, device, plain.step), peak(device))
    del plain, one
    free(device)
    rate, setup = measure_training(off, str(device), steps=args.steps)
    row(f"stablesweep train, data.cache off (decoding), {args.workers} workers", rate,
        ", ".join(filter(None, [f"set-up {setup:.0f} s", peak(device)])))
    free(device)
    rate, setup = measure_training(cfg, str(device), steps=args.steps)
    built = any(cache.glob("*.u8"))
    row("stablesweep train, cache cold (the run builds it)", rate,
        ", ".join(filter(None, [f"set-up {setup:.0f} s",
                                 "the cache build included" if built else "NO cache was built", peak(device)])))
    free(device)
    rate, setup = measure_training(cfg, str(device), steps=args.steps)
    row("stablesweep train, cache warm", rate, ", ".join(filter(None, [f"set-up {setup:.0f} s", peak(device)])))
    free(device)
    hand = timed(hand_written_batches(cfg, device, args.workers), args.steps, device, lambda x, y: None)
    row(f"input alone: hand-written pipeline, {args.workers} workers", hand)
    data = build_data(cfg, cache=False)
    row(f"input alone: stablesweep decoding, {args.workers} workers", measure_input(data, off, str(device),
                                                                                   steps=args.steps))
    data.use_cache(build=True)
    warm = measure_input(data, cfg, str(device), steps=args.steps)
    row(f"input alone: stablesweep from the warm cache, {args.workers} workers", warm,
        f"{warm / hand:.1f}x the hand-written pipeline")
    del data
    free(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="tiny sizes for a CPU smoke run")
    ap.add_argument("--workers", type=int, default=12, help="loader workers of every pipeline (default 12)")
    ap.add_argument("--steps", type=int, default=100, help="steps a measurement; the second half is timed")
    ap.add_argument("--no-sweep", action="store_true", help="leave out the packed-sweep rows")
    ap.add_argument("--sweep-only", action="store_true", help="only the packed-sweep rows")
    ap.add_argument("--sweep-trials", type=int, default=8)
    ap.add_argument("--sweep-steps", type=int, default=150)
    ap.add_argument("--sweep-set", action="append", default=None, metavar="KEY=VALUE",
                    help="the sweep's trials: overrides of the bench config (default: model.name=resnet18, "
                         "data.image_size=64, training.batch_size=128, training.num_workers=3: a step that does "
                         "not fill an H200, as in bench/sweep_packing.py)")
    ap.add_argument("--keep", metavar="DIR", default=None, help="write the JPEGs and caches here and keep them")
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.small
    device = torch.device("cuda" if cuda else "cpu")
    if args.small:
        args.workers, args.steps = min(args.workers, 2), min(args.steps, 8)
        args.sweep_trials, args.sweep_steps = min(args.sweep_trials, 2), min(args.sweep_steps, 6)
        per, w, h = 20, 64, 48  # 8 steps of 16 read the 120 images once: data.cache auto builds
        model, size, batch, precision = "small_cnn", 32, 16, "fp32"
    else:
        per, w, h = 1200, 512, 384
        model, size, batch, precision = "resnet50", 224, 256, "bf16" if cuda else "fp32"
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="data-path-"))
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "cache", ignore_errors=True)  # cold
    os.environ["STABLESWEEP_CACHE_DIR"] = str(work / "cache")
    log = lambda s: print(f"# {s}", flush=True)  # noqa: E731
    procs = len(os.sched_getaffinity(0))
    t0 = time.time()
    dcs = make_manifests(work / "data", per, w, h, procs)
    log(f"{6 * per} JPEGs of {w}x{h} in {work / 'data'} ({time.time() - t0:.0f} s)")
    raw = {"training": {"lr": 1e-4, "max_grad_norm": 1.0, "precision": precision, "steps": args.steps,
                        "batch_size": batch, "num_workers": args.workers, "report_interval": 10, "optimizer": "adamw"},
           "datasets": {"enable_logits_masking": True, "skip_evaluation": True, "dataset_configs": dcs},
           "loss": {"type": "cross_entropy", "masking": "slice"},
           "model": {"name": model}, "data": {"image_size": size, "cache": "auto"},
           "monitor": {"stop_on_divergence": False}}
    cfg_path = work / "data" / "config.yaml"
    cfg = config_from_dict(raw, source=str(cfg_path), base_dir=str(cfg_path.parent))
    cfg_path.write_text(cfg.to_yaml())
    off = config_from_dict(raw, ["data.cache=off"], source=str(cfg_path), base_dir=str(cfg_path.parent))
    rows: list[tuple[str, float, str]] = []

    def row(name: str, rate: float, note: str = "") -> None:
        rows.append((name, rate, note))
        log(f"{name}: {rate:,.0f} images/s {note}")

    if not args.sweep_only:
        image_rows(args, cfg, off, device, batch, size, row)
    if not args.no_sweep:
        if cuda:
            sweep_set = args.sweep_set or ["model.name=resnet18", "data.image_size=64", "training.batch_size=128",
                                           "training.num_workers=3"]
            rows += packed_sweep(cfg_path, sweep_set + [f"data.cache={work / 'cache'}"], args.sweep_trials,
                                 args.sweep_steps, max(1.0, procs / 4), log)
        else:
            rows.append(("packed sweep", float("nan"), "skipped: needs a GPU"))
    bare = rows[0][1] if rows and rows[0][0].startswith("bare") else float("nan")
    name = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    print(f"\n`python bench/data_path.py {' '.join(sys.argv[1:])}`; {datetime.date.today()}; {name}, {procs} cores, "
          f"torch {torch.__version__}; {model}, {size} px, {precision}, batch {batch}, 2816 classes, "
          f"{6 * per} JPEGs of {w}x{h}; {args.steps} steps a row, the second half timed\n")
    print("| loop | images/s | of bare | notes |")
    print("|---|---|---|---|")
    for what, rate, note in rows:
        if what.startswith(("sweep", "packed")):
            shown = "-" if rate != rate else (f"{rate:.2f}x" if what.startswith("packed") else f"{rate:,.0f}")
            print(f"| {what} | {shown} | | {note} |")
        else:
            print(f"| {what} | {rate:,.0f} | {100 * rate / bare:.0f}% | {note} |")


if __name__ == "__main__":
    main()
