"""What a diagnosis is made of: findings, and the setting changes they ask for (the diagnosis of a
config, which holds them: diagnosis.py)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

SEVERITIES = ("error", "warning", "info")
MAX_LINES = 10  # file:line entries listed per finding


@dataclass
class Finding:
    code: str  # e.g. labels.one_based
    severity: str  # error | warning | info
    title: str  # one line: what is wrong
    evidence: list[str] = field(default_factory=list)  # numbers, file:line, config keys
    fix: str = ""
    key: str | None = None  # the config key concerned, dotted
    changes: dict[str, Any] = field(default_factory=dict)  # dotted key -> value in _fixed.yaml
    notes: dict[str, str] = field(default_factory=dict)  # dotted key -> comment only (not fixed there)
    dataset: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def scalar(v: Any) -> str:
    """A value as one line of YAML (floats with a point: 1.0, not 1)."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e6:
        return f"{v:.1f}"
    text = yaml.safe_dump(v, default_flow_style=True, width=10 ** 9, allow_unicode=True)
    if text.endswith("\n...\n"):
        text = text[:-5]
    return text.strip()


def lines_text(lines: list[int]) -> str:
    """Line numbers, the first MAX_LINES of them, and how many more."""
    shown = ", ".join(map(str, lines[:MAX_LINES]))
    return shown + (f", ... ({len(lines) - MAX_LINES} more)" if len(lines) > MAX_LINES else "")


@dataclass
class Change:
    key: str
    old: Any
    new: Any
    codes: list[str]
    reason: str
    was_set: bool = True  # the key was in the config (else `old` is the default it ran with)

    @property
    def old_text(self) -> str:
        return scalar(self.old) if self.was_set else f"unset ({scalar(self.old)})"
