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

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepFlags:
    grad_norm: torch.Tensor  # fp32 scalar, total norm of the unscaled gradients (before clipping)
    loss_bad: torch.Tensor  # bool scalar
    grad_bad: torch.Tensor  # bool scalar: non-finite gradients (the loss was finite)
    overflow: torch.Tensor  # bool scalar: fp16 loss-scale overflow (an expected skip, not divergence)
    skipped: torch.Tensor  # bool scalar: the update was skipped


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
             loss: torch.Tensor, max_grad_norm: float | None) -> StepFlags:
        """Unscale, clip, skip-or-step, update the scale. No host sync."""
        scale = self.scale().detach().clone()
        self.scaler.unscale_(optimizer)
        grads = [p.grad for p in params if p.grad is not None]
        if max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=True)
        else:
            norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        norm = norm.float()
        loss_bad = ~torch.isfinite(loss.detach())
        norm_bad = ~torch.isfinite(norm)
        skip = loss_bad | norm_bad
        # fused optimizers read these two attributes (as GradScaler.step sets them)
        optimizer.grad_scale = None
        optimizer.found_inf = skip.float()
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf
        self.scaler.update()
        # In fp16 a non-finite gradient at a loss scale above 1 is the scaler finding its range:
        # expected, skipped, not divergence. At scale <= 1 the gradients overflow on their own.
        overflow = norm_bad & ~loss_bad & (scale > 1)
        grad_bad = norm_bad & ~loss_bad & ~overflow
        return StepFlags(norm, loss_bad, grad_bad, overflow, skip)

    def state_dict(self) -> dict:
        return {"name": self.name, "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def make_precision(name: str, device: torch.device | str, tf32: bool = True) -> Precision:
    return Precision(name, torch.device(device), tf32)


def make_optimizer(name: str, params, *, lr: float, weight_decay: float, momentum: float,
                   betas: tuple[float, float]) -> torch.optim.Optimizer:
    """Fused AdamW or SGD: the fused kernels take `found_inf`, so a bad step is skipped on device."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, fused=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, fused=True)
    raise ValueError(f"unknown optimizer {name!r}")
