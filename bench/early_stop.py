"""What stopping diverged trials at once saves: FLOPs spent on them against their full budget, and
steps from the first bad step to the stop.

    python bench/early_stop.py [--samples 24] [--steps 200] [--report-interval 10] [--cpus N]

A sweep of configs/demo.yaml over search_spaces/quick.yaml (random sampler, no ASHA, so every
finite trial runs its budget and every stop is the divergence stopper's). For each diverged
trial: steps run, the first bad step, FLOPs spent (torch's FLOP counter x steps) and what its
whole budget would have cost. Targets: stop within 1 report interval; diverged trials cost at most
10% of their full budget.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--report-interval", type=int, default=10)
    ap.add_argument("--space", default=str(ROOT / "search_spaces" / "quick.yaml"))
    ap.add_argument("--cpus", type=int, default=None)
    args = ap.parse_args()
    from stablesweep.sweep.options import SweepOptions
    from stablesweep.sweep.runner import run_sweep

    tmp = Path(tempfile.mkdtemp(prefix="early-stop-"))
    res = run_sweep(SweepOptions(config=str(ROOT / "configs" / "demo.yaml"), space=args.space, sampler="random",
                                 samples=args.samples, steps=args.steps, asha=False, num_cpus=args.cpus,
                                 overrides=[f"training.report_interval={args.report_interval}",
                                            "datasets.skip_evaluation=true"],
                                 out=str(tmp), name="early-stop"), echo=lambda s: None)
    t = res.table
    d = t[t["verdict"] == "diverged"].copy()
    print(f"# {len(t)} trials of {args.steps} steps, report every {args.report_interval}: {res.counts}")
    if not len(d):
        print("no trial diverged: widen the space")
        return
    d["full_flops"] = d["flops_per_step"] * d["budget_steps"]
    d["lag"] = d["steps"] - d["first_bad_step"]
    print("| trial | reason | first bad step | stopped at | steps after first bad | FLOPs spent | full budget | % |")
    print("|---|---|---|---|---|---|---|---|")
    for _, r in d.iterrows():
        print(f"| {r['name']} | {r['reason']} | {int(r['first_bad_step'])} | {int(r['steps'])} | {int(r['lag'])} | "
              f"{r['train_flops']:.3g} | {r['full_flops']:.3g} | {100 * r['train_flops'] / r['full_flops']:.1f}% |")
    spent, full = d["train_flops"].sum(), d["full_flops"].sum()
    print(f"diverged trials: {len(d)}; max steps from first bad step to stop: {int(d['lag'].max())} "
          f"(report interval {args.report_interval}); FLOPs spent {spent:.3g} of {full:.3g} "
          f"= {100 * spent / full:.1f}% of their full budget")


if __name__ == "__main__":
    main()
