"""The training loop: one file says what training is.

`run_training(cfg, report)` runs the multi-dataset model with the guarded loss and ends with one
verdict. It imports neither Ray nor MLflow: it calls `report(metrics, checkpoint_dir)` once per
report interval (the monitor's one host sync) and once at the end, so the same loop serves
`stablesweep train`, tests, benchmarks and Tune trials.

Data parallel: when torch.distributed is initialized (by Ray Train in a sweep's multi-worker
trial, or by torchrun), the loop runs on every rank with DDP: each rank trains on its share of
every global batch of `training.batch_size`, and the monitor's state and the per-dataset sums are
reduced once per report (see stablesweep.ddp), so every rank reports the same metrics and
reaches the same verdict at the same step; rank 0 writes the checkpoints.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.flop_counter import FlopCounterMode

from stablesweep.config import Config, ConfigError, total_steps
from stablesweep.data import DeviceInput, MultiData, build_data
from stablesweep.ddp import gather_rows, ranks, reduce_monitor, spread_nonfinite
from stablesweep.model import build_model
from stablesweep.stability.loss import GuardedLoss
from stablesweep.stability.monitor import DivergenceMonitor, Snapshot, Verdict, progress, signal_key, thresholds
from stablesweep.stability.precision import OneGraphStep, make_optimizer, make_precision
from stablesweep.vocab import (
    AT_RISK,
    AT_RISK_SIGNAL,
    AT_RISK_STEP,
    BUDGET_STEPS,
    FIRST_BAD_STEP,
    FLOPS_PER_STEP,
    GRAD_NORM,
    HISTORY,
    INITIAL_LOSS,
    LAST_LOSS,
    LOSS,
    LR,
    MAX_GRAD_NORM_SEEN,
    NONFINITE_STEPS,
    OBJECTIVE,
    OVERFLOW_STEPS,
    PROGRESS,
    REASON,
    SAMPLES_PER_S,
    STEP,
    TRAIN_FLOPS,
    VERDICT,
)

Report = Callable[[dict, "str | None"], None]
CHECKPOINT_FILE = "checkpoint.pt"
LINE_EVERY_S = 10.0  # with a log: a progress line after the first step, then at least this often


@dataclass
class TrainResult:
    verdict: str
    reason: str | None
    first_bad_step: int
    steps: int  # optimizer steps run (skipped ones included)
    budget_steps: int  # the step budget the verdict holds for
    train_flops: float
    flops_per_step: float
    objective: float
    initial_loss: float
    final_loss: float  # smoothed train loss at the end
    progress: float  # 1 - final_loss / initial_loss: a stable run has at least monitor.min_progress
    samples_per_s: float
    wall_s: float
    device: str
    precision: str
    masking: str
    lr: float
    nonfinite_loss_steps: int = 0
    nonfinite_grad_steps: int = 0
    overflow_steps: int = 0
    dropped_samples: int = 0
    max_grad_norm_seen: float = math.nan
    datasets: dict[str, dict[str, float]] = field(default_factory=dict)
    history: list[tuple[int, float, float]] = field(default_factory=list)  # diverged: (step, loss, grad norm) before the end
    # early warning (monitor.SIGNALS): the first signal over its threshold and its step; each
    # signal's largest value and first warning step (-1: none)
    at_risk: bool = False
    at_risk_signal: str | None = None
    at_risk_step: int = -1
    signals: dict[str, float] = field(default_factory=dict)
    warnings: dict[str, int] = field(default_factory=dict)
    base_dir: str = "."  # where the config's relative paths resolve (stablesweep explain reloads it)

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is visible on this machine "
                          "(torch.cuda.is_available() is False); use --device cpu or auto")
    return dev


def schedule_factor(step: int, warmup: int, total: int, schedule: str, ratio: float = 1.0) -> float:
    """Linear warmup to 1, then constant, cosine decay to 0 at `total`, or exponential growth to
    `ratio` (lr_final / lr) at the last step."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "exponential":
        return ratio ** (min(step, total - 1) / max(1, total - 1))
    if schedule == "cosine":
        span = max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / span)))
    return 1.0


