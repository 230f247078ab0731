"""Early warning, measured: how many steps before a run's first bad step each signal warns, and how
often it warns on stable runs.

    python bench/early_warning.py [--seeds 5] [--failing-seeds 2] [--threads 1]
    python bench/early_warning.py --checkpoints      # the cost of the checkpoint ring instead
    python bench/early_warning.py --sweep-ring       # the ring's cost in a small CPU sweep (1 vs 3 kept)

Runs on CPU: configs/demo.yaml (six synthetic food datasets, 56 classes, small CNN) at 16 px.
Stable runs: the demo as it is, seeds 0..N-1, and once in fp16 (seed 0). Failing runs (held out from the tests' planted
causes), seeds 0..M-1 (the fp16 ones seed 0 only: fp16 on a CPU is slow):
- lr_far: lr 10, constant, no clipping (the boundary of this setting is about 0.6);
- lr_above: lr 1.0, constant, no clipping: just above it;
- lr_ramp: lr rising exponentially from 1e-3 to 10 over the budget (an lr range test), no
  clipping: the run crosses the boundary in its middle;
- fp16_ramp: the same in fp16 with loss scaling;
- fp16_mask: fp16, masking large_negative (-1e9) applied in the logits' own dtype (-1e9 becomes
  -inf in fp16), the demo's lr;
- smoothing_neg_inf: label smoothing 0.1 over -inf masking;
- skip_labels: manifests in which one dataset's labels are all out of range (a dataset written
  with the wrong label key), `loss.on_bad_label: skip`, batch 4: a batch whose samples are all
  dropped has no loss.
Every run keeps the monitor's state vector after each step (the bench reads it; the trainer
still reads it once a report), so the first step at which each signal crosses any threshold is
known without re-running. A warning's lead is the first bad step (the verdict's) minus the warning
step: 0 is a warning at the bad step itself, "-" none before it.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stablesweep.config import MonitorConfig, load_config  # noqa: E402
from stablesweep.data import write_synthetic  # noqa: E402
from stablesweep.stability.monitor import FIELDS, SIGNALS, thresholds  # noqa: E402
from stablesweep.train import Trainer  # noqa: E402

DEMO = ROOT / "configs" / "demo.yaml"
BASE = ["data.image_size=16"]
FP16 = ["training.precision=fp16"]
NO_CLIP = ["training.max_grad_norm=null", "training.warmup_steps=0"]
RAMP = NO_CLIP + ["training.schedule=exponential", "training.lr=1e-3", "training.lr_final=10"]
FAILING = {  # kind: (overrides, fp16)
    "lr_far": (NO_CLIP + ["training.schedule=constant", "training.lr=10"], False),
    "lr_above": (NO_CLIP + ["training.schedule=constant", "training.lr=1.0"], False),
    "lr_ramp": (RAMP, False),
    "fp16_ramp": (RAMP + FP16, True),
    "fp16_mask": (FP16 + ["loss.masking=large_negative", "loss.mask_in=autocast",
                   "training.steps=60"], True),
    "smoothing_neg_inf": (["loss.type=label_smoothing", "loss.masking=neg_inf"], False),
    "skip_labels": (None, False),  # manifests, written below
}
# the thresholds tried (the defaults of MonitorConfig are among them)
GRID = {"grad_spike": [2, 3, 5, 10, 20], "update_ratio": [0.02, 0.05, 0.1, 0.2],
        "max_logit": [15, 20, 30, 50, 100], "logsumexp": [15, 20, 30, 50, 100], "scale_drops": [1, 2, 3]}


@dataclass
class Run:
    kind: str
    seed: int
    verdict: str
    reason: str | None
    first_bad: int
    steps: int
    wall_s: float
    values: dict[str, list[float]] = field(default_factory=dict)  # signal -> its largest value after each step

    def first_over(self, name: str, threshold: float) -> int:
        """The first step the signal crossed `threshold` (scale_drops: reached it), or -1."""
        for s, x in enumerate(self.values[name]):
            if (x >= threshold if name == "scale_drops" else x > threshold):
                return s
        return -1

    def lead(self, name: str, threshold: float) -> int | None:
        """Steps from the warning to the first bad step (None: no warning at or before it)."""
        w = self.first_over(name, threshold)
        return None if w < 0 or w > self.first_bad else self.first_bad - w


def skip_labels_config(tmp: Path) -> Path:
    """Three small datasets as files; veg's manifest holds global class ids (all out of range)."""
    path = write_synthetic(tmp / "skip", names_classes={"food": 4, "fru": 3, "veg": 8}, per_class=12, image_size=16)
    manifest = tmp / "skip" / "veg_train.jsonl"
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    manifest.write_text("".join(json.dumps({**x, "label": x["label"] + 8}) + "\n" for x in lines))
    return path


