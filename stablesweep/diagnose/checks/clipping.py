"""Gradient clipping off."""
from __future__ import annotations

from ..findings import Finding
from .context import Context


def check_clipping(ctx: Context) -> list[Finding]:
    if ctx.cfg.training.max_grad_norm is not None:
        return []
    return [Finding("clip.none", "warning", "no gradient clipping (training.max_grad_norm: null)",
                    ["training.max_grad_norm: null: one bad batch can take a step of any size"],
                    "training.max_grad_norm: 1.0 (clipping does not rescue a non-finite gradient; the guard skips "
                    "those steps)", "training.max_grad_norm", {"training.max_grad_norm": 1.0})]