def fallback_objective(initial_loss: float, total_classes: int) -> float:
    """The finite objective of a run that diverged: its initial loss (as in Wortsman et al.'s LR
    sensitivity), or chance-level cross entropy if even that was not finite."""
    return initial_loss if math.isfinite(initial_loss) else math.log(total_classes)


class Trainer:
    """Holds the parts of one run; `run()` is the loop.

    `data`: the run's data when the caller built it (diagnose's probe, which keeps out-of-range
    labels); by default `build_data(cfg)`, whose pre-flight checks every label and file first.
    """

    def __init__(self, cfg: Config, *, device: str = "auto", log: Callable[[str], None] | None = None,
                 data: MultiData | None = None):
        self.cfg = cfg
        self.ranks = ranks()
        self.talks = log is not None and self.ranks.main  # progress lines between reports too
        self.log = log if self.talks else (lambda s: None)
        self.device = resolve_device(device)
        t = cfg.training
        if t.batch_size % self.ranks.world:
            raise ConfigError(f"{cfg.source}: training.batch_size {t.batch_size}: not a multiple of the "
                              f"{self.ranks.world} data-parallel workers (each takes an equal share of a batch)")
        self.shard = (self.ranks.rank, self.ranks.world)
        torch.manual_seed(t.seed)
        self.data = build_data(cfg, log=self.log) if data is None else data
        self.space = self.data.label_space
        self.model = build_model(cfg.model, self.space.total, cfg.source).to(self.device)
        self.channels_last = self.device.type == "cuda" and cfg.model.channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # the model that trains: DDP all-reduces its gradients across the ranks (rank 0's weights to start)
        self.net = self.model
        if self.ranks.parallel:
            self.net = DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda" else None)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.precision = make_precision(t.precision, self.device, t.tf32)
        # batches onto the device: uint8 copied ahead on a side stream, normalised (augmented) there
        self.input = DeviceInput(self.device, self.precision.dtype, cfg.data.augment, t.seed, self.channels_last)
        self.pin_memory = self.device.type == "cuda"
        # on CUDA in bf16/fp32, the guarded step (clip, monitor, AdamW) is replayed as one CUDA graph
        one_graph = OneGraphStep.fits(self.precision, t.optimizer, self.ranks.parallel, cfg.monitor.cuda_graphs)
        self.optimizer = make_optimizer(t.optimizer, self.params, lr=t.lr, weight_decay=t.weight_decay,
                                        momentum=t.momentum, betas=t.betas, capturable=one_graph)
        self.total = total_steps(cfg, self.data.train_size)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: schedule_factor(s, t.warmup_steps, self.total, t.schedule,
                                                (t.lr_final or t.lr) / t.lr))
        self.loss_fn = GuardedLoss(cfg.loss, cfg.masking, self.space, self.device)
        self.monitor = DivergenceMonitor(cfg.monitor, self.device, datasets=len(self.space.names))
        self.one_graph = OneGraphStep(self.precision, self.optimizer, self.params, t.max_grad_norm,
                                      self.monitor) if one_graph else None
        self.step = 0
        self.flops_per_step = 0.0
        self.dropped = 0
        self._allowed = None if cfg.masking == "none" else self.loss_fn.allowed

    # -- one step ---------------------------------------------------------------------------
    def forward(self, batch, model: torch.nn.Module | None = None):
        """The logits and the guarded loss (a LossOutput) of a batch on the device, through `model`
        (default the bare model; a training step passes the DDP one)."""
        images = batch.images
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self.precision.autocast():
            logits = (model or self.model)(images)
        return logits, self.loss_fn(logits, batch)

    def update(self, loss: torch.Tensor, logits: torch.Tensor | None = None, measure_update: bool = False,
               batch: tuple | None = None) -> None:
        """Backward, the guarded optimizer step (unscale, clip, skip a non-finite step; the monitor
        gets the raw `logits` for its signals and `batch` for its per-dataset sums; on CUDA in
        bf16/fp32 the whole step is one CUDA graph, `OneGraphStep`, otherwise the monitor's part
        is), the scheduler. With `measure_update`, also the update-to-weight ratio (a foreach
        copy of the weights and two foreach norms on the device: on the step before each report
        only)."""
        self.precision.backward(spread_nonfinite(loss) if self.ranks.parallel else loss)
        if measure_update:
            self.monitor.keep_weights(self.params)
        if self.one_graph is not None:
            self.one_graph(loss, logits, batch)
        else:
            self.precision.step(self.optimizer, self.params, loss, self.cfg.training.max_grad_norm, self.monitor,
                                logits, batch)
        if measure_update:
            self.monitor.record_update(self.params)
        self.optimizer.zero_grad(set_to_none=self.one_graph is None)  # the graph reads the gradients in place
        self.scheduler.step()

    def _train_step(self, batch, measure_update: bool = False) -> None:
        logits, out = self.forward(batch, self.net)
        self.update(out.loss, logits, measure_update, (batch.labels, batch.dataset_ids, out.per_sample, self._allowed))

    @torch.no_grad()
    def initial_loss(self, batches: int) -> torch.Tensor:
        """The mean loss of the first `batches` training batches at the initial weights, as a device
        tensor: the baseline a run's progress is measured from. The model's buffers (BatchNorm
        statistics) and the RNG are restored, so the run goes on exactly as without it."""
        t = self.cfg.training
        buffers = [b.clone() for b in self.model.buffers()]
        rng = torch.get_rng_state()
        rng_cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        it = self.data.train_batches(t.batch_size, t.seed, start_step=0, num_workers=0, shard=self.shard)
        losses = []
        for k in range(batches):
            losses.append(self.forward(self.input(next(it), step=k))[1].loss.float())
        for b, saved in zip(self.model.buffers(), buffers):
            b.copy_(saved)
        torch.set_rng_state(rng)
        if rng_cuda is not None:
            torch.cuda.set_rng_state(rng_cuda, self.device)
        return torch.stack(losses).mean()

    # -- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, dict[str, float]]:
        self.model.eval()
        sums, counts = [], []
        for name in self.data.eval_names:
            acc, n = torch.zeros(2, dtype=torch.float64, device=self.device), 0
            for batch in self.data.eval_batches(name, self.cfg.training.batch_size, self.cfg.training.num_workers,
                                                pin_memory=self.pin_memory, shard=self.shard):
                batch = self.input(batch)  # never augmented
                logits, out = self.forward(batch)
                correct = (self.loss_fn.predict(logits, batch) == batch.labels).double().sum()
                acc += torch.stack([out.per_sample.double().sum(), correct])
                n += len(batch.labels)
            sums.append(acc)
            counts.append(n)
        self.model.train()
        if not sums:
            return {}
        totals = torch.cat([torch.stack(sums), torch.tensor(counts, dtype=torch.float64, device=self.device)[:, None]], 1)
        if self.ranks.parallel:  # each rank evaluated its share: the sums of all
            torch.distributed.all_reduce(totals)
        values = totals.tolist()  # one sync for the whole evaluation
        return {name: {"loss": s / max(n, 1), "accuracy": c / max(n, 1), "samples": int(n)}
                for name, (s, c, n) in zip(self.data.eval_names, values)}

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "precision": self.precision.state_dict(),
            "monitor": self.monitor.state_dict(),
            "flops_per_step": self.flops_per_step,
            "dropped": self.dropped,
            "rng_cpu": torch.get_rng_state(),
            "config": self.cfg.to_dict(),
        }
        if self.device.type == "cuda":
            state["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / (CHECKPOINT_FILE + ".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(directory / CHECKPOINT_FILE)
        return directory

    def load(self, directory: str | Path, *, keep_config_lr: bool = False) -> None:
        """Restore a checkpoint. `keep_config_lr`: train on at this config's lr (a warm start at a
        new lr, as the ramp's continue mode does) instead of the checkpoint's."""
        path = Path(directory)
        path = path / CHECKPOINT_FILE if path.is_dir() else path
        if not path.exists():
            raise ConfigError(f"resume: no checkpoint at {path}")
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.one_graph is not None:
            self.one_graph.reset()  # its graphs read the optimizer state the load replaced
        self.scheduler.load_state_dict(state["scheduler"])
        if keep_config_lr:
            self.scheduler.base_lrs = [self.cfg.training.lr for _ in self.optimizer.param_groups]
            for g in self.optimizer.param_groups:
                g["initial_lr"] = self.cfg.training.lr
                g["lr"] = self.cfg.training.lr * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        self.precision.load_state_dict(state["precision"])
        self.monitor.load_state_dict(state["monitor"])
        self.step = int(state["step"])
        self.flops_per_step = float(state["flops_per_step"])
        self.dropped = int(state["dropped"])
        torch.set_rng_state(state["rng_cpu"].cpu())
        if "rng_cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng_cuda"].cpu(), self.device)

    # -- the loop ---------------------------------------------------------------------------
    def run(self, report: Report | None = None, checkpoint_dir: str | Path | None = None,
            until: int | None = None) -> TrainResult:
        """Train to the budget, or to step `until` on the budget's schedule (a replay of a few
        steps, as `stablesweep explain` does), or until the run diverges."""
        cfg, t = self.cfg, self.cfg.training
        end = self.total if until is None else min(until, self.total)
        names = self.space.names
        self.log(f"training {self.total} steps of {cfg.model.factory or cfg.model.name} on {self.device} "
                 f"({t.precision}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, masking {cfg.masking}, lr {t.lr:.2e}, "
                 f"clip {t.max_grad_norm}), {len(names)} datasets, {self.space.total} classes, "
                 f"a report every {t.report_interval} steps")
        batches = self.input.batches(self.data.train_batches(t.batch_size, t.seed, start_step=self.step,
                                                             num_workers=t.num_workers, pin_memory=self.pin_memory,
                                                             shard=self.shard),
                                     self.step)
        started = time.perf_counter()
        tick, tick_step, samples_per_s = started, self.step, 0.0
        first, line_at = self.step, started  # between reports: a line after the first step, then every LINE_EVERY_S
        kept: list[Path] = []  # this run's checkpoints, oldest first: the last training.keep_checkpoints
        verdict, snap, reports = Verdict("stable"), None, 0
        history: list[tuple[int, float, float]] = []
        evals: dict[str, dict[str, float]] = {}
        done = self.step >= end
        # where the monitor's state is in host memory (CPU, one process) reading it costs no device
        # sync: a diverged run is read each step and ends at its first bad step, with a report there;
        # elsewhere at the report that follows it (one sync an interval)
        stop_now = cfg.monitor.stop_on_divergence and self.device.type == "cpu" and not self.ranks.parallel
        if self.step == 0 and cfg.monitor.initial_batches:
            self.monitor.set_initial_loss(self.initial_loss(cfg.monitor.initial_batches))
        while not done:
            batch = next(batches)
            self.dropped += batch.dropped
            measure = (self.step + 1) % t.report_interval == 0 or self.step + 1 >= end
            if not self.flops_per_step:
                with FlopCounterMode(display=False) as counter:
                    self._train_step(batch, measure)
                self.flops_per_step = float(counter.get_total_flops()) * self.ranks.world
            else:
                self._train_step(batch, measure)
            self.step += 1
            if self.step % t.report_interval and self.step < end and not (stop_now and self.monitor.diverged_now()):
                if self.talks and (self.step == first + 1 or time.perf_counter() - line_at >= LINE_EVERY_S):
                    line_at = time.perf_counter()  # a host clock each step; the device is read only here
                    self.log(self._between_line(first, started, line_at))
                continue
            # -- report: the one host sync of the interval --------------------------------
            acc = self.monitor.acc
            state = torch.cat([self.monitor.state_vector(), acc.flatten()])
            k = state.numel() - acc.numel()
            if self.ranks.parallel:  # the one collective of the interval; every rank goes on from the run's state
                rows = gather_rows(state)
                state = torch.cat([reduce_monitor(rows[:, :k]), rows[:, k:].sum(0)])
                self.monitor.load_state_dict({"v": state[:k]})
            values = state.tolist()
            acc.zero_()
            snap = self.monitor.snapshot(values[:k])
            verdict = self.monitor.judge(snap, final=self.step >= self.total)
            per_ds = [values[k + i::3] for i in range(3)]
            now = time.perf_counter()
            samples_per_s = (self.step - tick_step) * t.batch_size / max(now - tick, 1e-9)
            tick, tick_step = now, self.step
            reports += 1
            done = self.step >= end or (verdict.diverged and cfg.monitor.stop_on_divergence)
            if not verdict.diverged and (self.step >= self.total or (t.eval_every and reports % t.eval_every == 0)):
                evals = self.evaluate()
            metrics = self._metrics(snap, verdict, samples_per_s, done, evals, per_ds)
            if done and verdict.diverged:  # what led there: the last steps, read once
                history = self.monitor.history()
                metrics[HISTORY] = history
            self.log(self._progress_line(metrics, per_ds))
            line_at = time.perf_counter()
            ckpt = None
            if (checkpoint_dir is not None and self.ranks.main and t.checkpoint_every
                    and (reports % t.checkpoint_every == 0 or done)):
                ckpt = self.save(Path(checkpoint_dir) / f"checkpoint_{self.step:08d}")
            if report is not None:
                report(metrics, str(ckpt) if ckpt else None)
            if ckpt is not None and ckpt not in kept:
                kept.append(ckpt)
                while len(kept) > t.keep_checkpoints:
                    shutil.rmtree(kept.pop(0), ignore_errors=True)
        if snap is None:  # resumed at the end: nothing left to run
            snap = self.monitor.snapshot()
            verdict = self.monitor.judge(snap, final=True)
            evals = {} if verdict.diverged else self.evaluate()
        wall = time.perf_counter() - started
        metrics = self._metrics(snap, verdict, samples_per_s, True, evals, None)
        return TrainResult(
            verdict=verdict.verdict, reason=verdict.reason, first_bad_step=verdict.first_bad_step,
            steps=self.step, budget_steps=self.total, train_flops=metrics[TRAIN_FLOPS],
            flops_per_step=self.flops_per_step, objective=metrics[OBJECTIVE],
            initial_loss=snap.initial_loss, final_loss=snap.smoothed_loss, progress=progress(snap), samples_per_s=samples_per_s,
            wall_s=wall, device=str(self.device), precision=t.precision, masking=cfg.masking, lr=t.lr,
            nonfinite_loss_steps=snap.nonfinite_loss_steps, nonfinite_grad_steps=snap.nonfinite_grad_steps,
            overflow_steps=snap.overflow_steps, dropped_samples=self.dropped,
            max_grad_norm_seen=snap.max_grad_norm, datasets=evals, history=history,
            at_risk=metrics[AT_RISK], at_risk_signal=metrics[AT_RISK_SIGNAL], at_risk_step=metrics[AT_RISK_STEP],
            signals=snap.signals, warnings=snap.warnings, base_dir=cfg.base_dir,
        )

    def _metrics(self, snap: Snapshot, verdict: Verdict, samples_per_s: float, done: bool,
                 evals: dict, per_ds: list | None) -> dict:
        if verdict.diverged:
            objective = fallback_objective(snap.initial_loss, self.space.total)
        elif done and evals and all(math.isfinite(e["loss"]) for e in evals.values()):
            objective = sum(e["loss"] for e in evals.values()) / len(evals)
        elif math.isfinite(snap.smoothed_loss):
            objective = snap.smoothed_loss
        else:
            objective = fallback_objective(snap.initial_loss, self.space.total)
        m = {
            STEP: self.step, BUDGET_STEPS: self.total, "done": done,
            VERDICT: verdict.verdict, REASON: verdict.reason, FIRST_BAD_STEP: verdict.first_bad_step,
            OBJECTIVE: objective, LOSS: snap.smoothed_loss, LAST_LOSS: snap.last_loss,
            INITIAL_LOSS: snap.initial_loss, PROGRESS: progress(snap), GRAD_NORM: snap.last_grad_norm,
            MAX_GRAD_NORM_SEEN: snap.max_grad_norm,
            NONFINITE_STEPS: snap.nonfinite_loss_steps + snap.nonfinite_grad_steps,
            OVERFLOW_STEPS: snap.overflow_steps,
            TRAIN_FLOPS: self.flops_per_step * self.step, FLOPS_PER_STEP: self.flops_per_step,
            SAMPLES_PER_S: samples_per_s, LR: self.optimizer.param_groups[0]["lr"],
            **snap.signal_metrics(),
        }
        if per_ds is not None:
            for i, name in enumerate(self.space.names):
                n = per_ds[1][i]
                if n:
                    m[f"train_loss/{name}"] = per_ds[0][i] / n
                    m[f"train_acc/{name}"] = per_ds[2][i] / n
        for name, e in evals.items():
            m[f"eval_loss/{name}"] = e["loss"]
            m[f"eval_acc/{name}"] = e["accuracy"]
        return m

    def _between_line(self, first: int, started: float, now: float) -> str:
        """A short line between reports (one read of the monitor's state; nothing is judged)."""
        snap, t = self.monitor.snapshot(), self.cfg.training
        rate = (self.step - first) * t.batch_size / max(now - started, 1e-9)
        report = min(self.total, (self.step // t.report_interval + 1) * t.report_interval)
        return (f"step {self.step:>{len(str(self.total))}}/{self.total}  loss {snap.last_loss:.4g}  "
                f"{rate:.1f} samples/s  ({now - started:.0f}s; next report at step {report})")

    def _warning(self, m: dict) -> str:
        """The early warning, said as what it is: which signal crossed which threshold (its config
        key), where, its largest value since; a warning, not a verdict (the bracket says that)."""
        name, limit = m[AT_RISK_SIGNAL], thresholds(self.cfg.monitor)[m[AT_RISK_SIGNAL]]
        return (f"  warning, not a verdict: {name} {m[signal_key(name)]:.3g} (largest so far) crossed "
                f"monitor.warn_{name}={limit:g} at step {m[AT_RISK_STEP]}")

    def _progress_line(self, m: dict, per_ds: list) -> str:
        width = len(str(self.total))
        head = (f"step {m[STEP]:>{width}}/{self.total}  loss {m[LAST_LOSS]:.4g} (smoothed {m[LOSS]:.4g})  "
                f"grad {m[GRAD_NORM]:.3g}  lr {m[LR]:.2e}  {m[SAMPLES_PER_S]:.0f} samples/s  "
                f"[{m[VERDICT]}{' ' + m[REASON] + ' at step ' + str(m[FIRST_BAD_STEP]) if m[REASON] else ''}]"
                f"{self._warning(m) if m[AT_RISK] else ''}")
        parts = []
        for name in self.space.names:
            if f"train_loss/{name}" in m:
                parts.append(f"{name} {m[f'train_loss/{name}']:.3g}/{100 * m[f'train_acc/{name}']:.1f}%")
        lines = [head, "    train loss/acc: " + "  ".join(parts)] if parts else [head]
        evals = [n for n in self.space.names if f"eval_loss/{n}" in m]
        for name in evals:
            lines.append(f"    Eval {name}: Loss: {m[f'eval_loss/{name}']:.4f} "
                         f"Accuracy: {100 * m[f'eval_acc/{name}']:.1f}%")
        return "\n".join(lines)


def run_training(cfg: Config, report: Report | None = None, *, device: str = "auto",
                 checkpoint_dir: str | Path | None = None, resume_from: str | Path | None = None,
                 log: Callable[[str], None] | None = None, warm_start: bool = False,
                 data: MultiData | None = None) -> TrainResult:
    """Train `cfg` to its step budget (or until it diverges) and return the verdict.

    `report(metrics, checkpoint_dir_or_None)` is called every `training.report_interval` steps and
    at the end (`metrics["done"]`). With `checkpoint_dir`, a checkpoint is written before each
    report (every `training.checkpoint_every` reports); `resume_from` continues such a checkpoint
    exactly (model, optimizer, loss scale, monitor, step, RNG; the data order is a function of the
    seed and the step). With `warm_start`, the checkpoint's model, optimizer and step are
    continued at this config's lr (and `training.steps` is the new total budget). `data`: built
    by the caller from this config (a reused trial worker's), else here.
    """
    trainer = Trainer(cfg, device=device, log=log, data=data)
    if resume_from is not None:
        trainer.load(resume_from, keep_config_lr=warm_start)
    return trainer.run(report, checkpoint_dir)