def trace(cfg, kind: str) -> Run:
    """Train `cfg`, keeping the monitor's state vector after every step."""
    trainer = Trainer(cfg, device="cpu")
    mon, states = trainer.monitor, []
    update, record = mon.update, mon.record_update

    def traced_update(*a, **k):
        skip = update(*a, **k)
        states.append(mon.v.clone())
        return skip

    def traced_record(*a):
        record(*a)
        states[-1] = mon.v.clone()

    mon.update, mon.record_update = traced_update, traced_record
    t0 = time.perf_counter()
    res = trainer.run()
    wall = time.perf_counter() - t0
    v = torch.stack(states).tolist() if states else []
    idx = {n: i for i, n in enumerate(FIELDS)}
    values = {n: [row[idx[f"value_{n}"]] for row in v] for n in SIGNALS}
    return Run(kind, cfg.training.seed, res.verdict, res.reason, res.first_bad_step, res.steps, wall, values)


def fmt_lead(run: Run, name: str, threshold: float) -> str:
    if run.verdict != "diverged":
        return "n/a"
    lead = run.lead(name, threshold)
    return "-" if lead is None else str(lead)


def any_lead(run: Run, chosen: dict[str, float]) -> str:
    if run.verdict != "diverged":
        return "n/a"
    leads = [x for n in SIGNALS if (x := run.lead(n, chosen[n])) is not None]
    return str(max(leads)) if leads else "-"


def report(runs: list[Run], chosen: dict[str, float]) -> None:
    stable = [r for r in runs if r.kind.startswith("stable")]
    failing = [r for r in runs if not r.kind.startswith("stable")]
    print("\n## At the default thresholds (MonitorConfig): lead in steps before the first bad step\n")
    heads = [f"{n} > {chosen[n]:g}" if n != "scale_drops" else f"{n} >= {chosen[n]:g}" for n in SIGNALS]
    print("| run | verdict | first bad step | " + " | ".join(heads) + " | any |")
    print("|---|---|---|" + "---|" * len(SIGNALS) + "---|")
    for r in failing:
        what = f"{r.verdict} ({r.reason})" if r.reason else r.verdict
        print(f"| {r.kind} seed {r.seed} | {what} | {r.first_bad if r.first_bad >= 0 else '-'} | "
              + " | ".join(fmt_lead(r, n, chosen[n]) for n in SIGNALS) + f" | {any_lead(r, chosen)} |")
    fw = [sum(r.first_over(n, chosen[n]) >= 0 for r in stable) for n in SIGNALS]
    fw_any = sum(any(r.first_over(n, chosen[n]) >= 0 for n in SIGNALS) for r in stable)
    print(f"| false warnings on {len(stable)} stable runs | | | "
          + " | ".join(f"{k}/{len(stable)}" for k in fw) + f" | {fw_any}/{len(stable)} |")
    print("\n## Largest value of each signal on the stable runs\n")
    print("| signal | " + " | ".join(f"{r.kind} seed {r.seed}" for r in stable) + " |")
    print("|---|" + "---|" * len(stable))
    for n in SIGNALS:
        print(f"| {n} | " + " | ".join(f"{max(r.values[n], default=math.nan):.3g}" for r in stable) + " |")
    print("\n## Every threshold tried\n")
    diverged = [r for r in failing if r.verdict == "diverged"]
    print(f"| signal | threshold | false warnings ({len(stable)} stable) | warned before the bad step "
          f"({len(diverged)} diverged) | median lead of those |")
    print("|---|---|---|---|---|")
    for n in SIGNALS:
        for thr in GRID[n]:
            leads = [x for r in diverged if (x := r.lead(n, thr)) is not None and x > 0]
            med = f"{statistics.median(leads):g}" if leads else "-"
            print(f"| {n} | {thr:g}{' (default)' if thr == chosen[n] else ''} | "
                  f"{sum(r.first_over(n, thr) >= 0 for r in stable)} | {len(leads)} | {med} |")


