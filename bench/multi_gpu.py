"""Every GPU of a node: a packed sweep on 1 GPU vs 2, and a data-parallel trial on 1 GPU vs 2.

    python bench/multi_gpu.py packing [--trials 16] [--steps 200] [--fraction 0.25]
    python bench/multi_gpu.py ddp [--steps 120] [--batch-per-gpu 128]
    python bench/multi_gpu.py {packing,ddp} --device cpu --tiny    # a check that it runs, on CPU

packing: the sweep of bench/sweep_packing.py (configs/bench_gpu.yaml: ResNet-18, 64 px, bf16,
synthetic data; a grid of lrs x clips, no ASHA) at --fraction GPU a trial, on a local Ray given 1
GPU, then 2. Before each sweep, --probe Ray tasks of --fraction GPU print the CUDA_VISIBLE_DEVICES
Ray gave each, and the peak memory used on every GPU during the sweep (nvidia-smi) shows where
trials ran. Target: trials/hour (by the trials' span) on 2 GPUs >= 1.8x on 1.

ddp: one trial of ResNet-50 at 224 px, bf16, on configs/bench_gpu.yaml's synthetic data, as a sweep
of one point: one worker on 1 GPU (--batch-per-gpu images a step), then --workers-per-trial 2 with
1 GPU each (twice the global batch, the same per GPU). images/s is the trial's samples_per_s, the
median over its reports after the first (which holds start-up and compilation). Target: 2 GPUs
>= 1.8x the images/s of 1.

Each part prints a markdown table; each runs in well under 5 minutes on an H200 pair.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = ROOT / "configs" / "bench_gpu.yaml"
LRS = [1.0e-4, 2.0e-4, 3.0e-4, 5.0e-4, 1.0e-3, 2.0e-3, 3.0e-3, 5.0e-3]
CLIPS = [None, 0.5, 1.0, 5.0]
TINY = ["model.name=small_cnn", "data.image_size=32", "training.batch_size=16", "training.report_interval=5",
        "training.num_workers=0", "datasets.dataset_configs.food2k.num_classes=20",
        "data.synthetic_per_class=4", "training.precision=fp32"]


def gpu_memory_mib() -> list[int]:
    """Memory used on each GPU now (nvidia-smi), [] without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [int(x) for x in out.split()]


