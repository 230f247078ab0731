"""Guarded vs unguarded training step, and the host syncs between reports.

    python bench/guard_overhead.py [--model resnet18] [--image-size 64] [--batch 256] [--steps 100] [--ablate]
    python bench/guard_overhead.py --device cpu --image-size 16 --batch 16 --steps 20 --precisions fp32,bf16

The model is a torchvision ResNet-18 with one head over the 2816 classes of the six food datasets;
batches are random images with dataset ids (sorted, as the loader yields them), already on the GPU,
so the step is what is timed. Both steps use the same `slice` loss and fused AdamW with clipping
at 1.0; the guarded one adds what stablesweep adds per step: the non-finite flags, the skip through
the fused optimizer's `found_inf`, the monitor update (with the early-warning signals: the
gradient-norm spike, the largest logit and logsumexp of the logits it is given, the loss-scale
drops), the per-dataset accumulators, and once every `--report-interval` steps the
update-to-weight ratio (a foreach copy of the weights, two foreach norms, one compiled call), as
the Trainer does.

Per step, besides the time: the operators the host dispatches (top-level aten ops, counted with
torch.profiler over a report interval) and on CUDA the kernel launches, for the unguarded and the
guarded step; the guard's cost on a host-bound step is mostly these. `recompiles` counts the
compiled frames dynamo built during the timed steps (0 expected: a recompile, or a fall-back to
eager after too many, would show as overhead). Host syncs are counted with
torch.cuda.set_sync_debug_mode("warn") over 20 guarded steps (the report itself is the one intended
sync). `--ablate` times the guard's parts: the skip alone, + the monitor (its compiled call with
the logit statistics), + the per-dataset accumulators; the full guarded row adds the sampled
update-to-weight ratio.

On CPU (`--device cpu`) the monitor runs eagerly, as the Trainer runs it there (`--compile-monitor`
compiles it as on CUDA); times are host wall clock.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stablesweep.config import FOOD_DATASETS, LossConfig, MonitorConfig  # noqa: E402
from stablesweep.data import Batch, LabelSpace  # noqa: E402
from stablesweep.stability.loss import GuardedLoss  # noqa: E402
from stablesweep.stability.monitor import DivergenceMonitor, copy_weights  # noqa: E402
from stablesweep.stability.precision import make_optimizer, make_precision  # noqa: E402
from stablesweep.train import accumulate  # noqa: E402


def make_batch(space: LabelSpace, batch: int, size: int, device) -> Batch:
    g = torch.Generator().manual_seed(0)
    ids = torch.sort(torch.randint(0, len(space.names), (batch,), generator=g)).values
    n = torch.tensor(space.num_classes)[ids]
    local = (torch.rand(batch, generator=g) * n).long()
    labels = local + torch.tensor(space.offsets)[ids]
    segs, start = [], 0
    for d in range(len(space.names)):
        cnt = int((ids == d).sum())
        if cnt:
            segs.append((d, start, start + cnt))
            start += cnt
    images = torch.randn(batch, 3, size, size, generator=g)
    return Batch(images, labels, local, ids, tuple(segs), 0).to(device)


def build(args, precision: str, device):
    torch.manual_seed(0)
    space = LabelSpace(tuple(FOOD_DATASETS), tuple(FOOD_DATASETS.values()),
                       tuple(sum(list(FOOD_DATASETS.values())[:i]) for i in range(len(FOOD_DATASETS))))
    model = torchvision.models.get_model(args.model, weights=None, num_classes=space.total).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    params = list(model.parameters())
    opt = make_optimizer("adamw", params, lr=1e-4, weight_decay=0.0, momentum=0.9, betas=(0.9, 0.999))
    prec = make_precision(precision, device)
    loss_fn = GuardedLoss(LossConfig(masking="slice"), "slice", space, device)
    batch = make_batch(space, args.batch, args.image_size, device)
    return space, model, params, opt, prec, loss_fn, batch


def unguarded_step(model, params, opt, prec, loss_fn, batch, images):
    with prec.autocast():
        logits = model(images)
    loss = loss_fn(logits, batch).loss
    prec.scaler.scale(loss).backward()
    prec.scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
    prec.scaler.step(opt)  # fused AdamW: GradScaler passes found_inf itself, no sync
    prec.scaler.update()
    opt.zero_grad(set_to_none=True)


def guarded_step(model, params, opt, prec, loss_fn, batch, images, monitor=None, acc=None, acc_fn=None,
                 measure=False):
    """stablesweep's step as the Trainer takes it: the skip; with `monitor`, its update (the logits
    given); with `acc`, the per-dataset accumulators; with `measure`, the update-to-weight ratio
    (the step before a report)."""
    with prec.autocast():
        logits = model(images)
    out = loss_fn(logits, batch)
    prec.backward(out.loss)
    before = copy_weights(params) if measure else None
    prec.step(opt, params, out.loss, 1.0, monitor, logits)
    if before is not None:
        monitor.record_update(before, params)
    opt.zero_grad(set_to_none=True)
    if acc is not None:
        acc[0] = acc_fn(acc[0], logits.detach(), batch.labels, batch.dataset_ids, out.per_sample.detach(),
                        loss_fn.allowed)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(fn, steps: int, device) -> float:
    """ms a step: CUDA events on a GPU, the host's clock on CPU."""
    if device.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        return (time.perf_counter() - t0) / steps * 1e3
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps


