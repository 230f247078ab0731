"""Precision as a small policy object (as in Lightning Fabric): fp32 (tf32 switch), bf16 autocast,
fp16 autocast with loss scaling (torch.amp.GradScaler).

The policy also owns the guarded optimizer step: it never branches on the host. A step whose loss
or gradient norm is non-finite is skipped through the fused optimizer's `found_inf` input (the
path GradScaler uses), so no `.item()` is needed and the update, weight decay and step count are
all left untouched.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from stablesweep.stability.graphs import GraphCache
from stablesweep.stability.monitor import classify

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepFlags:
    """What one guarded step left on the device (nothing here has been read by the host)."""

    grad_norm: torch.Tensor  # fp32 scalar, total norm of the unscaled gradients (before clipping)
    skip: torch.Tensor  # 1. if the update was skipped, else 0. (the found_inf the optimizer read)
    scale: torch.Tensor  # the loss scale this step ran at (1 unless fp16)
    loss: torch.Tensor

    # the views below cost a kernel each, so they are made only when read (tests, diagnose)
    @property
    def skipped(self) -> torch.Tensor:
        return self.skip.bool()

    @property
    def loss_bad(self) -> torch.Tensor:
        return classify(self.loss, self.grad_norm, self.scale)[0]

    @property
    def grad_bad(self) -> torch.Tensor:
        return classify(self.loss, self.grad_norm, self.scale)[1]

    @property
    def overflow(self) -> torch.Tensor:
        return classify(self.loss, self.grad_norm, self.scale)[2]


class Precision:
    def __init__(self, name: str, device: torch.device, tf32: bool = True):
        if name not in _DTYPES:
            raise ValueError(f"unknown precision {name!r}; expected one of {', '.join(_DTYPES)}")
        self.name = name
        self.device = torch.device(device)
        self.dtype = _DTYPES[name]
        if name == "fp16" and self.device.type == "cpu":
            # fp16 autocast on CPU exists but is slow and GradScaler is CUDA-first; still allowed.
            pass
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=(name == "fp16"))
        self.tf32 = tf32
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32 and name == "fp32"
            torch.backends.cudnn.allow_tf32 = tf32 and name == "fp32"
        self._one = torch.ones((), device=self.device)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def scale(self) -> torch.Tensor:
        """The loss scale of the current step, as a device tensor (1 unless fp16)."""
        return self.scaler._get_scale_async() if self.scaler.is_enabled() else self._one

    def step(self, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter],
             loss: torch.Tensor, max_grad_norm: float | None, monitor=None,
             logits: torch.Tensor | None = None, batch: tuple | None = None, inline: bool = False) -> StepFlags:
        """Unscale, clip, skip-or-step, update the loss scale. No host sync.

        With a DivergenceMonitor, the step is recorded by it (with the model's raw `logits`, for
        its logit signals, and `batch` for its per-dataset sums: see `DivergenceMonitor.update`)
        and its skip flag is used (one CUDA graph on CUDA for all of it); without one, the flag is
        computed here. `inline`: the monitor op by op (inside OneGraphStep's capture of this step).
        """
        enabled = self.scaler.is_enabled()
        scale = self.scaler._get_scale_async().clone() if enabled else None  # None: 1 (the monitor's own constant)
        self.scaler.unscale_(optimizer)
        if max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=True)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None], foreach=True)
        loss = loss.detach()
        if monitor is not None:
            skip = monitor.update(loss, norm, scale, logits, batch, inline=inline)
        else:  # loss + norm is non-finite when either is
            skip = (~torch.isfinite(loss + norm)).float()
        # fused optimizers read these two attributes (GradScaler.step sets them the same way)
        optimizer.grad_scale = None
        optimizer.found_inf = skip
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf
        self.scaler.update()
        return StepFlags(norm, skip, self._one if scale is None else scale, loss)

    def state_dict(self) -> dict:
        return {"name": self.name, "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


class OneGraphStep:
    """The guarded step replayed as one CUDA graph: clip, the monitor's step and the fused AdamW
    (capturable) in one launch, where the host would otherwise issue some hundred kernels (on a
    small, host-bound GPU step the guard's cost is its launches).

    For bf16 and fp32 on CUDA in one process (fp16's loss scale and DDP's gradient buckets keep the
    op-by-op path). Its contract with the caller: gradients stay where backward put them
    (`zero_grad(set_to_none=False)`), and `reset()` after the optimizer's state is loaded. The
    first step this object takes goes through `Precision.step` (the warm-up: it loads the kernels
    and makes the optimizer's state), as do steps under a dispatch mode (the FLOP counter) and
    batch shapes beyond the limit of its graph cache (graphs.py). The lr is read from the param
    group before each replay (a float there, as the scheduler writes it), into a device tensor the
    graph reads.
    """

    def __init__(self, precision: Precision, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter],
                 max_grad_norm: float | None, monitor):
        self.precision, self.optimizer, self.params = precision, optimizer, params
        self.max_grad_norm, self.monitor = max_grad_norm, monitor
        self.lrs = [torch.zeros((), device=precision.device) for _ in optimizer.param_groups]
        self.lr_values: list[float] = []  # what `lrs` hold
        self.graphs = GraphCache()
        self.warm = False  # an op-by-op step ran: the kernels are loaded before any capture

    @staticmethod
    def fits(precision: Precision, optimizer: str, parallel: bool, graphs: bool) -> bool:
        return graphs and precision.device.type == "cuda" and precision.name != "fp16" \
            and optimizer == "adamw" and not parallel

    def reset(self) -> None:
        """Forget the graphs (they hold the optimizer's state tensors; a load replaces them)."""
        self.graphs.clear()
        for g in self.optimizer.param_groups:
            g["capturable"] = True  # a checkpoint of the op-by-op path may say otherwise

    def _region(self, static: list) -> StepFlags:
        """`Precision.step` as captured: the monitor inline, the lr the device tensors."""
        loss, logits, *batch = static
        groups = self.optimizer.param_groups
        floats = [g["lr"] for g in groups]
        for g, lr in zip(groups, self.lrs):
            g["lr"] = lr
        try:
            return self.precision.step(self.optimizer, self.params, loss, self.max_grad_norm, self.monitor,
                                       logits, tuple(batch), inline=True)
        finally:
            for g, lr in zip(groups, floats):
                g["lr"] = lr

    def __call__(self, loss: torch.Tensor, logits: torch.Tensor | None = None,
                 batch: tuple | None = None) -> StepFlags:
        labels, ids, per_sample, allowed = batch if batch is not None else (None, None, None, None)
        x = [loss.detach(), None if logits is None else logits.detach(), labels, ids,
             None if per_sample is None else per_sample.detach()]
        grads = sum(p.grad is not None for p in self.params)
        key = (*((t.shape, t.dtype) if t is not None else None for t in x), id(allowed), grads)
        if key not in self.graphs:
            if not self.warm or self.graphs.full or _get_current_dispatch_mode() is not None:
                self.warm = True
                return self.precision.step(self.optimizer, self.params, loss, self.max_grad_norm, self.monitor,
                                           logits, batch)
            static = [None if t is None else t.clone() for t in x] + [allowed]
            # the op-by-op step before was the warm-up (and made the optimizer's state); the capture runs nothing
            self.graphs.capture(key, static, self._region, [i for i, t in enumerate(x) if t is not None])
        return self.graphs.replay(key, x, before=self._read_lrs)

    def _read_lrs(self) -> None:
        """The param groups' lrs into the device tensors the graph reads (where they changed)."""
        values = [g["lr"] for g in self.optimizer.param_groups]
        if values != self.lr_values:
            for lr, value in zip(self.lrs, values):
                lr.fill_(value)
            self.lr_values = values


def make_precision(name: str, device: torch.device | str, tf32: bool = True) -> Precision:
    return Precision(name, torch.device(device), tf32)


def make_optimizer(name: str, params, *, lr: float, weight_decay: float, momentum: float,
                   betas: tuple[float, float], capturable: bool = False) -> torch.optim.Optimizer:
    """Fused AdamW or SGD: the fused kernels take `found_inf`, so a bad step is skipped on device.
    `capturable`: AdamW whose step can be captured in a CUDA graph (OneGraphStep)."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, fused=True,
                                 capturable=capturable)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, fused=True)
    raise ValueError(f"unknown optimizer {name!r}")