class PeakMemory:
    """The peak memory used on every GPU while the block runs (sampled every second)."""

    def __enter__(self):
        self.peak, self._stop = gpu_memory_mib(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(1.0):
            self.peak = [max(a, b) for a, b in zip(self.peak, gpu_memory_mib())]

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def probe_placement(ray, fraction: float, n: int) -> list[str]:
    """CUDA_VISIBLE_DEVICES of `n` concurrent Ray tasks of `fraction` GPU each."""
    @ray.remote(num_gpus=fraction, num_cpus=0)
    def visible(hold: float) -> str:
        time.sleep(hold)
        return os.environ.get("CUDA_VISIBLE_DEVICES", "")

    return ray.get([visible.remote(2.0) for _ in range(n)])


def sweep(opts):
    from stablesweep.sweep.runner import run_sweep

    t0 = time.time()
    res = run_sweep(opts, echo=lambda s: None)
    return res, time.time() - t0


def packing(args, tmp: Path) -> None:
    import ray
    import yaml

    from bench.sweep_packing import trial_times
    from stablesweep.sweep.options import SweepOptions

    cpu = args.device == "cpu"
    n_lr = max(1, args.trials // len(CLIPS))
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump({"training.lr": {"grid": LRS[:n_lr]}, "training.max_grad_norm": {"grid": CLIPS}}))
    trials = n_lr * len(CLIPS)
    overrides = (TINY if args.tiny else []) + args.overrides
    print(f"# packing: {trials} trials of {args.steps} steps, {args.fraction:g} GPU and {args.cpus_per_trial:g} "
          f"CPUs a trial; set: {overrides}", flush=True)
    rows = []
    for gpus in (1, 2):
        # a local Ray of `gpus` GPUs (on CPU: of `gpus` x cpus-per-trial CPUs, one trial each)
        ray.init(num_gpus=0 if cpu else gpus, num_cpus=int(gpus * args.cpus_per_trial) if cpu else None,
                 include_dashboard=False, log_to_driver=False)
        try:
            placed = [] if cpu else probe_placement(ray, args.fraction, args.probe)
            opts = SweepOptions(config=str(CONFIG), space=str(space), sampler="grid", samples=trials, steps=args.steps,
                                gpus_per_trial=0 if cpu else args.fraction, cpus_per_trial=args.cpus_per_trial,
                                overrides=overrides, asha=False, out=str(tmp / f"packing{gpus}"), name="packing")
            with PeakMemory() as mem:
                res, wall = sweep(opts)
        finally:
            ray.shutdown()
        tt = trial_times(res.sweep_dir)
        span = max(t["end"] for t in tt) - min(t["start"] for t in tt)
        rows.append({"gpus": gpus, "wall": wall, "span": span, "n": len(res.table), "placed": placed,
                     "peak": mem.peak, "counts": res.counts})
        print(f"  {gpus} GPU: {wall:.1f} s, {len(res.table)} trials {res.counts}; probe CUDA_VISIBLE_DEVICES "
              f"{sorted(set(placed))}; peak MiB a GPU {mem.peak}", flush=True)
    print("\n| GPUs | trials | sweep wall s | trials' span s | trials/hour (wall) | trials/hour (span) | "
          "probe CUDA_VISIBLE_DEVICES | peak MiB a GPU |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['gpus']} | {r['n']} | {r['wall']:.1f} | {r['span']:.1f} | {r['n'] / r['wall'] * 3600:.0f} | "
              f"{r['n'] / r['span'] * 3600:.0f} | {' '.join(sorted(set(r['placed']))) or '-'} | "
              f"{' '.join(map(str, r['peak'])) or '-'} |")
    a, b = rows
    print(f"\n2 GPUs vs 1: {a['span'] / b['span']:.2f}x trials/hour by the trials' span, {a['wall'] / b['wall']:.2f}x "
          f"by sweep wall time (target >= 1.8x)")


def ddp(args, tmp: Path) -> None:
    import yaml

    from stablesweep.sweep.options import SweepOptions

    cpu = args.device == "cpu"
    space = tmp / "one.yaml"
    space.write_text(yaml.safe_dump({"training.lr": {"grid": [args.lr]}}))
    model = (TINY if args.tiny else
             ["model.name=resnet50", "data.image_size=224", "training.precision=bf16", "model.channels_last=true"])
    rows = []
    print(f"# ddp: {args.steps} steps, {args.batch_per_gpu} images a step a {'worker' if cpu else 'GPU'}; "
          f"set: {model + args.overrides}", flush=True)
    for workers in (1, 2):
        overrides = model + [f"training.batch_size={args.batch_per_gpu * workers}",
                             f"training.report_interval={args.report_interval}", "training.warmup_steps=0",
                             "training.schedule=constant", "training.checkpoint_every=0",
                             f"training.num_workers={args.data_workers}"] + args.overrides
        opts = SweepOptions(config=str(CONFIG), space=str(space), sampler="grid", samples=1, steps=args.steps,
                            gpus_per_trial=0 if cpu else 1, cpus_per_trial=args.cpus_per_worker,
                            workers_per_trial=workers, overrides=overrides, asha=False,
                            out=str(tmp / f"ddp{workers}"), name="ddp",
                            num_cpus=int(2 * args.cpus_per_worker) + 1 if cpu else None)
        res, wall = sweep(opts)
        reports = sorted((tmp / f"ddp{workers}" / "ddp").glob("trial_*/result.json"))
        rates = [json.loads(ln)["samples_per_s"] for f in reports for ln in f.read_text().splitlines() if ln.strip()]
        steady = rates[1:] or rates
        rows.append({"workers": workers, "wall": wall, "rate": statistics.median(steady) if steady else float("nan"),
                     "reports": len(rates), "counts": res.counts})
        print(f"  {workers} worker(s): {wall:.1f} s, {len(rates)} reports, images/s {[round(r) for r in rates]}",
              flush=True)
    print(f"\n| {'GPUs' if not cpu else 'workers (CPU)'} | global batch | images/s (median after the first report) | "
          "per GPU | sweep wall s | verdicts |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {args.batch_per_gpu * r['workers']} | {r['rate']:.0f} | {r['rate'] / r['workers']:.0f} | "
              f"{r['wall']:.1f} | {', '.join(f'{k} {v}' for k, v in r['counts'].items() if v)} |")
    a, b = rows
    print(f"\n2 vs 1: {b['rate'] / a['rate']:.2f}x images/s (target >= 1.8x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["packing", "ddp"])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="cpu: run the same code on CPU (with --tiny: a check that the script runs)")
    ap.add_argument("--tiny", action="store_true", help="a small CNN at 32 px, a few steps")
    ap.add_argument("--steps", type=int, default=None, help="steps a trial (default: packing 200, ddp 120; --tiny 10)")
    ap.add_argument("--trials", type=int, default=16, help="packing: trials (a multiple of 4; default 16)")
    ap.add_argument("--fraction", type=float, default=0.25, help="packing: GPU a trial (default 0.25)")
    ap.add_argument("--cpus-per-trial", type=float, default=4.0,
                    help="packing: CPUs a trial (default 4: the trial and configs/bench_gpu.yaml's 3 data workers)")
    ap.add_argument("--probe", type=int, default=8, help="packing: Ray tasks of --fraction GPU that report their GPU")
    ap.add_argument("--batch-per-gpu", type=int, default=128, help="ddp: images a step a GPU (default 128)")
    ap.add_argument("--cpus-per-worker", type=float, default=12.0, help="ddp: CPUs a worker (default 12)")
    ap.add_argument("--data-workers", type=int, default=10, help="ddp: data loader processes a worker (default 10)")
    ap.add_argument("--report-interval", type=int, default=20, help="ddp: steps a report (default 20)")
    ap.add_argument("--lr", type=float, default=1.0e-3, help="ddp: the trial's lr (default 1e-3)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of configs/bench_gpu.yaml (repeatable)")
    args = ap.parse_args()
    import ray
    import torch

    if args.device == "cuda" and torch.cuda.device_count() < 2:
        sys.exit(f"error: this benchmark needs 2 CUDA GPUs (found {torch.cuda.device_count()}); "
                 "--device cpu --tiny checks that it runs")
    if args.tiny:
        args.steps = args.steps or 10
        args.trials, args.batch_per_gpu, args.report_interval = min(args.trials, 4), 8, 5
        args.cpus_per_trial, args.cpus_per_worker, args.data_workers = 1.0, 1.0, 0
    args.steps = args.steps or (200 if args.part == "packing" else 120)
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    print(f"# {gpu} x {torch.cuda.device_count() if args.device == 'cuda' else os.cpu_count()}, torch "
          f"{torch.__version__}, ray {ray.__version__}, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    with tempfile.TemporaryDirectory(prefix=f"multi-gpu-{args.part}-") as tmp:
        (packing if args.part == "packing" else ddp)(args, Path(tmp))


if __name__ == "__main__":
    main()
