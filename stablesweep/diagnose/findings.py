"""What a diagnosis says: findings, the setting changes they ask for, and the diagnosis of a config."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from stablesweep.config import Config

from .keys import effective_value, key_present, same

if TYPE_CHECKING:  # pragma: no cover
    from .probe import ProbeResult

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


@dataclass
class Diagnosis:
    config_path: Path
    cfg: Config  # as diagnosed (overrides applied)
    raw: dict  # the mapping read from the file, overrides applied (eval_ratio as written)
    findings: list[Finding]
    overrides: list[str] = field(default_factory=list)
    probe: "ProbeResult | None" = None

    def count(self, severity: str) -> int:
        return sum(f.severity == severity for f in self.findings)

    @property
    def healthy(self) -> bool:
        return not any(f.severity in ("error", "warning") for f in self.findings)

    @property
    def exit_code(self) -> int:
        return 0 if self.healthy else 1

    def sorted_findings(self) -> list[Finding]:
        order = {s: i for i, s in enumerate(SEVERITIES)}
        return sorted(self.findings, key=lambda f: order[f.severity])  # stable: check order kept

    def changes(self) -> list[Change]:
        """The settings the fixed config changes: one per key, the most severe finding first."""
        out: dict[str, Change] = {}
        for f in self.sorted_findings():
            for key, value in f.changes.items():
                if key in out:
                    if same(out[key].new, value):
                        out[key].codes.append(f.code)
                    continue
                old = effective_value(self.cfg, self.raw, key)
                out[key] = Change(key, old, value, [f.code], f.title, key_present(self.raw, key))
        # a value restated as it was (e.g. an explicit per-dataset skip_evaluation) is no change
        return [c for c in out.values() if not (c.was_set and same(c.old, c.new))]

    def to_dict(self) -> dict:
        return {"config": str(self.config_path), "healthy": self.healthy, "exit_code": self.exit_code,
                "counts": {s: self.count(s) for s in SEVERITIES},
                "findings": [f.to_dict() for f in self.sorted_findings()],
                "changes": [asdict(c) for c in self.changes()],
                "probe": self.probe.to_dict() if self.probe else None}
