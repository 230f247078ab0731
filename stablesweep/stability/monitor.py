"""The divergence monitor: per-step flags kept on the device, one host read per report interval.

Per step (`update`, device ops only, no branch on the host): counts of non-finite losses and
gradients, the first bad step and its kind, the max finite loss and gradient norm, an
exponentially smoothed loss (bias-corrected) and its best value, and the first step at which the
smoothed loss exceeded `explosion_factor` x its best (the fastai/Lightning lr-finder rule).

Per report (`read`, one sync): the flags come to the host and `judge` gives the verdict:
`stable` so far, or `diverged` with a reason (`nonfinite_loss`, `nonfinite_grad`,
`loss_explosion`) and the step where it began. Every verdict holds for the steps run so far.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from stablesweep.config import MonitorConfig

STABLE, DIVERGED, PRUNED, ERROR = "stable", "diverged", "pruned", "error"
REASONS = ("nonfinite_loss", "nonfinite_grad", "loss_explosion")

# the order of the values in the state vector read once per report
_FIELDS = ("steps", "loss_bad", "grad_bad", "overflow", "first_bad", "first_kind", "max_loss",
           "max_gnorm", "ema", "ema_n", "best", "first_explosion", "initial_loss", "last_loss",
           "last_gnorm")


@dataclass
class Verdict:
    verdict: str
    reason: str | None = None
    first_bad_step: int = -1

    @property
    def diverged(self) -> bool:
        return self.verdict == DIVERGED

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Snapshot:
    steps: int
    nonfinite_loss_steps: int
    nonfinite_grad_steps: int
    overflow_steps: int
    first_bad_step: int
    first_bad_kind: int
    max_loss: float
    max_grad_norm: float
    smoothed_loss: float
    best_smoothed_loss: float
    first_explosion_step: int
    initial_loss: float
    last_loss: float
    last_grad_norm: float


class DivergenceMonitor:
    def __init__(self, cfg: MonitorConfig, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        f32 = dict(dtype=torch.float32, device=self.device)
        i64 = dict(dtype=torch.int64, device=self.device)
        self.state: dict[str, torch.Tensor] = {
            "steps": torch.zeros((), **i64),
            "loss_bad": torch.zeros((), **i64),
            "grad_bad": torch.zeros((), **i64),
            "overflow": torch.zeros((), **i64),
            "first_bad": torch.full((), -1, **i64),
            "first_kind": torch.zeros((), **i64),  # 1 loss, 2 grad
            "max_loss": torch.full((), -math.inf, **f32),
            "max_gnorm": torch.full((), -math.inf, **f32),
            "ema": torch.zeros((), **f32),
            "ema_n": torch.zeros((), **i64),
            "best": torch.full((), math.inf, **f32),
            "first_explosion": torch.full((), -1, **i64),
            "initial_loss": torch.full((), math.nan, **f32),
            "last_loss": torch.full((), math.nan, **f32),
            "last_gnorm": torch.full((), math.nan, **f32),
        }
        self._beta = torch.tensor(cfg.smoothing, **f32)  # made once: a per-step tensor() is a host copy

    @torch.no_grad()
    def update(self, loss: torch.Tensor, grad_norm: torch.Tensor, loss_bad: torch.Tensor,
               grad_bad: torch.Tensor, overflow: torch.Tensor | None = None) -> None:
        s = self.state
        step = s["steps"]  # index of this step (0-based)
        loss = loss.detach().float()
        gnorm = grad_norm.detach().float()
        bad = loss_bad | grad_bad
        ok = ~loss_bad & torch.isfinite(loss)
        if overflow is not None:
            ok = ok & ~overflow
        s["initial_loss"].copy_(torch.where(step == 0, loss, s["initial_loss"]))
        s["last_loss"].copy_(loss)
        s["last_gnorm"].copy_(gnorm)
        s["loss_bad"].add_(loss_bad.long())
        s["grad_bad"].add_(grad_bad.long())
        if overflow is not None:
            s["overflow"].add_(overflow.long())
        new_bad = bad & (s["first_bad"] < 0)
        s["first_kind"].copy_(torch.where(new_bad, torch.where(loss_bad, 1, 2), s["first_kind"]))
        s["first_bad"].copy_(torch.where(new_bad, step, s["first_bad"]))
        s["max_loss"].copy_(torch.where(ok, torch.maximum(s["max_loss"], loss), s["max_loss"]))
        s["max_gnorm"].copy_(torch.where(torch.isfinite(gnorm), torch.maximum(s["max_gnorm"], gnorm), s["max_gnorm"]))
        # smoothed loss over finite steps only, bias-corrected as in Adam and the lr finders
        beta = self.cfg.smoothing
        ema = torch.where(ok, beta * s["ema"] + (1 - beta) * torch.nan_to_num(loss), s["ema"])
        n = s["ema_n"] + ok.long()
        smoothed = ema / (1 - torch.pow(self._beta, n.clamp(min=1).float()))
        s["ema"].copy_(ema)
        s["ema_n"].copy_(n)
        exploded = ok & (n > self.cfg.min_steps) & (smoothed > self.cfg.explosion_factor * s["best"])
        s["first_explosion"].copy_(torch.where(exploded & (s["first_explosion"] < 0), step, s["first_explosion"]))
        s["best"].copy_(torch.where(ok, torch.minimum(s["best"], smoothed), s["best"]))
        s["steps"].add_(1)

    def state_vector(self) -> torch.Tensor:
        """All flags as one fp64 vector: read it together with other stats in a single sync."""
        return torch.stack([self.state[k].double() for k in _FIELDS])

    def snapshot(self, values: list[float] | None = None) -> Snapshot:
        v = dict(zip(_FIELDS, values if values is not None else self.state_vector().tolist()))
        beta = self.cfg.smoothing
        n = int(v["ema_n"])
        smoothed = v["ema"] / (1 - beta ** n) if n else math.nan
        return Snapshot(
            steps=int(v["steps"]), nonfinite_loss_steps=int(v["loss_bad"]),
            nonfinite_grad_steps=int(v["grad_bad"]), overflow_steps=int(v["overflow"]),
            first_bad_step=int(v["first_bad"]), first_bad_kind=int(v["first_kind"]),
            max_loss=v["max_loss"], max_grad_norm=v["max_gnorm"], smoothed_loss=smoothed,
            best_smoothed_loss=v["best"], first_explosion_step=int(v["first_explosion"]),
            initial_loss=v["initial_loss"], last_loss=v["last_loss"], last_grad_norm=v["last_gnorm"],
        )

    def judge(self, snap: Snapshot) -> Verdict:
        """stable so far, or diverged with the reason and step of whatever broke first."""
        found: list[tuple[int, str]] = []
        if snap.nonfinite_loss_steps + snap.nonfinite_grad_steps > self.cfg.max_skipped_steps:
            kind = "nonfinite_loss" if snap.first_bad_kind == 1 else "nonfinite_grad"
            found.append((snap.first_bad_step, kind))
        if snap.first_explosion_step >= 0:
            found.append((snap.first_explosion_step, "loss_explosion"))
        if not found:
            return Verdict(STABLE)
        step, reason = min(found)
        return Verdict(DIVERGED, reason, step)

    def read(self) -> tuple[Snapshot, Verdict]:
        snap = self.snapshot()
        return snap, self.judge(snap)

    def state_dict(self) -> dict:
        return {k: v.detach().clone() for k, v in self.state.items()}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            self.state[k].copy_(v.to(self.device))
