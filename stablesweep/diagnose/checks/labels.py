"""Labels and files: out-of-range and 1-based labels, absent classes, the scan's other problems.

Reads the data scan's structured problems (kind, dataset, file, line, value) and label counts;
never the text of a message."""
from __future__ import annotations

from stablesweep.data.problems import Problem, ProblemKind, SplitReport

from ..findings import MAX_LINES, Finding, lines_text
from .context import Context

LABEL_KINDS = (ProblemKind.ONE_BASED, ProblemKind.LABEL_OUT_OF_RANGE)  # explained by a labels.* finding
MISSING_KINDS = (ProblemKind.MISSING_FILE, ProblemKind.MISSING_IMAGE)


def check_labels(ctx: Context) -> list[Finding]:
    """Label findings per dataset and split, then the split's other data problems."""
    findings: list[Finding] = []
    for rep in ctx.report.splits:
        key = f"datasets.dataset_configs.{rep.dataset}.{rep.split}"
        outside = [p for p in rep.problems if p.kind == ProblemKind.LABEL_OUT_OF_RANGE]
        if rep.source == "manifest" and rep.label_counts:
            path = ctx.cfg.resolve_path(rep.path)
            if outside:
                findings.append(_label_finding(rep, outside, str(path), key))
            absent = _absent_finding(rep)
            if absent is not None:
                findings.append(absent)
        findings += _problem_findings(rep, key, covered=bool(outside))
    return findings


def _label_finding(rep: SplitReport, outside: list[Problem], path: str, key: str) -> Finding:
    name, split, display, n = rep.dataset, rep.split, rep.path, rep.num_classes
    counts = rep.label_counts
    total = sum(counts.values())
    lo, hi = rep.min, rep.max
    lines = [p.line for p in outside]
    if lo == 1 and hi == n:
        at_n = [p.line for p in outside if p.value == n]
        ev = [f"{display}: min label 1, max {n}, num_classes {n}; class 0 never appears",
              f"{len(at_n)} of {total} lines have label {n}, outside [0, {n}): "
              f"{display}:{at_n[0]}" + (f" (lines {lines_text(at_n)})" if len(at_n) > 1 else ""),
              f"file: {path}"]
        fix = (f"the labels of {display} are 1-based: subtract 1 from every label in that manifest "
               f"(all {total} lines) so they run 0..{n - 1}. Do not clamp: clamping merges class {n} into "
               f"class {n - 1} and hides the bug.")
        return Finding("labels.one_based", "error", f"{name} {split}: labels are 1-based in {display}", ev, fix,
                       key, notes={key: f"NOT fixed here (data): {display} has 1-based labels; subtract 1 "
                                        f"from every label in that manifest (finding labels.one_based)"},
                       dataset=name)
    by_label: dict[int, list[int]] = {}
    for p in outside:
        by_label.setdefault(p.value, []).append(p.line)
    ev = []
    for lab, lns in sorted(by_label.items()):
        ev.append(f"label {lab} outside [0, {n}) at {display}:" + (str(lns[0]) if len(lns) == 1
                                                                    else f" lines {lines_text(lns)}"))
    ev.append(f"{display}: {total} lines, labels {lo}..{hi}, num_classes {n}; file: {path}")
    if len(lines) == 1:
        fix = f"fix or drop line {lines[0]} of {display} (label {outside[0].value}; valid labels are 0..{n - 1})"
    else:
        fix = f"fix or drop lines {lines_text(lines)} of {display} (valid labels are 0..{n - 1})"
    mean = total / max(1, len(counts))
    if set(counts) == set(range(n + 1)) and counts[n] >= 0.5 * mean:
        fix += (f"; label {n} appears {counts[n]} times, about as often as the other classes "
                f"({mean:.0f} a class on average): if {name} really has {n + 1} classes, set "
                f"datasets.dataset_configs.{name}.num_classes: {n + 1} instead (this moves the column offsets "
                f"of every dataset after it)")
    fix += ". Do not clamp: a clamped label trains the wrong class silently."
    return Finding("labels.out_of_range", "error",
                   f"{name} {split}: {len(lines)} label(s) outside [0, {n}) in {display}", ev, fix, key,
                   notes={key: f"NOT fixed here (data): {display} has {len(lines)} label(s) outside [0, {n}) "
                               f"at line(s) {lines_text(lines)}: fix or drop them (finding labels.out_of_range)"},
                   dataset=name)


def _absent_finding(rep: SplitReport) -> Finding | None:
    name, split, display, n = rep.dataset, rep.split, rep.path, rep.num_classes
    if rep.min == 1 and rep.max == n:
        return None  # explained by the 1-based finding
    present = [lab for lab in rep.label_counts if 0 <= lab < n]
    if len(present) >= n:
        return None
    missing = sorted(set(range(n)) - set(present))
    shown = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
    sev = "warning" if split == "train" else "info"
    what = ("their head columns never see a positive example" if split == "train"
            else "their accuracy is not measured")
    return Finding("labels.classes_absent", sev,
                   f"{name} {split}: {len(present)} of num_classes {n} classes present in {display}",
                   [f"{display}: {len(present)} distinct labels in [0, {n}); absent: {shown}"],
                   f"check num_classes of {name} against the dataset ({what}); if {name} has {len(present)} "
                   f"classes, relabel them 0..{len(present) - 1} and set num_classes: {len(present)}",
                   f"datasets.dataset_configs.{name}.num_classes", dataset=name)


def _problem_findings(rep: SplitReport, key: str, covered: bool) -> list[Finding]:
    """The scan's other problems (missing manifests or images, bad JSON, non-integer labels),
    grouped per split into missing files and the rest."""
    missing, other = [], []
    for p in rep.problems:
        if covered and p.kind in LABEL_KINDS:
            continue
        (missing if p.kind in MISSING_KINDS else other).append(p.message)
    out = []
    name, split = rep.dataset, rep.split
    for code, probs, title, fix in (
            ("data.missing_file", missing, "missing file(s)",
             f"create the files or fix the paths ({key} is resolved against the config's folder; image paths "
             "against the manifest's)"),
            ("data.problem", other, "data problem(s)", "fix or drop the lines named")):
        if not probs:
            continue
        ev = probs[:MAX_LINES] + ([f"... and {len(probs) - MAX_LINES} more"] if len(probs) > MAX_LINES else [])
        out.append(Finding(code, "error", f"{name} {split}: {len(probs)} {title}", ev, fix, key,
                           notes={key: f"NOT fixed here (data): {len(probs)} {title} in {name} {split} "
                                       f"(finding {code})"}, dataset=name))
    return out
