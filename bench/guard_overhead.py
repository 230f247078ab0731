"""Guarded vs unguarded training step, and the host syncs between reports.

    python3 bench/guard_overhead.py [--model resnet18] [--image-size 64] [--batch 256] [--steps 100] [--ablate]
    python bench/guard_overhead.py --device cpu --image-size 16 --batch 16 --steps 20 --precisions fp32,bf16

The model is a torchvision ResNet-18 with one head over the 2816 classes of the six food datasets;
batches are random images with dataset ids (sorted, as the loader yields them), already on the GPU,
so the step is what is timed. Both steps use the same `slice` loss and fused AdamW with clipping
at 1.0; the guarded one adds what stablesweep adds per step, as the Trainer does: the skip
through the fused optimizer's `found_inf`, the monitor's update (the non-finite flags, the
early-warning signals: the gradient-norm spike, the largest logit and logsumexp of the logits,
the loss-scale drops; the per-dataset loss and accuracy sums), one CUDA graph on CUDA, and once
every `--report-interval` steps the update-to-weight ratio (a copy of the weights into a kept
buffer and the ratio's norms, one CUDA graph each).

Rows are timed in interleaved blocks of `--steps` steps, each block paired with an unguarded block
run beside it (before it in even repeats, after it in odd ones, so neither side always runs first);
the overhead is the median of those paired ratios, with a distribution-free 95% interval of that
median (a host-bound step drifts by several percent over a minute, so unpaired medians mislead).
`--control` adds an unguarded-against-unguarded row: what the method reads when nothing differs. Per step, besides the time: the
operators the host dispatches (top-level aten ops, counted with torch.profiler over a report
interval) and on CUDA the kernel launches. Host syncs are counted with
torch.cuda.set_sync_debug_mode("warn") over 20 guarded steps. `--ablate` adds the skip alone,
+ the monitor, + the per-dataset sums, and the whole guard run op by op (no CUDA graphs);
`--profile` where a step's host time goes, part by part and by position in a report interval;
`--micro` the guard's own calls timed alone, back to back (host µs to issue one, GPU µs to run one),
against a whole unguarded step, with a what-if row: the monitor's step function compiled by
torch.compile (inductor fuses its scalar ops) before it is captured as a CUDA graph.
`--whatif-compiled` times a design that is not shipped, as a row of the table: that compiled monitor.

On CUDA in bf16 and fp32 the guarded row is the Trainer's step: clip, the monitor's step and the
fused capturable AdamW replayed as one CUDA graph (`OneGraphStep`), with its own model; the row
"the monitor's graph alone (fp16's path)" is the path fp16 keeps (clip and optimizer op by op,
the monitor's step one graph). `--micro` and `--profile` time that second path.

On CPU (`--device cpu`) the monitor runs op by op, as the Trainer runs it there; times are host
wall clock.
"""
from __future__ import annotations

import argparse
import contextlib
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
from stablesweep.stability.monitor import DivergenceMonitor  # noqa: E402
from stablesweep.stability.monitor import _step as monitor_step  # noqa: E402
from stablesweep.stability.precision import OneGraphStep, make_optimizer, make_precision  # noqa: E402


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


def unguarded_step(model, params, opt, prec, loss_fn, batch, images, clock=None):
    """`clock`: a list that gets the host seconds from the end of backward to the optimizer's return."""
    with prec.autocast():
        logits = model(images)
    loss = loss_fn(logits, batch).loss
    prec.scaler.scale(loss).backward()
    t0 = time.perf_counter()
    prec.scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
    prec.scaler.step(opt)  # fused AdamW: GradScaler passes found_inf itself, no sync
    prec.scaler.update()
    if clock is not None:
        clock.append(time.perf_counter() - t0)
    opt.zero_grad(set_to_none=True)


def _region(name: str, on: bool):
    return torch.profiler.record_function(name) if on else contextlib.nullcontext()


