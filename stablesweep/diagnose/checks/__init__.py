"""The checks of a diagnosis: each `check(ctx) -> list[Finding]`, run in this order (the order in
which findings of one severity are listed).

One check is not here: eval_ratio outside (0, 1] is checked on the raw mapping before the config
is validated (which refuses it): `stablesweep.diagnose.raw.check_eval_ratio`.
"""
from __future__ import annotations

from typing import Callable

from ..findings import Finding
from .clipping import check_clipping
from .context import Context
from .evaluation import check_skip_evaluation
from .labels import check_labels
from .lr import check_lr
from .masking import check_masking

Check = Callable[[Context], list[Finding]]
CHECKS: tuple[Check, ...] = (check_labels, check_masking, check_clipping, check_lr, check_skip_evaluation)

__all__ = ["CHECKS", "Check", "Context", "check_clipping", "check_labels", "check_lr",
           "check_masking", "check_skip_evaluation"]
