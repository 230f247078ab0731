"""What a short probe pays besides training: start-up once, then the gap between trials, with the
trial worker reused (the default) and without (--no-reuse).

    python bench/probe_overhead.py [--steps 40] [--samples 16] [--only ramp|sweep] [--out DIR] [--extra OPTS]

Runs, as a user would, each with and without --no-reuse:
  ramp   the README's demo ramp: stablesweep ramp configs/demo.yaml --lr-start 1e-3 --lr-stop 30 --steps 30
  sweep  stablesweep sweep configs/demo.yaml --space search_spaces/quick.yaml --samples 16 --steps 40
(plus --extra, e.g. '--gpus-per-trial 0.5' on a GPU machine: a reused worker keeps its CUDA
context) and reads every trial's Tune results (OUT/**/trial_*/result.json, however many Tune runs the
command made). Per run: probes; training s (the sum of the trials' time_total_s, which counts a
new worker's torch import as the trial's own); wall s (the command's, from its start to its
exit); first (command start to the first trial's start); concurrency (most trials running at
once); overhead a probe ((wall x concurrency - training) / probes); median gap (the time a
trial slot stood between one trial's last report and the next trial's start, over the probes
after the first of each slot); wall / (training / concurrency).
"""
from __future__ import annotations

import argparse
import heapq
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    "ramp": ["ramp", "configs/demo.yaml", "--lr-start", "1e-3", "--lr-stop", "30", "--steps", "30"],
    "sweep": ["sweep", "configs/demo.yaml", "--space", "search_spaces/quick.yaml", "--samples", "{samples}",
              "--steps", "{steps}"],
}


def trials(out: Path) -> list[tuple[float, float, float]]:
    """(start, end, training s) of every trial under `out`, from Tune's result.json rows: the start is
    the first report's time less Tune's time of that first iteration, the end the last report's."""
    found = []
    for path in out.rglob("trial_*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not rows:
            continue
        first, last = rows[0], rows[-1]
        found.append((first["reported_at"] - first["time_this_iter_s"], last["reported_at"], last["time_total_s"]))
    return sorted(found)


def concurrency(spans: list[tuple[float, float, float]]) -> int:
    edges = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans])
    now = most = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def gaps(spans: list[tuple[float, float, float]], slots: int) -> list[float]:
    """Each trial after the first of its slot: its start less the moment the earliest slot freed."""
    free: list[float] = []
    out = []
    for start, end, _ in spans:
        if len(free) < slots:
            heapq.heappush(free, end)
            continue
        out.append(start - heapq.heappop(free))
        heapq.heappush(free, end)
    return out


def measure(kind: str, reuse: bool, args, tmp: Path) -> dict:
    out = tmp / f"{kind}-{'reuse' if reuse else 'noreuse'}"
    argv = [a.format(samples=args.samples, steps=args.steps) for a in RUNS[kind]]
    argv += shlex.split(args.extra) + ["--out", str(out), "--name", "bench"] + ([] if reuse else ["--no-reuse"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "stablesweep.cli", *argv], cwd=ROOT, env=env, capture_output=True,
                       text=True)
    wall = time.time() - t0
    if p.returncode not in (0, 1):
        sys.exit(f"{' '.join(argv)}: exit {p.returncode}\n{p.stderr[-3000:]}")
    spans = trials(out)
    train = sum(t for _, _, t in spans)
    c = concurrency(spans)
    g = gaps(spans, c)
    return {"run": kind, "reuse": "on" if reuse else "off", "probes": len(spans), "training_s": train, "wall_s": wall,
            "first_s": spans[0][0] - t0 if spans else float("nan"), "concurrency": c,
            "overhead_s": (wall * c - train) / max(len(spans), 1),
            "median_gap_s": statistics.median(g) if g else float("nan"),
            "wall_vs_training": wall / (train / c) if train else float("nan"), "command": "stablesweep " + " ".join(argv)}


def gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a machine without torch's CUDA: no GPU to name
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="the sweep's step budget (default 40)")
    ap.add_argument("--samples", type=int, default=16, help="the sweep's trials (default 16)")
    ap.add_argument("--only", choices=sorted(RUNS), default=None)
    ap.add_argument("--out", default=None, help="where the runs go (default: a temporary folder)")
    ap.add_argument("--extra", default="", help="more options for every command, e.g. '--gpus-per-trial 0.5'")
    args = ap.parse_args()
    tmp = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="probe-overhead-"))
    load = os.getloadavg()[0]
    rows = [measure(kind, reuse, args, tmp) for kind in ([args.only] if args.only else RUNS) for reuse in (True, False)]
    print(f"# probe overhead, load average {load:.2f} before, {os.getloadavg()[0]:.2f} after ({os.cpu_count()} CPUs"
          + (f", {gpu_name()}" if gpu_name() else "") + ")\n")
    print("| run | reuse | probes | training s | wall s | first trial at s | concurrency | overhead a probe s "
          "| median gap after the first s | wall / (training / concurrency) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['reuse']} | {r['probes']} | {r['training_s']:.1f} | {r['wall_s']:.1f} | {r['first_s']:.1f} "
              f"| {r['concurrency']} | {r['overhead_s']:.2f} | {r['median_gap_s']:.2f} | {r['wall_vs_training']:.2f} |")
    print()
    for r in rows:
        print(f"{r['run']} reuse {r['reuse']}: {r['command']}")


if __name__ == "__main__":
    main()
