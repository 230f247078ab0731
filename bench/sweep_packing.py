"""Trials per hour with fractional GPUs: the same sweep at 1 GPU a trial and at 0.25 GPU a trial.

    python bench/sweep_packing.py [--trials 16] [--steps 300] [--cpus-per-trial 4] [--set KEY=VALUE ...]

The workload is configs/bench_gpu.yaml (ResNet-18, 64 px, bf16, 2816 classes, synthetic data); the
space is a grid of lrs x clip values, no ASHA, so both runs do the same trials. Prints a markdown
table per run: the sweep's wall time (Ray start to region written), the trials' span (first trial
start to last trial end, from Tune's results), trials per hour by each, and where a trial's time
goes (first report interval, which holds model build, data workers and compilation; s a step
after it); then the speed-up.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LRS = [1.0e-4, 2.0e-4, 3.0e-4, 5.0e-4, 1.0e-3, 2.0e-3, 3.0e-3, 5.0e-3]
CLIPS = [None, 0.5, 1.0, 5.0]


def trial_times(exp_dir: Path) -> list[dict]:
    """Per trial: start and end (epoch s), the first report interval's seconds, s a step after it."""
    out = []
    for f in sorted(exp_dir.glob("trial_*/result.json")):
        reports = [json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()]
        if not reports:
            continue
        first, last = reports[0], reports[-1]
        start = first["timestamp"] - first["time_this_iter_s"]
        later = reports[1:]
        steps_later = last["step"] - first["step"]
        out.append({"start": start, "end": last["timestamp"], "first_s": first["time_this_iter_s"],
                    "s_per_step": (sum(r["time_this_iter_s"] for r in later) / steps_later) if steps_later else None,
                    "total_s": last["time_total_s"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--cpus-per-trial", type=float, default=4.0)
    ap.add_argument("--fractions", default="1.0,0.25")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of configs/bench_gpu.yaml (repeatable)")
    args = ap.parse_args()
    import ray
    import torch
    import yaml

    from stablesweep.sweep.options import SweepOptions
    from stablesweep.sweep.runner import run_sweep

    if not torch.cuda.is_available():
        sys.exit("error: this benchmark needs a CUDA GPU")
    n_lr = max(1, args.trials // len(CLIPS))
    tmp = Path(tempfile.mkdtemp(prefix="packing-"))
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump({"training.lr": {"grid": LRS[:n_lr]}, "training.max_grad_norm": {"grid": CLIPS}}))
    trials = n_lr * len(CLIPS)
    rows = []
    print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}, ray {ray.__version__}; "
          f"{trials} trials of {args.steps} steps, {args.cpus_per_trial:g} CPUs a trial; set: {args.overrides}",
          flush=True)
    for frac in [float(f) for f in args.fractions.split(",")]:
        opts = SweepOptions(config=str(ROOT / "configs" / "bench_gpu.yaml"), space=str(space), sampler="grid",
                            samples=trials, steps=args.steps, gpus_per_trial=frac, overrides=args.overrides,
                            cpus_per_trial=args.cpus_per_trial, asha=False, out=str(tmp / f"g{frac}"),
                            name="packing")
        t0 = time.time()
        res = run_sweep(opts, echo=lambda s: None)
        wall = time.time() - t0
        tt = trial_times(res.sweep_dir)
        span = max(t["end"] for t in tt) - min(t["start"] for t in tt)
        per_step = [t["s_per_step"] for t in tt if t["s_per_step"]]
        rows.append({"frac": frac, "wall": wall, "span": span, "n": len(res.table), "counts": res.counts,
                     "trial_s": mean(t["total_s"] for t in tt), "first_s": mean(t["first_s"] for t in tt),
                     "ms_step": 1000 * mean(per_step) if per_step else float("nan")})
        print(f"  {frac:g} GPU a trial: {wall:.1f} s for {len(res.table)} trials: {res.counts}", flush=True)
    print("| GPU a trial | sweep wall s | trials' span s | trials/hour (wall) | trials/hour (span) | "
          "s a trial | first interval s | ms a step after it | verdicts |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['frac']:g} | {r['wall']:.1f} | {r['span']:.1f} | {r['n'] / r['wall'] * 3600:.0f} | "
              f"{r['n'] / r['span'] * 3600:.0f} | {r['trial_s']:.1f} | {r['first_s']:.1f} | {r['ms_step']:.1f} | "
              f"{', '.join(f'{k} {v}' for k, v in r['counts'].items() if v)} |")
    if len(rows) == 2:
        a, b = rows
        print(f"speed-up of {b['frac']:g} over {a['frac']:g} GPU a trial: {a['wall'] / b['wall']:.2f}x by sweep wall "
              f"time, {a['span'] / b['span']:.2f}x by the trials' span")


if __name__ == "__main__":
    main()
