"""Guarded vs unguarded training step on a GPU, and the host syncs between reports.

    python bench/guard_overhead.py [--model resnet18] [--image-size 64] [--batch 256] [--steps 100]

The model is a torchvision ResNet-18 with one head over the 2816 classes of the six food datasets;
batches are random images with dataset ids (sorted, as the loader yields them), already on the GPU,
so the step is what is timed. Both steps use the same `slice` loss and fused AdamW with clipping
at 1.0; the guarded one adds what stablesweep adds per step: the non-finite flags, the skip through
the fused optimizer's `found_inf`, the monitor update (with the early-warning signals: the
gradient-norm spike, the largest logit and logsumexp of the logits it is given, the loss-scale
drops), the per-dataset accumulators, and once every `--report-interval` steps the
update-to-weight ratio (a copy of the weights and two foreach norms), as the Trainer does.

Host syncs are counted with torch.cuda.set_sync_debug_mode("warn") over the steps between two
reports (the report itself is the one intended sync).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stablesweep.config import FOOD_DATASETS, LossConfig, MonitorConfig  # noqa: E402
from stablesweep.data import Batch, LabelSpace  # noqa: E402
from stablesweep.stability.loss import GuardedLoss  # noqa: E402
from stablesweep.stability.monitor import DivergenceMonitor, update_ratio  # noqa: E402
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


def partial_step(model, params, opt, prec, loss_fn, batch, images, monitor=None, measure=False):
    """The guarded step without the per-dataset accumulators (and without the monitor if None);
    with `measure`, the update-to-weight ratio too (the step before a report)."""
    with prec.autocast():
        logits = model(images)
    out = loss_fn(logits, batch)
    prec.backward(out.loss)
    before = [p.detach().clone() for p in params] if measure else None
    prec.step(opt, params, out.loss, 1.0, monitor, logits)
    if before is not None:
        monitor.record_update(update_ratio(before, params))
    opt.zero_grad(set_to_none=True)
    return logits, out


def guarded_step(model, params, opt, prec, loss_fn, batch, images, monitor, acc, acc_fn, measure):
    """stablesweep's step: the partial step plus the per-dataset accumulators, as the Trainer does."""
    logits, out = partial_step(model, params, opt, prec, loss_fn, batch, images, monitor, measure)
    acc[0] = acc_fn(acc[0], logits.detach(), batch.labels, batch.dataset_ids, out.per_sample.detach(),
                    loss_fn.allowed)


def time_steps(fn, steps: int) -> float:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--precisions", default="fp32,bf16,fp16")
    ap.add_argument("--report-interval", type=int, default=10,
                    help="the update-to-weight ratio is measured on one step in this many, as in training")
    ap.add_argument("--ablate", action="store_true",
                    help="also time the guard's parts: skip only, + monitor (eager / compiled)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: this benchmark needs a CUDA GPU")
    device = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name(0)}, torch {torch.__version__}, {args.model}, "
          f"{args.image_size}px, batch {args.batch}, 2816-class head, {args.steps} steps x {args.repeats}")
    print("| precision | unguarded ms/step | guarded ms/step | overhead | syncs/step (guarded) | syncs/step (unguarded) |")
    print("|---|---|---|---|---|---|")
    for precision in args.precisions.split(","):
        space, model, params, opt, prec, loss_fn, batch = build(args, precision, device)
        images = batch.images.contiguous(memory_format=torch.channels_last)
        monitor = DivergenceMonitor(MonitorConfig(), device)
        acc = [torch.zeros(len(space.names), 3, dtype=torch.float64, device=device)]
        acc_fn = torch.compile(accumulate, fullgraph=True, dynamic=False)  # as the Trainer does on CUDA
        count = [0]

        def g():
            count[0] += 1
            guarded_step(model, params, opt, prec, loss_fn, batch, images, monitor, acc, acc_fn,
                         count[0] % args.report_interval == 0)
        u = lambda: unguarded_step(model, params, opt, prec, loss_fn, batch, images)  # noqa: E731
        for _ in range(10):
            g(), u()
        torch.cuda.synchronize()
        tg, tu = [], []
        for _ in range(args.repeats):  # interleaved, so drift hits both alike
            tu.append(time_steps(u, args.steps))
            tg.append(time_steps(g, args.steps))
        import time
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            u()
        host_u = (time.perf_counter() - t0) / 20 * 1e3
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            g()
        host_g = (time.perf_counter() - t0) / 20 * 1e3
        torch.cuda.synchronize()
        print(f"#   host time to issue a step: unguarded {host_u:.3f} ms, guarded {host_g:.3f} ms", flush=True)
        sg = count_syncs(g, 20)
        su = count_syncs(u, 20)
        mu, mg = statistics.median(tu), statistics.median(tg)
        snap, verdict = monitor.read()
        assert verdict.verdict == "stable", verdict
        print(f"#   signals: {snap.signals}; at risk: {snap.at_risk}", flush=True)
        print(f"| {precision} | {mu:.3f} | {mg:.3f} | {100 * (mg / mu - 1):+.1f}% | {sg / 20:.2f} | {su / 20:.2f} |",
              flush=True)
        if args.ablate:
            eager = DivergenceMonitor(MonitorConfig(), device, compile=False)
            parts = {
                "skip only": lambda: partial_step(model, params, opt, prec, loss_fn, batch, images),
                "skip + eager monitor": lambda: partial_step(model, params, opt, prec, loss_fn, batch, images, eager),
                "skip + compiled monitor": lambda: partial_step(model, params, opt, prec, loss_fn, batch, images,
                                                                monitor),
            }
            for name, fn in parts.items():
                for _ in range(5):
                    fn()
                t = statistics.median(time_steps(fn, args.steps) for _ in range(args.repeats))
                print(f"|   {precision} {name} | {mu:.3f} | {t:.3f} | {100 * (t / mu - 1):+.1f}% | | |", flush=True)


if __name__ == "__main__":
    main()
