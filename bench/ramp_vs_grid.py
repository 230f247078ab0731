"""What the ramp saves: probes and compute to reach a 1.25x bracket, against a grid at that resolution.

    python bench/ramp_vs_grid.py [--lr-start 1e-6] [--lr-stop 1] [--steps 30] [--cpus N]

Settings: clip (none, 1.0) x masking (slice, large_negative) on configs/demo.yaml (CPU, constant lr,
a report every 5 steps). The grid runs every lr of a 1.25x grid over [lr-start, lr-stop] for every
setting (one Tune sweep, grid sampler, no ASHA); the ramp runs with and without the range-test
first pass. Compute is training FLOPs (torch's FLOP counter) and probe seconds, summed per setting;
wall is each run's own, from its call to its answer (each starts and stops its own local Ray).
Prints a markdown table, whether each ramp bracket agrees with the grid, and each ramp's share of
the grid's FLOPs, probe seconds and wall.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIXED = ["training.report_interval=5", "training.warmup_steps=0", "training.schedule=constant",
         "datasets.skip_evaluation=true"]
AXES = {"training.max_grad_norm": [None, 1.0], "loss.masking": ["slice", "large_negative"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lr-start", type=float, default=1e-6)
    ap.add_argument("--lr-stop", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--resolution", type=float, default=1.25)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    ap.add_argument("--clip", default="none,1.0", help="clip values, one setting axis (default none,1.0)")
    args = ap.parse_args()
    import yaml

    from stablesweep.sweep.options import RampOptions, SweepOptions
    from stablesweep.sweep.ramp_runner import run_ramp
    from stablesweep.sweep.runner import run_sweep
    from stablesweep.vocab import short_name

    tmp = Path(tempfile.mkdtemp(prefix="ramp-vs-grid-"))
    n = math.ceil(math.log(args.lr_stop / args.lr_start) / math.log(args.resolution))
    lrs = [float(f"{args.lr_start * args.resolution ** k:.6g}") for k in range(n + 1)]
    axes = dict(AXES)
    axes["training.max_grad_norm"] = [None if c == "none" else float(c) for c in args.clip.split(",")]
    space = {k: {"grid": v} for k, v in axes.items()}
    (tmp / "settings.yaml").write_text(yaml.safe_dump(space))
    (tmp / "grid.yaml").write_text(yaml.safe_dump({**space, "training.lr": {"grid": lrs}}))
    config = str(ROOT / "configs" / "demo.yaml")
    t0 = time.perf_counter()
    grid = run_sweep(SweepOptions(config=config, space=str(tmp / "grid.yaml"), sampler="grid", steps=args.steps,
                                  asha=False, overrides=FIXED, out=str(tmp / "grid"), name="grid",
                                  num_cpus=args.cpus), echo=lambda s: None)
    walls = {"grid": time.perf_counter() - t0}
    t = grid.table
    ramps = {}
    for first in (None, "range-test"):
        t0 = time.perf_counter()
        ramps[first or "ladder"] = run_ramp(RampOptions(
            config=config, space=str(tmp / "settings.yaml"), lr_start=args.lr_start, lr_stop=args.lr_stop,
            steps=args.steps, target_steps=args.steps, resolution=args.resolution, parallel=args.parallel, first_pass=first,
            overrides=FIXED, out=str(tmp / "ramps"), name=first or "ladder", num_cpus=args.cpus), echo=lambda s: None)
        walls[first or "ladder"] = time.perf_counter() - t0
    print(f"# lr {args.lr_start:g}..{args.lr_stop:g}, resolution {args.resolution}, {args.steps} steps a probe, "
          f"grid of {len(lrs)} lrs a setting, ramp --parallel {args.parallel}")
    print("| setting | grid probes | grid FLOPs | grid bracket | ramp | probes | FLOPs | % of grid FLOPs | "
          "% of grid s | bracket | agrees |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    totals = {k: [0.0, 0.0] for k in ramps}
    grid_total = [0.0, 0.0]
    for kind, res in ramps.items():
        for s, x in zip(res.settings, res.summary):
            rows = t
            for k, v in s.params.items():
                col = rows[k]
                rows = rows[col.isna()] if v is None else rows[col == v]
            g_flops, g_secs = rows["train_flops"].sum(), rows["wall_s"].sum()
            # the grid's bracket as the ramp's: failed = diverged, or stalled above its smallest stable lr
            trained = rows[rows["verdict"] == "stable"]["training.lr"]
            floor = trained.min() if len(trained) else float("inf")
            failed = rows[(rows["verdict"] == "diverged") | ((rows["verdict"] == "stalled") & (rows["training.lr"] > floor))]
            g_hi = failed["training.lr"].min() if len(failed) else None
            stab = trained[(trained < g_hi) if g_hi else trained > 0]
            g_lo = stab.max() if len(stab) else None
            lo, hi = x["max_stable_lr"], x["min_failed_lr"]
            agree = (lo is None or g_hi is None or lo < g_hi) and (hi is None or g_lo is None or hi > g_lo)
            if kind == "ladder":
                grid_total[0] += g_flops
                grid_total[1] += g_secs
            totals[kind][0] += x["train_flops"]
            totals[kind][1] += x["compute_s"]
            print(f"| {short_name(s.params)} | {len(rows)} | {g_flops:.3g} | {g_lo:.3g}..{g_hi:.3g} | {kind} | "
                  f"{x['probes']} | {x['train_flops']:.3g} | {100 * x['train_flops'] / g_flops:.1f}% | "
                  f"{100 * x['compute_s'] / max(g_secs, 1e-9):.1f}% | "
                  f"{(lo or 0):.3g}..{(hi or float('nan')):.3g} | {'yes' if agree else 'NO'} |"
                  if g_lo and g_hi else f"| {short_name(s.params)} | {len(rows)} | {g_flops:.3g} | - | {kind} | "
                  f"{x['probes']} | {x['train_flops']:.3g} | {100 * x['train_flops'] / g_flops:.1f}% | | "
                  f"{x['status']} | |")
    for kind, (f, sec) in totals.items():
        flops, wall = f / grid_total[0], walls[kind] / walls["grid"]
        print(f"all settings, {kind}: {100 * flops:.1f}% of the grid's FLOPs, "
              f"{100 * sec / max(grid_total[1], 1e-9):.1f}% of its probe seconds, {100 * wall:.1f}% of its wall "
              f"({walls[kind]:.0f} s against {walls['grid']:.0f} s): wall share / FLOPs share {wall / flops:.2f}")


if __name__ == "__main__":
    main()