def guarded_step(model, params, opt, prec, loss_fn, batch, images, monitor=None, sums=False, measure=False,
                 regions=False, clock=None):
    """stablesweep's step as the Trainer takes it: the skip; with `monitor`, its update (the logits
    given); with `sums`, the per-dataset sums in the same call; with `measure`, the update-to-weight
    ratio (the step before a report). `regions`: name the parts for torch.profiler (`--profile`);
    `clock`: as in `unguarded_step`."""
    with _region("forward", regions):
        with prec.autocast():
            logits = model(images)
        out = loss_fn(logits, batch)
    with _region("backward", regions):
        prec.backward(out.loss)
    t0 = time.perf_counter()
    with _region("keep_weights", regions and measure):
        if measure:
            monitor.keep_weights(params)
    with _region("clip+monitor+optimizer", regions):
        stats = (batch.labels, batch.dataset_ids, out.per_sample, loss_fn.allowed) if sums else None
        prec.step(opt, params, out.loss, 1.0, monitor, logits, stats)
    with _region("record_update", regions and measure):
        if measure:
            monitor.record_update(params)
    if clock is not None:
        clock.append(time.perf_counter() - t0)
    opt.zero_grad(set_to_none=True)


class CompiledMonitor(DivergenceMonitor):
    """What-if (`--whatif-compiled`, and a `--micro` row): the monitor's step function compiled by
    torch.compile (inductor fuses its scalar ops into a few kernels) before it is captured as the
    CUDA graph; it costs a compilation at the first step of every trial."""

    def _pure_step(self, x):
        if not hasattr(self, "_compiled"):
            self._compiled = torch.compile(monitor_step, dynamic=False)
        return self._compiled(self.v, self.ring, self.acc, self._slots, self._c, *x)


class ShippedStep:
    """The guarded step as the Trainer takes it in bf16/fp32 on CUDA: `OneGraphStep`, clip + the
    monitor's step + fused capturable AdamW replayed as one CUDA graph, gradients kept in place
    (zero_grad(set_to_none=False)); the update ratio one step in `every` (the monitor's own
    graphs). Its own model, optimizer and monitor, so that the unguarded rows' `set_to_none` never
    moves the gradients its graph reads."""

    def __init__(self, args, precision, device, every: int):
        space, self.model, self.params, _, self.prec, self.loss_fn, self.batch = build(args, precision, device)
        self.images = self.batch.images.contiguous(memory_format=torch.channels_last)
        self.opt = make_optimizer("adamw", self.params, lr=1e-4, weight_decay=0.0, momentum=0.9,
                                  betas=(0.9, 0.999), capturable=True)
        self.monitor = DivergenceMonitor(MonitorConfig(), device, datasets=len(space.names))
        self.step = OneGraphStep(self.prec, self.opt, self.params, 1.0, self.monitor)
        self.every, self.count = every, 0

    def __call__(self) -> None:
        self.count += 1
        measure = self.count % self.every == 0
        with self.prec.autocast():
            logits = self.model(self.images)
        out = self.loss_fn(logits, self.batch)
        self.prec.backward(out.loss)
        if measure:
            self.monitor.keep_weights(self.params)
        self.step(out.loss, logits, (self.batch.labels, self.batch.dataset_ids, out.per_sample, self.loss_fn.allowed))
        if measure:
            self.monitor.record_update(self.params)
        self.opt.zero_grad(set_to_none=False)


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


def paired(u, fn, steps: int, device, repeat: int) -> tuple[float, float]:
    """(unguarded, fn) ms a step, from two blocks side by side, the order alternating by repeat."""
    if repeat % 2:
        t = time_steps(fn, steps, device)
        return time_steps(u, steps, device), t
    return time_steps(u, steps, device), time_steps(fn, steps, device)


def median_ci(xs: list[float]) -> tuple[float, float, float]:
    """The median and a distribution-free 95% interval for it (order statistics, normal
    approximation of the binomial): no assumption on the ratios' distribution."""
    xs, n = sorted(xs), len(xs)
    half = 0.98 * n ** 0.5  # 1.96 * sqrt(n) / 2
    lo, hi = max(0, int(n / 2 - half)), min(n - 1, int(n / 2 + half + 0.999))
    return statistics.median(xs), xs[lo], xs[hi]


def pct(r: float) -> str:
    return f"{100 * (r - 1):+.1f}%"


