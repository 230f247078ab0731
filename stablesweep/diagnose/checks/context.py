"""What every check reads."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stablesweep.config import Config
from stablesweep.data.problems import LabelReport, Problem, ProblemKind

from ..region_file import MeasuredRegion


@dataclass
class Context:
    cfg: Config  # the config as diagnosed (overrides applied)
    config_path: Path
    report: LabelReport  # the data scan: every split's labels and problems
    region: MeasuredRegion | None = None  # the measured boundary (--region), if any

    @property
    def bad_labels(self) -> list[Problem]:
        """Every out-of-range label, with its dataset, manifest and line."""
        return [p for p in self.report.problems if p.kind == ProblemKind.LABEL_OUT_OF_RANGE]
