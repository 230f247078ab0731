"""A model for the data-parallel tests (model.factory): the demo's small CNN, whose logits turn NaN
at training step POISON_STEP on the last rank only (the only rank of a one-process run)."""
from __future__ import annotations

import torch
from torch import nn

from stablesweep.distributed import ranks
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
