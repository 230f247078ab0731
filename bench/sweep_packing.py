"""Trials per hour with fractional GPUs: the same sweep at 1 GPU a trial and at 0.25 GPU a trial.

    python bench/sweep_packing.py [--trials 16] [--steps 300] [--cpus-per-trial 3]

The workload is configs/bench_gpu.yaml (ResNet-18, 64 px, bf16, 2816 classes, synthetic data); the
space is a grid of 4 lrs x 4 clip values, no ASHA, so both runs do the same 16 trials. Prints a
markdown table: wall time, trials per hour, verdict counts, and the speed-up.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPACE = """\
training.lr: {grid: [1.0e-4, 3.0e-4, 1.0e-3, 3.0e-3]}
training.max_grad_norm: {grid: [null, 0.5, 1.0, 5.0]}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--cpus-per-trial", type=float, default=3.0)
    ap.add_argument("--fractions", default="1.0,0.25")
    args = ap.parse_args()
    import ray
    import torch

    from stablesweep.sweep.runner import SweepOptions, run_sweep

    if not torch.cuda.is_available():
        sys.exit("error: this benchmark needs a CUDA GPU")
    tmp = Path(tempfile.mkdtemp(prefix="packing-"))
    space = tmp / "space.yaml"
    space.write_text(SPACE)
    rows = []
    print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}, ray {ray.__version__}; "
          f"{args.trials} trials of {args.steps} steps, {args.cpus_per_trial:g} CPUs a trial", flush=True)
    for frac in [float(f) for f in args.fractions.split(",")]:
        opts = SweepOptions(config=str(ROOT / "configs" / "bench_gpu.yaml"), space=str(space), sampler="grid",
                            samples=args.trials, steps=args.steps, gpus_per_trial=frac,
                            cpus_per_trial=args.cpus_per_trial, asha=False, out=str(tmp / f"g{frac}"),
                            name="packing")
        t0 = time.time()
        res = run_sweep(opts, echo=lambda s: None)
        wall = time.time() - t0
        rows.append((frac, wall, len(res.table) / wall * 3600, res.counts))
        print(f"  {frac:g} GPU a trial: {wall:.1f} s for {len(res.table)} trials: {res.counts}", flush=True)
    print("| GPU a trial | wall s | trials/hour | verdicts |")
    print("|---|---|---|---|")
    for frac, wall, tph, counts in rows:
        print(f"| {frac:g} | {wall:.1f} | {tph:.0f} | {', '.join(f'{k} {v}' for k, v in counts.items() if v)} |")
    if len(rows) == 2:
        print(f"speed-up of {rows[1][0]:g} over {rows[0][0]:g} GPU a trial: {rows[1][2] / rows[0][2]:.2f}x")


if __name__ == "__main__":
    main()
