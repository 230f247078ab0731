"""The headline: one stability question answered the hand-written way and the stablesweep way.

    python bench/headline.py                          # on a GPU node: the table for docs/benchmarks.md
    python bench/headline.py --device cpu --tiny      # a check that it runs, on CPU (a few minutes)

Both sweeps answer "up to which lr does ResNet-50 train on the six food datasets, with and without
gradient clipping?" over the same lrs, clips and step budget, on the same JPEG manifests (the six
food datasets at their class counts, 2816 classes, written by the bench as 512x384 JPEGs):

  hand-written  what a user writes in an afternoon: a Ray Tune function trainable with a torchvision
                loop (a PIL Dataset in a DataLoader, bf16 autocast on CUDA, AdamW, clip_grad_norm_,
                the other datasets' logits masked with -1e9, no guard), OptunaSearch told the same
                points the grid has, ASHA on the loss, 1 GPU a trial, the loss reported every interval
  stablesweep   `stablesweep sweep --sampler grid` on the same manifests: the decode cache, trials
                packed --gpus-per-trial a GPU, the guarded step, verdicts, the divergence stopper

Columns: wall seconds to the whole answer (the command's start to its table), trials/hour, GPU
seconds spent after a trial's first non-finite loss (from the report that showed it to the trial's
end, times the trial's GPUs), trials whose verdict is wrong or missing (a hand-written trial has no
verdict: one that met a non-finite loss reported it as a number and ran on; a stablesweep trial is
wrong when its history shows a non-finite loss but its verdict is not `diverged`), and the stable
region each finds: per clip, the largest lr that trained (hand-written: its final loss finite and
below its first report; stablesweep: `max_stable_lr`).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---- the hand-written sweep ------------------------------------------------------------------

def hand_written_trainable(config: dict) -> None:
    """A plain torchvision loop, as written by hand: no guard, the loss reported as it comes."""
    import torch.nn.functional as F
    import torchvision
    from PIL import Image
    from ray import tune
    from torchvision import transforms as T

    data = config["data"]
    device = torch.device("cuda" if torch.cuda.is_available() and data["device"] == "cuda" else "cpu")
    torch.manual_seed(data["seed"])
    items, allowed = data["items"], torch.tensor(data["allowed"], device=device)  # [datasets, classes]
    tf = T.Compose([T.Resize((data["size"], data["size"])), T.ToTensor(), T.Normalize(MEAN, STD)])

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(items)

        def __getitem__(self, i):
            path, label, ds = items[i]
            with Image.open(path) as im:
                return tf(im.convert("RGB")), label, ds

    loader = torch.utils.data.DataLoader(Images(), batch_size=data["batch"], shuffle=True, drop_last=True,
                                         num_workers=data["workers"], pin_memory=device.type == "cuda",
                                         persistent_workers=data["workers"] > 0)
    model = getattr(torchvision.models, data["model"])(num_classes=allowed.shape[1]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"])
    amp = device.type == "cuda" and data["precision"] == "bf16"
    step = 0
    while step < data["steps"]:
        for images, labels, ds in loader:
            images, labels, ds = (t.to(device, non_blocking=True) for t in (images, labels, ds))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(images)
            logits = logits.float().masked_fill(~allowed[ds], -1e9)
            loss = F.cross_entropy(logits, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config["clip"]:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config["clip"])
            opt.step()
            step += 1
            if step % data["interval"] == 0 or step == data["steps"]:
                tune.report({"loss": loss.item(), "step": step})
            if step >= data["steps"]:
                break


def hand_written_sweep(args, datasets: dict, root: Path, points: list[dict]) -> tuple[float, pd.DataFrame]:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    items, allowed, offset = [], [], 0
    total = sum(d["num_classes"] for d in datasets.values())
    for i, (name, d) in enumerate(datasets.items()):
        for line in (root / d["train"]).read_text().splitlines():
            row = json.loads(line)
            items.append((str(root / row["image"]), offset + row["label"], i))
        allowed.append([offset <= c < offset + d["num_classes"] for c in range(total)])
        offset += d["num_classes"]
    data = {"items": items, "allowed": allowed, "size": args.size, "batch": args.batch, "model": args.model,
            "steps": args.steps, "interval": args.interval, "workers": args.workers, "seed": 0,
            "precision": args.precision, "device": args.device}
    lrs = [p["lr"] for p in points]
    space = {"lr": tune.loguniform(min(lrs), max(lrs)), "clip": tune.choice(sorted({p["clip"] for p in points})),
             "data": data}
    gpus = 1 if args.device == "cuda" else 0
    t0 = time.time()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    try:
        tuner = tune.Tuner(
            tune.with_resources(hand_written_trainable, {"cpu": args.cpus_per_trial, "gpu": gpus}),
            param_space=space,
            tune_config=tune.TuneConfig(
                search_alg=OptunaSearch(points_to_evaluate=[dict(p) for p in points], seed=0),
                scheduler=ASHAScheduler(max_t=args.steps // args.interval, grace_period=2),
                metric="loss", mode="min", num_samples=len(points)),
            run_config=tune.RunConfig(storage_path=str(root / "hand"), name="hand", verbose=0))
        results = tuner.fit()
        wall = time.time() - t0
    finally:
        ray.shutdown()
    rows = []
    for r in results:
        hist = r.metrics_dataframe if r.metrics_dataframe is not None else pd.DataFrame()
        rows.append(_history_row(r.config["lr"], r.config["clip"], hist, gpus, verdict=None))
    return wall, pd.DataFrame(rows)


def _history_row(lr: float, clip: float, hist: pd.DataFrame, gpus: float, verdict: str | None,
                 bad: pd.Series | None = None) -> dict:
    """One trial: seconds after its first non-finite loss, and whether it trained, from its reports."""
    loss = pd.to_numeric(hist.get("loss", pd.Series(dtype=float)), errors="coerce")
    bad = bad if bad is not None else ~loss.map(math.isfinite)
    after = 0.0
    if len(hist) and bad.any():
        first = int(bad.to_numpy().argmax())
        after = float(hist["time_total_s"].iloc[-1] - hist["time_total_s"].iloc[first])
    finite = len(loss) > 0 and math.isfinite(loss.iloc[-1])
    trained = finite and len(loss) > 1 and loss.iloc[-1] < loss.iloc[0]
    return {"lr": lr, "clip": clip, "verdict": verdict, "nonfinite": bool(bad.any()), "gpu_s_after": after * gpus,
            "trained": trained if verdict is None else verdict == "stable", "reports": len(hist)}


# ---- the stablesweep sweep -----------------------------------------------------------------------

def stablesweep_sweep(args, datasets: dict, root: Path, points: list[dict]) -> tuple[float, pd.DataFrame]:
    cfg = {"training": {"lr": points[0]["lr"], "max_grad_norm": None, "precision": args.precision,
                        "steps": args.steps, "batch_size": args.batch, "optimizer": "adamw", "warmup_steps": 0,
                        "schedule": "constant", "report_interval": args.interval,
                        "num_workers": args.workers},
           "datasets": {"enable_logits_masking": True, "dataset_configs": datasets},
           "loss": {"type": "cross_entropy", "masking": "slice"},
           "model": {"name": args.model}, "data": {"image_size": args.size}}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    lrs = sorted({p["lr"] for p in points})
    clips = sorted({p["clip"] for p in points})
    space = {"training.lr": {"grid": lrs}, "training.max_grad_norm": {"choice": [c or None for c in clips]}}
    (root / "space.yaml").write_text(yaml.safe_dump(space))
    gpus = args.gpus_per_trial if args.device == "cuda" else 0
    cmd = [sys.executable, "-m", "stablesweep", "sweep", str(root / "config.yaml"), "--space", str(root / "space.yaml"),
           "--sampler", "grid", "--no-asha", "--out", str(root / "ss"), "--name", "headline",
           "--cpus-per-trial", str(args.cpus_per_trial), "--gpus-per-trial", str(gpus)]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode not in (0, 1):
        sys.exit(f"stablesweep sweep failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    sweep = root / "ss" / "headline"
    trials = pd.read_csv(sweep / "trials.csv")
    rows = []
    for _, t in trials.iterrows():
        progress = sweep / f"trial_{t['trial_id']}" / "progress.csv"
        hist = pd.read_csv(progress) if progress.exists() else pd.DataFrame()
        bad = None
        if len(hist):
            loss = pd.to_numeric(hist["loss"], errors="coerce")
            bad = (~loss.map(math.isfinite)) | (hist.get("nonfinite_steps", 0) > 0)
        clip = t["training.max_grad_norm"]
        rows.append(_history_row(t["training.lr"], 0.0 if pd.isna(clip) else float(clip), hist, gpus,
                                 verdict=t["verdict"], bad=bad))
    region = json.loads((sweep / "stable_region.json").read_text())
    return wall, pd.DataFrame(rows).assign(region=json.dumps(
        {g["label"]: g["max_stable_lr"] for g in region["groups"]}))


# ---- the table ------------------------------------------------------------------------------------

def summarise(name: str, wall: float, df: pd.DataFrame) -> dict:
    if name == "hand-written":
        wrong = int(df["nonfinite"].sum())  # a NaN/inf it reported as a number, and ran on
    else:
        wrong = int(((df["nonfinite"]) & (df["verdict"] != "diverged")).sum() + df["verdict"].isna().sum()
                    + (df["verdict"] == "error").sum())
    region = {}
    for clip, sub in df.groupby("clip"):
        ok = sub[sub["trained"]]
        region[f"clip={'none' if not clip else clip:g}" if clip else "clip=none"] = (
            f"{ok['lr'].max():.2g}" if len(ok) else "-")
    return {"sweep": name, "wall s": f"{wall:.0f}", "trials/hour": f"{len(df) / wall * 3600:.0f}",
            "GPU-s after first non-finite": f"{df['gpu_s_after'].sum():.1f}",
            "verdicts wrong or missing": f"{wrong}/{len(df)}",
            "max lr that trained, per clip": ", ".join(f"{k}: {v}" for k, v in region.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true", help="resnet18 at 32 px, few images and steps: a check that it runs")
    ap.add_argument("--per-dataset", type=int, default=None, help="JPEGs a dataset (default 600; --tiny 16)")
    ap.add_argument("--steps", type=int, default=None, help="steps a trial (default 300; --tiny 20)")
    ap.add_argument("--lrs", default=None, help="comma-separated lrs (default 8 from 1e-5 to 10; --tiny 1e-3,1e-1,1e2)")
    ap.add_argument("--gpus-per-trial", type=float, default=0.25, help="stablesweep's packing (default 0.25)")
    ap.add_argument("--keep", default=None, metavar="DIR", help="work in DIR and keep it (default: a temporary one)")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU here; --device cpu --tiny checks that the bench runs")
    tiny = args.tiny
    args.per_dataset = args.per_dataset or (16 if tiny else 600)
    args.steps = args.steps or (20 if tiny else 300)
    args.interval = 5 if tiny else 25
    args.model, args.size = ("resnet18", 32) if tiny else ("resnet50", 224)
    args.batch = 16 if tiny else 128
    args.precision = "bf16" if args.device == "cuda" else "fp32"
    args.cpus = os.cpu_count() or 2
    args.workers = 0 if tiny else 4
    args.cpus_per_trial = 1 if tiny else 4
    lrs = [float(x) for x in args.lrs.split(",")] if args.lrs else (
        [1e-3, 1e-1, 1e2] if tiny else [10 ** (-5 + 6 * i / 7) for i in range(8)])
    points = [{"lr": lr, "clip": clip} for lr in lrs for clip in (0.0, 1.0)]

    from data_path import make_manifests

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        w, h = (64, 48) if tiny else (512, 384)
        datasets = make_manifests(root, args.per_dataset, w, h, procs=min(8, args.cpus))
        print(f"{6 * args.per_dataset} JPEGs of {w}x{h}; {len(points)} trials of {args.steps} steps, "
              f"{args.model} at {args.size} px, {args.precision}, {args.device}", flush=True)
        rows = []
        wall, df = hand_written_sweep(args, datasets, root, points)
        rows.append(summarise("hand-written", wall, df))
        print(f"hand-written: {wall:.0f} s\n{_trials(df)}", flush=True)
        wall, df = stablesweep_sweep(args, datasets, root, points)
        rows.append(summarise("stablesweep", wall, df))
        print(f"stablesweep: {wall:.0f} s\n{_trials(df)}", flush=True)
    table = pd.DataFrame(rows)
    speedup = float(rows[0]["wall s"]) / max(float(rows[1]["wall s"]), 1e-9)
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or platform.machine()
    print(f"\n{time.strftime('%Y-%m-%d')}, {gpu}, torch {torch.__version__}\n")
    print(table.to_markdown(index=False) if _has_tabulate() else table.to_string(index=False))
    print(f"\nstablesweep reaches its answer {speedup:.2f}x sooner")


def _trials(df: pd.DataFrame) -> str:
    cols = ["lr", "clip", "verdict", "nonfinite", "trained", "reports", "gpu_s_after"]
    return df[cols].sort_values(["clip", "lr"]).to_string(index=False, float_format=lambda x: f"{x:.3g}")


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    main()
