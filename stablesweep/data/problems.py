"""What is wrong with a config's data and the report of it: each `Problem` says what (its
`ProblemKind`) and where (dataset, split, file, line, the offending value), with a message that
names them; a `SplitReport` a split, a `LabelReport` them all (`format` for people). A `DataError`
carries the report of the scan that refused the data. The scan itself: manifests.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from stablesweep.vocab import InputError

MAX_SHOWN = 5  # problems shown per file in `data check`'s and train's pre-flight messages


class DataError(InputError):
    """Bad data: the message names the dataset, the file and the line where there is one."""

    def __init__(self, message: str, report: "LabelReport | None" = None):
        super().__init__(message)
        self.report = report


# ---- problems ---------------------------------------------------------------------------------

class ProblemKind(StrEnum):
    """What is wrong with the data; a `Problem` says where."""

    MISSING_FILE = "missing_file"  # a manifest or folder that is not there (value: the path looked at)
    NO_TRAIN = "no_train"  # no train split configured
    BAD_JSON = "bad_json"
    NOT_AN_OBJECT = "not_an_object"  # a manifest line that is JSON but not an object
    MISSING_KEY = "missing_key"  # value: the key (image_key or label_key)
    BAD_IMAGE_PATH = "bad_image_path"  # the image key holds no non-empty string (value: what it holds)
    LABEL_NOT_INT = "label_not_int"  # value: the label
    LABEL_OUT_OF_RANGE = "label_out_of_range"  # value: the label
    ONE_BASED = "one_based"  # the split's labels run 1..num_classes (value: (min, max))
    MISSING_IMAGE = "missing_image"  # value: the image path
    UNREADABLE_IMAGE = "unreadable_image"  # value: the image path
    CLASS_FOLDERS = "class_folders"  # ImageFolder classes that do not fit (value: the folder names)
    NO_IMAGES = "no_images"  # an ImageFolder without image files
    NO_USABLE_SAMPLES = "no_usable_samples"  # a train split left with nothing to train on


@dataclass(frozen=True)
class Problem:
    """One data problem: what (`kind`), where (dataset, split, file as the config names it, 1-based
    line of a manifest), the offending value, and the message a person reads (which names all that)."""

    kind: ProblemKind
    dataset: str
    split: str
    file: str | None
    line: int | None
    value: Any
    message: str


# ---- the report -------------------------------------------------------------------------------

@dataclass
class SplitReport:
    """Labels of one split of one dataset. `problems` are errors; `notes` are not."""

    dataset: str
    split: str  # train | val
    source: str  # manifest | folder | synthetic
    path: str | None
    num_classes: int
    count: int = 0  # samples (non-blank lines / files)
    label_counts: dict[int, int] = field(default_factory=dict)  # every integer label -> its samples
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # lines whose only fault is an integer label outside [0, num_classes): with loss.on_bad_label
    # 'skip' these samples are kept, dropped by the collate and counted in Batch.dropped
    bad_label_lines: int = 0
    fatal: int = 0  # problems that no on_bad_label setting tolerates
    cached: str | None = None  # the whole decoded-image cache that stood in for the image checks

    @property
    def min(self) -> int | None:
        return min(self.label_counts) if self.label_counts else None

    @property
    def max(self) -> int | None:
        return max(self.label_counts) if self.label_counts else None

    @property
    def distinct(self) -> int:
        return len(self.label_counts)

    def add(self, kind: ProblemKind, message: str, *, line: int | None = None, value: Any = None,
            fatal: bool = True) -> None:
        """Record a problem of this split (in the file the config names for it). `fatal=False`: a
        line whose only fault is its out-of-range label, which loss.on_bad_label: skip tolerates."""
        self.problems.append(Problem(kind, self.dataset, self.split, self.path, line, value, message))
        if fatal:
            self.fatal += 1
        else:
            self.bad_label_lines += 1

    def errors(self, on_bad_label: str = "error") -> int:
        return self.fatal + (self.bad_label_lines if on_bad_label == "error" else 0)


@dataclass
class LabelReport:
    """Per dataset and split: count, min, max, distinct, problems. `ok()` when there are no problems."""

    splits: list[SplitReport] = field(default_factory=list)
    check_images: str = "header"

    @property
    def problems(self) -> list[Problem]:
        return [p for s in self.splits for p in s.problems]

    @property
    def notes(self) -> list[str]:
        return [n for s in self.splits for n in s.notes]

    def get(self, dataset: str, split: str) -> SplitReport | None:
        for s in self.splits:
            if s.dataset == dataset and s.split == split:
                return s
        return None

    def skipped_labels(self) -> str | None:
        """With loss.on_bad_label: skip, what the run drops: the count and the first such line."""
        bad = [s for s in self.splits if s.bad_label_lines]
        if not bad:
            return None
        first = next(p for s in bad for p in s.problems if p.kind == ProblemKind.LABEL_OUT_OF_RANGE)
        return (f"{sum(s.bad_label_lines for s in bad)} sample(s) have a label outside their dataset's range, "
                f"the first: {first.message}; loss.on_bad_label is skip, so they are dropped at run time "
                "and counted (dropped_samples)")

    def ok(self, on_bad_label: str = "error") -> bool:
        """No problems. With on_bad_label='skip', lines whose only fault is an out-of-range label
        are tolerated (they are dropped at run time and counted)."""
        return all(s.errors(on_bad_label) == 0 for s in self.splits)

    def format(self, max_listed: int = MAX_SHOWN, on_bad_label: str = "error") -> str:
        head = ("dataset", "split", "source", "classes", "count", "min", "max", "distinct", "status")
        rows = []
        for s in self.splits:
            status = "ok" if not s.problems else f"{len(s.problems)} problem(s)"
            rows.append((s.dataset, s.split, s.source, str(s.num_classes), str(s.count),
                         "-" if s.min is None else str(s.min), "-" if s.max is None else str(s.max),
                         str(s.distinct), status))
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]

        def line(cells):
            return "  ".join(c.rjust(w) if i in (3, 4, 5, 6, 7) else c.ljust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
        probs = self.format_problems(max_listed, on_bad_label)
        if probs:
            out += ["", probs]
        notes = self.notes
        if notes:
            out += ["", f"notes ({len(notes)}):"] + [f"  {n}" for n in notes]
        cached = [f"{s.dataset} {s.split}" for s in self.splits if s.cached]
        out += ["", f"images checked: {self.check_images}"
                + (f" (not one by one for {', '.join(cached)}: read from their whole decoded-image cache, "
                   "which decoded every image, none changed since)" if cached else "")]
        return "\n".join(out)

    def format_problems(self, max_listed: int = MAX_SHOWN, on_bad_label: str = "error") -> str:
        """Each problem once, grouped by the file it is in: a line per file with its count, then
        its first `max_listed` problems. A split whose labels look 1-based is that one diagnosis
        (its out-of-range lines, which the same fix mends, are counted, not listed)."""
        total = sum(len(s.problems) for s in self.splits)
        if not total:
            return ""
        out = [f"problems ({total}):"]
        for s in self.splits:
            if not s.problems:
                continue
            shown = s.problems
            one_based = [p for p in shown if p.kind == ProblemKind.ONE_BASED]
            if one_based:
                shown = one_based + [p for p in shown
                                     if p.kind not in (ProblemKind.ONE_BASED, ProblemKind.LABEL_OUT_OF_RANGE)]
            out.append(f"  {s.dataset} {s.split}, {s.path}: {len(s.problems)} problem(s)")
            for p in shown[:max_listed]:
                out.append(f"    {p.message}")
            covered = len(s.problems) - len(shown)
            if covered:
                out.append(f"    ({covered} line(s) with a label outside the range: the 1-based fix above mends them)")
            if len(shown) > max_listed:
                out.append(f"    ... and {len(shown) - max_listed} more in {s.path}")
        if on_bad_label == "skip" and any(s.bad_label_lines for s in self.splits):
            out.append("  (loss.on_bad_label: skip: out-of-range labels are dropped at run time, "
                       "the other problems are errors)")
        return "\n".join(out)
