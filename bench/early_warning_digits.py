"""False early warnings on stable runs of real images: sklearn's bundled handwritten digits.

    python bench/early_warning_digits.py [--seeds 3] [--models small_cnn,resnet18] [--steps 120]

No download: `sklearn.datasets.load_digits` (1,797 scanned 8x8 digits, in the package) split into
three datasets of one shared head (digits 0-3, 4-6, 7-9: 4 + 3 + 3 classes), upscaled to 32 px
(bicubic), written as PNG files with JSONL manifests (80% train, 20% val), trained on CPU with the
monitor's default thresholds (MonitorConfig) at the demo's recipe (AdamW, lr 3e-3, clip 1.0,
cosine, warmup 10). Per run: the verdict, each signal's largest value, and the first step each
crossed its threshold (a false warning when the run is stable).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stablesweep.config import load_config  # noqa: E402
from stablesweep.stability.monitor import SIGNALS, thresholds  # noqa: E402
from stablesweep.train import run_training  # noqa: E402

SPLITS = {"low": (0, 1, 2, 3), "mid": (4, 5, 6), "high": (7, 8, 9)}


def write_digits(out: Path, size: int = 32) -> Path:
    """The three digit datasets as PNGs + manifests + a config; returns the config's path."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(0)
    configs = {}
    for name, digits in SPLITS.items():
        idx = [i for i in range(len(d.target)) if d.target[i] in digits]
        rng.shuffle(idx)
        cut = int(0.8 * len(idx))
        for split, part in (("train", idx[:cut]), ("val", idx[cut:])):
            folder = out / "images" / name / split
            folder.mkdir(parents=True, exist_ok=True)
            lines = []
            for n, i in enumerate(part):
                img = Image.fromarray((d.images[i] * (255 / 16)).astype("uint8")).convert("RGB")
                img.resize((size, size), Image.BICUBIC).save(folder / f"{n}.png")
                lines.append(json.dumps({"image": f"images/{name}/{split}/{n}.png",
                                         "label": digits.index(int(d.target[i]))}))
            (out / f"{name}_{split}.jsonl").write_text("\n".join(lines) + "\n")
        configs[name] = {"num_classes": len(digits), "train": f"{name}_train.jsonl", "val": f"{name}_val.jsonl"}
    cfg = {"training": {"lr": 3e-3, "max_grad_norm": 1.0, "precision": "fp32", "steps": 120, "batch_size": 32,
                        "optimizer": "adamw", "warmup_steps": 10, "schedule": "cosine", "report_interval": 20},
           "datasets": {"enable_logits_masking": True, "dataset_configs": configs},
           "loss": {"type": "cross_entropy", "masking": "slice"},
           "model": {"name": "small_cnn"}, "data": {"image_size": size}}
    path = out / "config.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--models", default="small_cnn,resnet18")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    limits = thresholds(load_config(ROOT / "configs" / "demo.yaml").monitor)
    print("| model | seed | verdict | progress | " + " | ".join(f"{n} (warn > {limits[n]:g})" for n in SIGNALS)
          + " | first warning |")
    print("|---|---|---|---|" + "---|" * len(SIGNALS) + "---|")
    false, stable = 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        path = write_digits(Path(tmp))
        for model in args.models.split(","):
            for seed in range(args.seeds):
                cfg = load_config(path, [f"model.name={model}", f"training.seed={seed}",
                                         f"training.steps={args.steps}"])
                t0 = time.perf_counter()
                r = run_training(cfg, device="cpu")
                warned = [(s, n) for n, s in r.warnings.items() if s >= 0]
                stable += r.verdict == "stable"
                false += bool(warned) and r.verdict == "stable"
                first = f"{min(warned)[1]} at step {min(warned)[0]}" if warned else "-"
                print(f"| {model} | {seed} | {r.verdict} | {r.progress:.2f} | "
                      + " | ".join(f"{r.signals[n]:.3g}" for n in SIGNALS)
                      + f" | {first} |  <!-- {time.perf_counter() - t0:.0f} s -->", flush=True)
    print(f"\nfalse warnings: {false}/{stable} stable runs")


if __name__ == "__main__":
    main()
