"""How values read in the comparison's labels, its tables and the figures' ticks: one place for
the analysis (vocab.format_value is the project-wide one; these add the fixed precisions of a
table column)."""
from __future__ import annotations

from typing import Any

from stablesweep.vocab import finite, format_value, py


def lr_text(v: Any, none: str = "-") -> str:
    """A number in the lr's notation (2.00e-03); `none` for anything else."""
    n = finite(v)
    return none if n is None else f"{n:.2e}"


def num_text(v: Any) -> str:
    """A number to 4 significant digits; '-' for anything else."""
    n = finite(v)
    return "-" if n is None else f"{n:.4g}"


def value_text(v: Any) -> str:
    """A param value: very small or large floats as 2.00e-06, the rest as vocab.format_value."""
    v = py(v)
    if isinstance(v, float) and (abs(v) < 1e-2 or abs(v) >= 1e4) and v != 0:
        return f"{v:.2e}"
    return format_value(v)


def text_order(s: str) -> tuple:
    """A sort key for values as text: none first, then numbers by value, then the rest."""
    try:
        return (1, float(s), "")
    except ValueError:
        return (0 if s == "none" else 2, 0.0, s)


def sig3_text(v: Any) -> str:
    """A number to 3 significant digits (0.0834, 1e+03); '-' for anything else."""
    n = finite(v)
    return "-" if n is None else f"{n:.3g}"


def text_table(head: list[str], rows: list[list[str]]) -> str:
    """Columns for a terminal: left-aligned, two spaces apart."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table's lines; a `|` in a cell is escaped, a newline becomes a space."""
    def cell(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(cell(h) for h in head) + " |", "|" + "---|" * len(head)] + \
        ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
