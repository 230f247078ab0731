"""The step budgets of a ramp and of a sweep: the first probes (or a sweep's trials) run short, the
answer is for a target (`Budgets`), and the checks and defaults both commands give --target-steps,
--max-steps and --confirm (`check_budgets`, `confirm_of`). Plain data: no Ray, no torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stablesweep.vocab import InputError

RUNG_FACTOR = 4  # each rung's budget: x4 the one below (as ASHA and Hyperband promote)


@dataclass(frozen=True)
class Budgets:
    """A ramp's (or a sweep's) step budgets: its first probes run `probe` steps; the answer is for
    `target`; the rungs it measures at go x4 from `probe` up to `reach` (the target, or --max-steps
    below it)."""

    probe: int
    target: int
    reach: int

    @property
    def rungs(self) -> list[int]:
        out = [self.probe]
        while out[-1] < self.reach:
            out.append(min(out[-1] * RUNG_FACTOR, self.reach))
        return out

    @property
    def extrapolated(self) -> bool:
        """The target is out of reach: the answer holds for `reach` steps and is extrapolated."""
        return self.reach < self.target

    def holds_for(self) -> str:
        """What the answer holds for, in words."""
        if self.extrapolated:
            return f"{self.target} steps (the target), extrapolated from {self.reach} steps"
        return f"{self.target} steps (the target)" + (f"; probes from {self.probe} steps, rungs "
                                                     + ", ".join(map(str, self.rungs)) if len(self.rungs) > 1 else "")

    def to_dict(self) -> dict[str, Any]:
        return {"probe_steps": self.probe, "target_steps": self.target, "rungs": self.rungs,
                "extrapolated_from": self.reach if self.extrapolated else None}


def check_budgets(opts, probe: int, target: int) -> None:
    """--target-steps and --max-steps against the probes' budget `probe` (`opts`: a ramp's or a
    sweep's options, with `max_steps`)."""
    if target < probe:
        raise InputError(f"--target-steps {target}: below the probes' budget (--steps {probe}); the answer is for "
                         "the run you will do, at least as long as a probe")
    if opts.max_steps is not None and opts.max_steps < probe:
        raise InputError(f"--max-steps {opts.max_steps}: below the probes' budget (--steps {probe})")


def check_budget_flags(opts) -> None:
    """--target-steps, --max-steps at least 1, --confirm at least 0: before anything is loaded."""
    for flag, v in (("--target-steps", opts.target_steps), ("--max-steps", opts.max_steps)):
        if v is not None and v < 1:
            raise InputError(f"{flag} {v}: must be at least 1")
    if opts.confirm is not None and opts.confirm < 0:
        raise InputError(f"--confirm {opts.confirm}: must be at least 0 (0: off)")


def confirm_of(opts, budgets: Budgets) -> int:
    """--confirm, or its default: 2 seeds where the target is longer than the probes (0 where the
    probes ran the target itself: their replicates and samples measured it)."""
    if opts.confirm is not None:
        return opts.confirm
    return 2 if budgets.target > budgets.probe else 0
