"""Data: JSONL manifests, ImageFolder directories and synthetic datasets mixed over one label space;
a decoded-image cache (`cache`); batches onto the device (`DeviceInput`).

The training core's entry points: `build_data(cfg)` (validates every label first) and
`validate_labels(cfg)` (a report of structured `Problem`s, never raises for data problems).
"""
from .device import DeviceInput
from .mixing import Batch, LabelSpace, MultiData, build_data, eval_subset, validate_labels
from .problems import (
           DataError,
           LabelReport,
           Problem,
           ProblemKind,
           SplitReport,
)
from .synthetic import write_synthetic

__all__ = ["DataError", "LabelSpace", "Batch", "MultiData", "build_data", "validate_labels", "LabelReport",
           "SplitReport", "Problem", "ProblemKind", "write_synthetic", "eval_subset", "DeviceInput"]