def count_syncs(fn, steps: int, where: dict | None = None) -> int:
    """Host syncs over `steps` calls; `where` gets each one's Python line and message."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()
             and "debug mode is a prototype" not in str(w.message)]  # the mode's own notice, not a sync
    if where is not None:
        for w in syncs:
            key = f"{Path(w.filename).name}:{w.lineno}: {str(w.message)[:80]}"
            where[key] = where.get(key, 0) + 1
    return len(syncs)


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


SYNC_CALLS = ("Synchronize", "cudaMemcpy", "cuMemcpy", "cudaStreamWaitEvent")


def profile_regions(step_fn, measure_every: int, steps: int, device) -> None:
    """`--profile`: host ms a step by part, plain steps apart from the measured ones, and every
    CUDA call that can block the host, with the part and the aten op it came from."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    with profile(activities=activities) as prof:
        for i in range(1, steps + 1):
            kind = "measured step" if i % measure_every == 0 else "plain step"
            with torch.profiler.record_function(kind):
                step_fn(i % measure_every == 0)
        sync(device)
    kinds = {"plain step": steps - steps // measure_every, "measured step": steps // measure_every}
    host: dict[tuple[str, str], float] = {}
    blocking: dict[tuple[str, str, str], list[float]] = {}

    def ancestors(e):
        while e is not None:
            yield e
            e = e.cpu_parent
    for e in prof.events():
        chain = list(ancestors(e))
        kind = next((a.name for a in chain if a.name in kinds), None)
        if kind is None:
            continue
        part = next((a.name for a in chain[1:] if a.name in PARTS), None)
        if e.name in kinds or (e.name in PARTS and part is None):
            host[(kind, e.name)] = host.get((kind, e.name), 0.0) + e.cpu_time_total / 1e3
        if any(s in e.name for s in SYNC_CALLS):
            op = next((a.name for a in chain[1:] if a.name.startswith("aten::")), "-")
            blocking.setdefault((kind, part or "-", f"{e.name} <- {op}"), []).append(e.cpu_time_total / 1e3)
    # step by step over whole report intervals: which position in the interval costs (host and GPU)
    cycles = 20
    host_ms = [[0.0] * measure_every for _ in range(cycles)]
    events = [torch.cuda.Event(enable_timing=True) for _ in range(cycles * measure_every + 1)] \
        if device.type == "cuda" else []
    sync(device)
    for c in range(cycles):
        for j in range(measure_every):
            if events:
                events[c * measure_every + j].record()
            t0 = time.perf_counter()
            step_fn(j == measure_every - 1)
            host_ms[c][j] = (time.perf_counter() - t0) * 1e3
    if events:
        events[-1].record()
    sync(device)
    print("| position in a report interval | host ms to issue | GPU ms start to next start |")
    print("|---|---|---|")
    for j in range(measure_every):
        h = statistics.median(host_ms[c][j] for c in range(cycles))
        g = statistics.median(events[c * measure_every + j].elapsed_time(events[c * measure_every + j + 1])
                              for c in range(cycles)) if events else float("nan")
        print(f"| {j + 1}{' (measured)' if j == measure_every - 1 else ''} | {h:.3f} | {g:.3f} |")
    print("| part | plain step host ms | measured step host ms |")
    print("|---|---|---|")
    for name in ("plain step", *PARTS):
        row = [host.get((k, "measured step" if name == "plain step" and k == "measured step" else name), 0.0) / n
               for k, n in kinds.items()]
        print(f"| {'whole step' if name == 'plain step' else name} | {row[0]:.3f} | {row[1]:.3f} |")
    print("| blocking call (kind, part, call <- op) | calls a step | ms a step |")
    print("|---|---|---|")
    for (kind, part, call), ms in sorted(blocking.items(), key=lambda kv: -sum(kv[1])):
        print(f"| {kind}, {part}, {call} | {len(ms) / kinds[kind]:.2f} | {sum(ms) / kinds[kind]:.3f} |")


def call_cost(fn, calls: int, device) -> tuple[float, float]:
    """(host µs to issue one call, GPU µs from the first to the last: the larger of the two is
    what `calls` back-to-back calls cost), median of 5 blocks."""
    host, gpu = [], []
    cuda = device.type == "cuda"
    for _ in range(5):
        sync(device)
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        host.append((time.perf_counter() - t0) / calls * 1e6)
        if cuda:
            end.record()
        sync(device)
        gpu.append(start.elapsed_time(end) / calls * 1e3 if cuda else host[-1])
    return statistics.median(host), statistics.median(gpu)


def micro(args, precision: str, device, built, step_ms: float) -> None:
    """`--micro`: the guard's calls alone, with the inputs of a real step."""
    space, model, params, opt, prec, loss_fn, batch = built
    images = batch.images.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else batch.images
    # in a real step: host µs from the end of backward to the optimizer's return (the guarded side
    # includes keep_weights/record_update on one step in --report-interval), blocks alternating
    m = DivergenceMonitor(MonitorConfig(), device, len(space.names))
    clocks: dict[str, list[float]] = {"unguarded": [], "guarded": []}
    for r in range(2 * 20):
        kind = ("unguarded", "guarded")[r % 2]
        times = []
        for i in range(1, 2 * args.report_interval + 1):
            if kind == "guarded":
                guarded_step(model, params, opt, prec, loss_fn, batch, images, m, True, i % args.report_interval == 0,
                             clock=times)
            else:
                unguarded_step(model, params, opt, prec, loss_fn, batch, images, clock=times)
        clocks[kind].append(statistics.mean(times) * 1e6)
    sync(device)
    in_step = {k: statistics.median(v) for k, v in clocks.items()}
    with prec.autocast():
        logits = model(images)
    out = loss_fn(logits, batch)
    prec.backward(out.loss)
    norm = torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
    loss, scale = out.loss.detach(), (prec.scale().clone() if prec.scaler.is_enabled() else None)
    stats = (batch.labels, batch.dataset_ids, out.per_sample.detach(), loss_fn.allowed)
    logits = logits.detach()

    rows = {}
    for name, m in [("monitor.update, CUDA graph (as shipped)", DivergenceMonitor(MonitorConfig(), device, 6)),
                    ("monitor.update, op by op", DivergenceMonitor(MonitorConfig(), device, 6, graph=False)),
                    ("monitor.update, torch.compile then CUDA graph (what-if)", CompiledMonitor(MonitorConfig(), device, 6))]:
        t0 = time.perf_counter()
        m.update(loss, norm, scale, logits, stats)
        sync(device)
        first = time.perf_counter() - t0
        rows[name] = (*call_cost(lambda: m.update(loss, norm, scale, logits, stats), 200, device), first)
    m = DivergenceMonitor(MonitorConfig(), device, 6)
    m.keep_weights(params)
    rows["keep_weights + record_update (1 step in a report interval)"] = (
        *call_cost(lambda: (m.keep_weights(params), m.record_update(params)), 50, device), float("nan"))
    skip = torch.zeros((), device=device)

    def found_inf(flag):
        def step():
            opt.grad_scale, opt.found_inf = None, flag
            try:
                opt.step()
            finally:
                del opt.grad_scale, opt.found_inf
        return step
    with torch.no_grad():
        base = call_cost(opt.step, 50, device)
        skipped = call_cost(found_inf(skip), 50, device)
    rows["fused AdamW step: with found_inf minus without"] = (skipped[0] - base[0], skipped[1] - base[1], float("nan"))
    print(f"#   {precision} --micro: in a real step, host µs from the end of backward to the optimizer's return: "
          f"unguarded {in_step['unguarded']:.1f}, guarded {in_step['guarded']:.1f}: the guard adds "
          f"{in_step['guarded'] - in_step['unguarded']:.1f} µs, {100 * (in_step['guarded'] - in_step['unguarded']) / (step_ms * 1e3):.2f}%"
          f" of a step (median of 20 blocks of {2 * args.report_interval} steps each)")
    print(f"#   {precision} --micro: each call alone, back to back; an unguarded step is {step_ms * 1e3:.0f} µs")
    print("| call | host µs to issue | GPU µs to run | of a step (larger of the two) | first call s |")
    print("|---|---|---|---|---|")
    for name, (h, g, first) in rows.items():
        print(f"| {name} | {h:.1f} | {g:.1f} | {100 * max(h, g) / (step_ms * 1e3):.2f}% | {first:.2f} |", flush=True)
    opt.zero_grad(set_to_none=True)


PARTS = ("forward", "backward", "keep_weights", "clip+monitor+optimizer", "record_update")


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
                    help="also time the guard's parts (skip only, + monitor, + per-dataset sums) and the "
                         "whole guard run op by op (monitor.cuda_graphs: false)")
    ap.add_argument("--control", action="store_true",
                    help="also time unguarded against unguarded: the method's own reading when nothing differs")
    ap.add_argument("--whatif-compiled", action="store_true",
                    help="also time a what-if: the monitor's step compiled by torch.compile before its CUDA graph")
    ap.add_argument("--measure-only", action="store_true",
                    help="also time a guarded step that measures the update ratio every step (its own cost)")
    ap.add_argument("--profile", action="store_true",
                    help="also print host ms a step by part (plain and measured steps) and every blocking CUDA call")
    ap.add_argument("--micro", action="store_true",
                    help="also time the guard's calls alone (host and GPU µs a call, and a compiled what-if)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU here; use --device cpu")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"# {name}, torch {torch.__version__}, {args.model}, {args.image_size}px, batch {args.batch}, "
          f"2816-class head, {args.repeats} interleaved blocks of {args.steps} steps; overhead = median of each "
          f"block's ratio to the unguarded block beside it [95% interval of that median]")
    print("| precision | unguarded ms/step | guarded ms/step | overhead [95% interval] | ops/step | launches/step "
          "| syncs/step |")
    print("|---|---|---|---|---|---|---|")
    for precision in args.precisions.split(","):
        space, model, params, opt, prec, loss_fn, batch = build(args, precision, device)
        images = batch.images.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else batch.images
        monitor = DivergenceMonitor(MonitorConfig(), device, datasets=len(space.names))
        args_ = (model, params, opt, prec, loss_fn, batch, images)

        def cycling(mon):
            count = [0]

            def step():
                count[0] += 1
                guarded_step(*args_, mon, True, count[0] % args.report_interval == 0)
            return step
        u = lambda: unguarded_step(*args_)  # noqa: E731
        parts = {}
        g = cycling(monitor)  # the monitor's graph alone, clip and optimizer op by op: fp16's path
        if device.type == "cuda" and precision != "fp16":  # the Trainer's: the whole step one graph
            parts["guarded, the monitor's graph alone (fp16's path)"] = g
            g = ShippedStep(args, precision, device, args.report_interval)
            monitor = g.monitor
        if args.ablate:
            parts = {"skip only": lambda: guarded_step(*args_),
                     "skip + monitor": lambda: guarded_step(*args_, monitor),
                     "skip + monitor + per-dataset sums": lambda: guarded_step(*args_, monitor, True),
                     "guarded, op by op (no CUDA graphs)": cycling(
                         DivergenceMonitor(MonitorConfig(), device, datasets=len(space.names), graph=False))}
        if args.measure_only:
            parts["guarded, update ratio every step"] = lambda: guarded_step(*args_, monitor, True, True)
        if args.control:
            parts["unguarded again (control)"] = u
        if args.whatif_compiled:
            parts["what-if: the monitor's step compiled, then its CUDA graph"] = cycling(
                CompiledMonitor(MonitorConfig(), device, datasets=len(space.names)))
        for _ in range(max(10, 2 * args.report_interval)):  # warm-up: every path, every graph captured
            g(), u()
            for fn in parts.values():
                fn()
        sync(device)
        times: dict[str, list[float]] = {"unguarded": [], "guarded": [], **{k: [] for k in parts}}
        ratios: dict[str, list[float]] = {k: [] for k in times}
        for r in range(args.repeats):  # interleaved, each row against the unguarded block beside it
            for k, fn in [("guarded", g), *parts.items()]:
                ut, t = paired(u, fn, args.steps, device, r)
                times["unguarded"].append(ut)
                times[k].append(t)
                ratios[k].append(t / ut)
        ops_u, launch_u = count_ops(u, args.report_interval, device)
        ops_g, launch_g = count_ops(g, args.report_interval, device)
        where: dict[str, int] = {}
        sg = count_syncs(g, 20, where) / 20 if device.type == "cuda" else float("nan")
        for line, n in where.items():
            print(f"#   {precision}: sync x{n} in 20 guarded steps at {line}")
        snap, verdict = monitor.read()
        assert verdict.verdict == "stable", verdict
        print(f"#   {precision}: signals {snap.signals}; at risk {snap.at_risk}; CUDA graphs {monitor.cuda_graphs}",
              flush=True)
        mu = statistics.median(times["unguarded"])
        print(f"| {precision} unguarded | {mu:.3f} | | | {ops_u:.1f} | {launch_u:.1f} | |")
        for k in [*parts, "guarded"]:
            r, lo, hi = median_ci(ratios[k])
            cells = f"{ops_g:.1f} | {launch_g:.1f} | {sg:.2f}" if k == "guarded" else " | "
            print(f"| {'' if k == 'guarded' else '  '}{precision} {k} | {mu:.3f} | {statistics.median(times[k]):.3f} | "
                  f"{pct(r)} [{pct(lo)}, {pct(hi)}] | {cells} |", flush=True)
        if args.micro:
            micro(args, precision, device, (space, model, params, opt, prec, loss_fn, batch), mu)
        if args.profile:
            print(f"#   {precision}: where a guarded step's host time goes (torch.profiler, {args.report_interval * 3} steps)")
            profile_regions(lambda m: guarded_step(*args_, monitor, True, m, regions=True),
                            args.report_interval, args.report_interval * 3, device)

if __name__ == "__main__":
    main()
