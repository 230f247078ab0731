"""Evidence for monitor.min_progress: how far the loss falls (progress = 1 - final smoothed loss /
initial loss) across lrs, seeds and configs, and which verdict each run gets.

    python bench/stall_evidence.py                       # configs/demo.yaml on the CPU
    python bench/stall_evidence.py --config configs/bench_gpu.yaml --device cuda --pretrained

--pretrained first trains the config's backbone for --pretrain-steps at --pretrain-lr, saves its
weights, and then sweeps the lrs again fine-tuning from them (`model.weights`: the head replaced),
as users fine-tune a pretrained backbone. Prints one table; figures go to docs with the command,
the date and the machine.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from stablesweep.config import load_config
from stablesweep.train import Trainer


def run(config: str, sets: list[str], device: str) -> dict:
    cfg = load_config(config, sets)
    t = time.perf_counter()
    r = Trainer(cfg, device=device).run()
    return {"verdict": r.verdict, "reason": r.reason or "", "initial": r.initial_loss, "final": r.final_loss,
            "progress": r.progress, "objective": r.objective, "s": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--lrs", default="1e-6,1e-5,1e-4,1e-3,1e-2,1e-1,1,3")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--pretrained", action="store_true")
    ap.add_argument("--pretrain-steps", type=int, default=300)
    ap.add_argument("--pretrain-lr", type=float, default=1e-3)
    a = ap.parse_args()
    lrs = [float(x) for x in a.lrs.split(",")]
    rows = []
    runs = [("scratch", [])]
    if a.pretrained:
        cfg = load_config(a.config, a.sets + [f"training.steps={a.pretrain_steps}", f"training.lr={a.pretrain_lr}",
                                              "training.seed=1000"])
        trainer = Trainer(cfg, device=a.device)
        trainer.run()
        weights = Path(tempfile.mkdtemp(prefix="stall-")) / "backbone.pt"
        torch.save(trainer.model.state_dict(), weights)
        runs.append(("pretrained", [f"model.weights={weights}"]))
    for kind, extra in runs:
        for lr in lrs:
            for seed in range(a.seeds):
                r = run(a.config, a.sets + extra + [f"training.lr={lr}", f"training.seed={seed}"], a.device)
                rows.append((kind, lr, seed, r))
                print(f"{kind:10} lr={lr:<8g} seed={seed} {r['verdict']:8} progress={r['progress']:+.3f} "
                      f"initial={r['initial']:.3f} final={r['final']:.3f} objective={r['objective']:.3f} "
                      f"{r['s']:.0f}s", flush=True)
    print("\n| backbone | lr | progress per seed | verdicts |\n|---|---|---|---|")
    for kind, _ in runs:
        for lr in lrs:
            rs = [r for k, x, _, r in rows if k == kind and x == lr]
            progress = ", ".join(f"{r['progress']:+.2f}" for r in rs)
            print(f"| {kind} | {lr:g} | {progress} | {', '.join(r['verdict'] for r in rs)} |")


if __name__ == "__main__":
    main()
