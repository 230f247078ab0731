"""Models for the data-parallel tests (model.factory): the demo's small CNN, whose logits turn NaN
at training step POISON_STEP on the last rank only (the only rank of a one-process run), or whose
rank 1 crashes once."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from stablesweep.ddp import ranks
from stablesweep.model import SmallCNN

POISON_STEP = 3


class Poisoned(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.net = SmallCNN(num_classes)
        self.steps = 0  # training forwards so far (the initial loss and evaluation run without grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        if not (self.training and torch.is_grad_enabled()):
            return z
        step, self.steps = self.steps, self.steps + 1
        r = ranks()
        return z * torch.nan if step == POISON_STEP and r.rank == r.world - 1 else z


def poisoned(num_classes: int) -> nn.Module:
    return Poisoned(num_classes)


CRASH_STEP = 7
CRASH_MARKER = Path(tempfile.gettempdir()) / f"stablesweep-test-ddp-crash-{os.getuid()}"


class CrashOnce(Poisoned):
    """Rank 1 raises at training step CRASH_STEP while CRASH_MARKER exists (removing it first), so a
    trial fails once and its retry goes on from the last checkpoint."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net(x)
        if self.training and torch.is_grad_enabled():
            step, self.steps = self.steps, self.steps + 1
            if step == CRASH_STEP and ranks().rank == 1 and CRASH_MARKER.exists():
                CRASH_MARKER.unlink()
                raise RuntimeError("planted crash")
        return z


def crash_once(num_classes: int) -> nn.Module:
    return CrashOnce(num_classes)
