"""Data: JSONL manifests, ImageFolder directories and synthetic datasets mixed over one label space;
a decoded-image cache (`cache`); batches onto the device (`DeviceInput`).

The training core's entry points: `build_data(cfg)` (validates every label first) and
`validate_labels(cfg)` (a report of structured `Problem`s, never raises for data problems).

The names below are loaded on first use (PEP 562), and the checks (`check`, `manifests`,
`problems`) import no torch: a data problem is refused before torch is imported.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "DataError": "problems", "LabelReport": "problems", "Problem": "problems", "ProblemKind": "problems",
    "SplitReport": "problems",
    "build_data": "check", "validate_labels": "check",
    "Batch": "mixing", "LabelSpace": "mixing", "MultiData": "mixing", "eval_subset": "mixing",
    "DeviceInput": "device",
    "write_synthetic": "synthetic",
}

__all__ = ["DataError", "LabelSpace", "Batch", "MultiData", "build_data", "validate_labels", "LabelReport",
           "SplitReport", "Problem", "ProblemKind", "write_synthetic", "eval_subset", "DeviceInput"]

if TYPE_CHECKING:  # pragma: no cover
    from .check import build_data, validate_labels
    from .device import DeviceInput
    from .mixing import Batch, LabelSpace, MultiData, eval_subset
    from .problems import DataError, LabelReport, Problem, ProblemKind, SplitReport
    from .synthetic import write_synthetic


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
