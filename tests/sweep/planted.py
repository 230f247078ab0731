"""Planted models for the ramp's rung tests (model.factory): a verdict that is a function of the
lr, the training step and the seed, the same on any machine.

The model knows its lr: a scalar parameter `clock` whose gradient is always 1 (a hook), so that
Adam moves it by exactly lr a step (m/sqrt(v) = 1); after n training steps -clock = n x lr. It
trains a linear classifier on 4 x 4 pooled pixels whose weights move by STEP a step whatever the lr
(they are the parameters scaled by STEP / lr), so that where the plan says "train" every lr trains
alike. The plan then shows, at step n: the classifier's logits ("train", scaled by (lr / 0.02)^2, so
a larger lr ends with a lower loss), half of them ("weak": the loss ends near half its initial value),
zero logits ("hidden": the loss stays at its initial value, the
run stalls, while the classifier learns underneath), or NaN ("fail": the run diverges there).
`torch.initial_seed()` (train.py seeds torch with training.seed first) is the run's seed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STEP = 0.01  # the classifier's weights move this much a step, at any lr


class Planted(nn.Module):
    def __init__(self, num_classes: int, plan):
        super().__init__()
        self.plan = plan
        self.seed = torch.initial_seed()
        self.clock = nn.Parameter(torch.zeros(()))
        self.clock.register_hook(lambda g: torch.ones_like(g))
        self.u = nn.Parameter(torch.zeros(num_classes, 48))
        self.register_buffer("n", torch.zeros((), dtype=torch.long))  # training steps so far (in checkpoints)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = F.adaptive_avg_pool2d(x.float(), 4).flatten(1)
        n = int(self.n)
        lr = float(-self.clock.detach()) / n if n else None
        w = self.u * (STEP / lr) if lr else self.u * 0
        logits = feat @ w.t() * ((lr or 0.02) / 0.02) ** 2 + (self.clock - self.clock.detach())
        if not (self.training and torch.is_grad_enabled()):  # the initial loss (n = 0) and evaluation
            return logits if n and self.plan(lr, n - 1, self.seed) == "train" else logits * 0
        self.n += 1
        shown = self.plan(lr, n, self.seed) if lr else "hidden"
        if shown == "train":
            return logits
        if shown == "weak":  # every other sample's logits zero: the loss halves, no lower
            keep = (torch.arange(len(logits), device=logits.device) % 2 == 0).float()[:, None]
            return logits * keep + (logits - logits.detach()) * (1 - keep)
        if shown == "hidden":
            return logits - logits.detach()
        return torch.full_like(logits, float("nan")) + (logits - logits.detach())


def late_stall_plan(lr: float, n: int, seed: int) -> str:
    """Trains up to lr 0.05 (0.04 to a higher loss than 0.08 ends with: "weak"); lr 0.08 shows nothing before step 25 (a stall at 20 steps that trains
    at 80) and, on an odd seed, fails from step 60; above 0.1 it shows nothing before 40 and fails
    from step 50 (a late divergence)."""
    if lr <= 0.05:
        return "weak" if lr > 0.03 else "train"
    if lr <= 0.1:
        if seed % 2 and n >= 60:
            return "fail"
        return "hidden" if n < 25 else "train"
    return "fail" if n >= 50 else "hidden" if n < 40 else "train"


def late_divergence_plan(lr: float, n: int, seed: int) -> str:
    """Trains up to lr 0.02; lr 0.04 trains but fails from step 50 (stable at 20 steps, diverged at
    80); from 0.08 it fails at step 5."""
    if lr <= 0.02:
        return "train"
    if lr <= 0.05:
        return "fail" if n >= 50 else "train"
    return "fail" if n >= 5 else "train"


def late_stall(num_classes: int) -> nn.Module:
    return Planted(num_classes, late_stall_plan)


def late_divergence(num_classes: int) -> nn.Module:
    return Planted(num_classes, late_divergence_plan)
