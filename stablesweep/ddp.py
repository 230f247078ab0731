"""Data parallelism for the training loop (train.py), from torch.distributed alone (no Ray):
whoever starts the ranks (Ray Train's TorchTrainer in a sweep's data-parallel trial,
stablesweep.sweep.ddp_trial; torchrun by hand) initializes the process group, and `Trainer` reads
it here.

What makes every rank reach the same verdict at the same step, with no collective per step:
- DDP averages the gradients, so every rank holds the same gradients and computes the same
  gradient norm. `spread_nonfinite` makes a non-finite loss on any rank non-finite gradients on
  every rank (the loss is scaled by a factor that is 1 when it is finite, NaN when not; exactly 1,
  so a finite step's gradients are untouched). A skipped step is one whose loss or gradient norm
  is non-finite (monitor `_update`); the norm is the same everywhere and non-finite whenever any
  rank's loss is, so every rank skips the same steps, and the weights stay identical.
- The monitor's state vector is reduced once per report: one all_gather of each rank's vector
  (with the per-dataset train sums appended), then `reduce_monitor` combines the rows field by
  field, and every rank continues from the combined state (so the next report is reduced from it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from stablesweep.stability.monitor import FEWEST, FIRST, GRAD_BAD, KIND, LAYOUT, MAX, MEAN

_I = {name: i for i, name in enumerate(LAYOUT)}


@dataclass(frozen=True)
class Ranks:
    """This process's place among the data-parallel ranks (rank 0 of 1 without a process group)."""

    rank: int = 0
    world: int = 1

    @property
    def parallel(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def ranks() -> Ranks:
    """The process group's rank and size, if torch.distributed is initialized, else a single rank."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def spread_nonfinite(loss: torch.Tensor) -> torch.Tensor:
    """`loss` for the backward pass of a data-parallel step: its gradient is 1 where the loss is
    finite and NaN where not, so DDP's gradient all-reduce carries a non-finite loss of one rank to
    every rank's gradients (a loss of inf from a masked target has finite gradients by itself)."""
    return loss * (1 + 0 * loss.detach())


def gather_rows(vector: torch.Tensor) -> torch.Tensor:
    """[world, n]: every rank's `vector` (one collective)."""
    rows = [torch.empty_like(vector) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, vector.contiguous())
    return torch.stack(rows)


def _first(col: torch.Tensor) -> torch.Tensor:
    """The smallest step that is set (>= 0), or -1 when no rank set one."""
    return torch.where(col >= 0, col, torch.inf).min().nan_to_num(posinf=-1.0)


def reduce_monitor(rows: torch.Tensor) -> torch.Tensor:
    """The monitor state of the whole run from every rank's state vector (rows [world, FIELDS]),
    each slot combined as the monitor's LAYOUT says.

    Counts of skipped steps: every rank skips the same steps and counts each as a non-finite loss
    (its own loss was) or gradient (another rank's loss made it so); the run's non-finite-loss steps
    are those of the rank with the most, the rest of the skipped steps are gradient steps (exact
    when one rank saw every bad loss, as when one rank or all go bad). Overflow steps (fp16) and
    scale drops are the rank with the fewest's (another rank's bad loss reads as an overflow on a
    rank whose loss was finite). The first bad step is the earliest of any rank, of kind "loss"
    when any rank's loss was bad then. The smoothed loss is the mean of the ranks' (exact: every
    rank smooths the same steps); the maxima are the largest, the first steps the earliest.
    Explosion and the logit signals are judged by each rank on its own share of the batch.
    """
    out = rows[0].clone()  # the slots alike on every rank (SAME): rank 0's
    loss_bad = rows[:, _I["loss_bad"]].max()
    fewest = rows[:, _I["overflow"]].argmin()
    first = _first(rows[:, _I["first_bad"]])
    at_first = (rows[:, _I["first_bad"]] == first) & (first >= 0)
    for i, slot in enumerate(LAYOUT.values()):
        col = rows[:, i]
        if slot.across_ranks == MEAN:
            out[i] = col.mean()
        elif slot.across_ranks == MAX:
            out[i] = col.max()
        elif slot.across_ranks == FIRST:
            out[i] = _first(col)
        elif slot.across_ranks == FEWEST:
            out[i] = col[fewest]
        elif slot.across_ranks == GRAD_BAD:
            out[i] = (rows[:, _I["loss_bad"]] + col).max() - loss_bad
        elif slot.across_ranks == KIND:
            out[i] = torch.where(at_first, col, torch.inf).min().nan_to_num(posinf=0.0)
    return out