def count_syncs(fn, steps: int) -> int:
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def count_ops(fn, steps: int, device) -> tuple[float, float]:
    """(top-level aten ops, kernel launches) a step, with torch.profiler over `steps` steps."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        sync(device)
    ops = launches = 0
    for e in prof.events():
        if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")):
            ops += 1
        elif "LaunchKernel" in e.name:  # cudaLaunchKernel, cudaLaunchKernelExC, cuLaunchKernel
            launches += 1
    return ops / steps, launches / steps


def compiled_frames() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["frames"].values()) if "frames" in counters else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--precisions", default="fp32,bf16,fp16")
    ap.add_argument("--report-interval", type=int, default=10,
                    help="the update-to-weight ratio is measured on one step in this many, as in training")
    ap.add_argument("--ablate", action="store_true",
                    help="also time the guard's parts: skip only, + monitor, + accumulators")
    ap.add_argument("--compile-monitor", action="store_true",
                    help="on CPU, compile the monitor and the accumulators as on CUDA")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU here; use --device cpu")
    device = torch.device(args.device)
    compiled = device.type == "cuda" or args.compile_monitor
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"# {name}, torch {torch.__version__}, {args.model}, {args.image_size}px, batch {args.batch}, "
          f"2816-class head, {args.steps} steps x {args.repeats}, monitor {'compiled' if compiled else 'eager'}")
    print("| precision | unguarded ms/step | guarded ms/step | overhead | ops/step | launches/step | syncs/step |")
    print("|---|---|---|---|---|---|---|")
    for precision in args.precisions.split(","):
        space, model, params, opt, prec, loss_fn, batch = build(args, precision, device)
        images = batch.images.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else batch.images
        monitor = DivergenceMonitor(MonitorConfig(), device, compile=compiled)
        acc = [torch.zeros(len(space.names), 3, dtype=torch.float64, device=device)]
        # as the Trainer does on CUDA
        acc_fn = torch.compile(accumulate, fullgraph=True, dynamic=False) if compiled else accumulate
        count = [0]
        args_ = (model, params, opt, prec, loss_fn, batch, images)

        def g():
            count[0] += 1
            guarded_step(*args_, monitor, acc, acc_fn, count[0] % args.report_interval == 0)
        u = lambda: unguarded_step(*args_)  # noqa: E731
        parts = {}
        if args.ablate:
            parts = {"skip only": lambda: guarded_step(*args_),
                     "skip + monitor": lambda: guarded_step(*args_, monitor),
                     "skip + monitor + accumulators": lambda: guarded_step(*args_, monitor, acc, acc_fn)}
        for _ in range(max(10, args.report_interval)):  # warm-up: every compiled path once
            g(), u()
            for fn in parts.values():
                fn()
        sync(device)
        frames = compiled_frames()
        times: dict[str, list[float]] = {"unguarded": [], "guarded": [], **{k: [] for k in parts}}
        for _ in range(args.repeats):  # interleaved, so drift hits all alike
            times["unguarded"].append(time_steps(u, args.steps, device))
            times["guarded"].append(time_steps(g, args.steps, device))
            for k, fn in parts.items():
                times[k].append(time_steps(fn, args.steps, device))
        recompiles = compiled_frames() - frames
        ops_u, launch_u = count_ops(u, args.report_interval, device)
        ops_g, launch_g = count_ops(g, args.report_interval, device)
        sg = count_syncs(g, 20) / 20 if device.type == "cuda" else float("nan")
        mu, mg = statistics.median(times["unguarded"]), statistics.median(times["guarded"])
        snap, verdict = monitor.read()
        assert verdict.verdict == "stable", verdict
        print(f"#   {precision}: signals {snap.signals}; at risk {snap.at_risk}; recompiles while timed: "
              f"{recompiles}", flush=True)
        print(f"| {precision} unguarded | {mu:.3f} | | | {ops_u:.1f} | {launch_u:.1f} | |")
        for k in parts:
            t = statistics.median(times[k])
            print(f"|   {precision} {k} | {mu:.3f} | {t:.3f} | {100 * (t / mu - 1):+.1f}% | | | |", flush=True)
        print(f"| {precision} guarded | {mu:.3f} | {mg:.3f} | {100 * (mg / mu - 1):+.1f}% | {ops_g:.1f} | "
              f"{launch_g:.1f} | {sg:.2f} |", flush=True)


if __name__ == "__main__":
    main()
