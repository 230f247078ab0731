"""The diagnosis of a config: its findings (with the probe's, where one ran), whether it is healthy,
and the setting changes the fixed config makes."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from stablesweep.config import Config

from .findings import SEVERITIES, Change, Finding
from .keys import effective_value, key_present, same

if TYPE_CHECKING:  # pragma: no cover (probe.py imports torch)
    from .probe import ProbeResult


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