def early_warning(args) -> None:
    chosen = thresholds(MonitorConfig())
    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as tmp:
        skip_cfg = skip_labels_config(Path(tmp))
        plan = [("stable", DEMO, BASE, s) for s in range(args.seeds)] + [("stable_fp16", DEMO, BASE + FP16, 0)]
        for kind, (over, fp16) in FAILING.items():
            for s in range(1 if fp16 else args.failing_seeds):
                if over is None:
                    plan.append((kind, skip_cfg, ["loss.on_bad_label=skip", "training.batch_size=4",
                                                  "training.steps=120", "training.report_interval=20"], s))
                else:
                    plan.append((kind, DEMO, BASE + over, s))
        for kind, path, over, seed in plan:
            cfg = load_config(path, over + [f"training.seed={seed}"])
            run = trace(cfg, kind)
            runs.append(run)
            print(f"# {kind} seed {seed}: {run.verdict} {run.reason or ''} first bad {run.first_bad}, "
                  f"{run.steps} steps, {run.wall_s:.1f} s", flush=True)
    report(runs, chosen)


def checkpoint_cost(args) -> None:
    """Size and write time of one checkpoint (model, AdamW state, scheduler, monitor, RNG), and the
    ring's disk: keep_checkpoints x size. The write is what every report interval already paid
    before the ring (one checkpoint, the previous one deleted); the ring adds disk only."""
    print("| model | classes | parameters | checkpoint MB | write s (median of 5) | ring of 3, MB |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for model, food in (("small_cnn", False), ("resnet18", True), ("resnet50", True)):
            over = BASE + [f"model.name={model}", "training.steps=1", "training.batch_size=8"]
            if food:  # the incident's six datasets at full size: 2816 classes in the head
                over += [f"datasets.dataset_configs.{n}.num_classes={c}"
                         for n, c in {"food101": 101, "food172": 172, "foodx251": 251, "food2k": 2000,
                                      "fru92": 92, "veg200": 200}.items()] + ["data.synthetic_per_class=1"]
            trainer = Trainer(load_config(DEMO, over), device="cpu")
            trainer.run(until=1)  # AdamW state exists after one step
            times = []
            for i in range(5):
                t0 = time.perf_counter()
                d = trainer.save(Path(tmp) / f"{model}_{i}")
                times.append(time.perf_counter() - t0)
            mb = sum(f.stat().st_size for f in d.iterdir()) / 2**20
            n = sum(p.numel() for p in trainer.params)
            print(f"| {model} | {trainer.space.total} | {n / 1e6:.1f} M | {mb:.1f} | {statistics.median(times):.3f} "
                  f"| {3 * mb:.1f} |", flush=True)


def sweep_ring(args) -> None:
    """One small CPU sweep of the demo in one Ray session, Tune keeping 1 or 3 checkpoints a trial
    (`training.keep_checkpoints`), alternating 1, 3, 1, 3 after one unreported warm-up sweep (the
    first sweep of a session pays Ray's worker start-up and torch's import): wall time and the
    trials' checkpoint disk."""
    import ray

    from stablesweep.sweep.options import SweepOptions
    from stablesweep.sweep.runner import run_sweep

    print("| kept a trial | trials | wall s | trial checkpoints on disk, MB | checkpoint dirs |")
    print("|---|---|---|---|---|")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            space = Path(tmp) / "space.yaml"
            space.write_text("training.lr: {grid: [1.0e-3, 3.0e-3, 1.0e-2, 1.0e+3]}\n")
            for i, keep in enumerate((1, 1, 3, 1, 3)):
                out = Path(tmp) / f"run{i}"
                t0 = time.perf_counter()
                res = run_sweep(SweepOptions(config=str(DEMO), space=str(space), sampler="grid", steps=60,
                                             overrides=BASE + ["training.report_interval=10",
                                                               f"training.keep_checkpoints={keep}"],
                                             asha=False, out=str(out), name="ring", max_concurrent=2),
                                echo=lambda s: None)
                wall = time.perf_counter() - t0
                dirs = list(res.sweep_dir.glob("trial_*/checkpoint_*"))
                mb = sum(f.stat().st_size for d in dirs for f in d.rglob("*") if f.is_file()) / 2**20
                if i:  # the first is the warm-up
                    print(f"| {keep} | {len(res.table)} | {wall:.1f} | {mb:.2f} | {len(dirs)} |", flush=True)
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5, help="stable runs (seeds 0..N-1)")
    ap.add_argument("--failing-seeds", type=int, default=2, help="seeds of each fp32 failing kind")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: on a shared 2-core machine, 2 threads ran 6x slower)")
    ap.add_argument("--checkpoints", action="store_true", help="measure the checkpoint ring's cost instead")
    ap.add_argument("--sweep-ring", action="store_true", help="the ring's cost in a small sweep (1 vs 3 kept)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, CPU, {args.threads} thread(s)")
    (checkpoint_cost if args.checkpoints else sweep_ring if args.sweep_ring else early_warning)(args)


if __name__ == "__main__":
    main()
