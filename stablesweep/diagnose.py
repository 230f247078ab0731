"""`stablesweep diagnose`: config and data checks, an optional probe run, and a fixed config.

Findings, each with a severity (error | warning | info), the evidence (numbers, file and line,
config key) and the fix:

- labels of every dataset and split against [0, num_classes) with file and line (1-based
  manifests recognised), num_classes against the distinct labels present, missing or unreadable
  files (the data package's pre-flight scan, `stablesweep.data.manifests.scan`);
- masking against precision and loss: -inf masking (a label error becomes loss inf), a mask value
  beyond the dtype it is applied in (-1e9 in fp16 is -inf), label smoothing over value-masked
  logits, masks applied before the fp32 upcast (`loss.mask_in: autocast`);
- no gradient clipping; eval_ratio outside (0, 1]; conflicting skip_evaluation settings;
- lr against a measured boundary: a sweep's `stable_region.json` or a ramp's `ramp.json`.

The probe (`probe_steps > 0`) trains the real model on the real data for a few steps with the
same guarded loss, precision policy and monitor as a run, but keeps samples whose label is out of
range (a run's pre-flight check refuses them), so it reproduces what the user saw: forward hooks
find the first module whose output turns non-finite, and each bad sample is explained (which
loss term broke, which dataset's columns its target landed in).

Nothing the user owns is ever written: the fixed config goes to `<config stem>_fixed.yaml`
beside the config (or in `out_dir`), every changed key commented with the finding behind it.
Label errors are never "fixed" by a clamp: the finding names the manifest and lines to fix, and
the fixed config says in a comment that the data still needs it.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import json
import math
import os
import textwrap
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from stablesweep.vocab import LR_KEY, SAFETY, InputError, format_value

SEVERITIES = ("error", "warning", "info")
VALUE_MASKS = ("neg_inf", "large_negative", "finfo_min")
MAX_LINES = 10  # file:line entries listed per finding


# ---- findings -------------------------------------------------------------------------------

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
        return _scalar(self.old) if self.was_set else f"unset ({_scalar(self.old)})"


@dataclass
class Diagnosis:
    config_path: Path
    cfg: Any  # stablesweep.config.Config, as diagnosed (overrides applied)
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
                    if _same(out[key].new, value):
                        out[key].codes.append(f.code)
                    continue
                old = _get_effective(self.cfg, self.raw, key)
                out[key] = Change(key, old, value, [f.code], f.title, _key_present(self.raw, key))
        # a value restated as it was (e.g. an explicit per-dataset skip_evaluation) is no change
        return [c for c in out.values() if not (c.was_set and _same(c.old, c.new))]

    def to_dict(self) -> dict:
        return {"config": str(self.config_path), "healthy": self.healthy, "exit_code": self.exit_code,
                "counts": {s: self.count(s) for s in SEVERITIES},
                "findings": [f.to_dict() for f in self.sorted_findings()],
                "changes": [asdict(c) for c in self.changes()],
                "probe": self.probe.to_dict() if self.probe else None}


# ---- entry point ----------------------------------------------------------------------------

def diagnose(config_path: str | Path, overrides: list[str] | None = None, *, probe_steps: int = 0,
             region: str | Path | None = None, device: str = "auto",
             log: Callable[[str], None] | None = None) -> Diagnosis:
    """Diagnose a config file. Raises ConfigError (unreadable config) or InputError (unreadable
    region file): the CLI turns both into exit status 2. Reads files only."""
    from stablesweep.config import config_from_dict

    path = Path(config_path)
    raw = _read_raw(path, overrides or [])
    findings: list[Finding] = []
    patched = copy.deepcopy(raw)
    findings += check_eval_ratio(patched, str(path))  # before validation, which refuses them
    cfg = config_from_dict(patched, source=str(path), base_dir=str(path.resolve().parent))
    measured = read_region(region) if region is not None else None  # bad file: exit 2 before any work
    from stablesweep.data.manifests import scan  # torch and torchvision: only once the input reads

    report, sources = scan(cfg, cfg.data.verify_images)
    label_findings, bad_labels = check_labels(cfg, report)
    findings += label_findings
    findings += check_masking(cfg, bad_labels)
    findings += check_clipping(cfg)
    findings += check_lr(cfg, report, measured, path)
    findings += check_skip_evaluation(cfg)
    diag = Diagnosis(path, cfg, raw, findings, list(overrides or []))
    if probe_steps > 0:
        diag.probe = run_probe(cfg, probe_steps, device=device, sources=sources, log=log)
        findings += diag.probe.findings
    return diag


def _read_raw(path: Path, overrides: list[str]) -> dict:
    """The config file's mapping with the overrides applied; any read error is load_config's."""
    from stablesweep.config import apply_override, load_config

    try:
        raw = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        raw = None
    if not isinstance(raw, dict):
        load_config(path, overrides)  # raises the ConfigError that names the file, line and column
        raw = {} if raw is None else raw  # an empty file: an empty mapping, as load_config reads it
    raw = copy.deepcopy(raw)
    for ov in overrides:
        apply_override(raw, ov)
    return raw


# ---- eval settings --------------------------------------------------------------------------

def check_eval_ratio(raw: dict, source: str) -> list[Finding]:
    """eval_ratio outside (0, 1]: config validation refuses it, so it is checked on the raw mapping
    first, and replaced there (in a copy) so that the rest of the diagnosis can go on."""
    out = []
    dcs = ((raw.get("datasets") or {}).get("dataset_configs") or {}) if isinstance(raw.get("datasets"), dict) else {}
    if not isinstance(dcs, dict):
        return out
    for name, d in dcs.items():
        if not isinstance(d, dict) or "eval_ratio" not in d:
            continue
        v = d["eval_ratio"]
        try:
            r = float(v) if not isinstance(v, bool) else None
        except (TypeError, ValueError):
            r = None
        if r is None or not math.isfinite(r) or 0 < r <= 1:
            continue  # fine, or not a number (config validation names that one)
        key = f"datasets.dataset_configs.{name}.eval_ratio"
        changes: dict[str, Any]
        if 1 < r <= 100:
            new = r / 100
            changes = {key: new}
            fix = (f"eval_ratio is a fraction of the val split: {r:g} reads like a percentage; "
                   f"set {key}: {new:g} (or 1.0 for the whole split)")
        elif r <= 0:
            new = 1.0
            changes = {key: new, f"datasets.dataset_configs.{name}.skip_evaluation": True}
            fix = (f"to not evaluate {name}, set datasets.dataset_configs.{name}.skip_evaluation: true "
                   f"(eval_ratio must stay in (0, 1]); the fixed config does that")
        else:
            new = 1.0
            changes = {key: new}
            fix = f"set {key} to a fraction in (0, 1], e.g. 1.0 for the whole val split"
        out.append(Finding(
            "eval.ratio", "error", f"{name}: eval_ratio {r:g} is outside (0, 1]",
            [f"{source}: {key}: {v!r}", "stablesweep train refuses this config (exit 2)"],
            fix, key, changes, dataset=name))
        d["eval_ratio"] = new
        if r <= 0:
            d["skip_evaluation"] = True
    return out


def check_skip_evaluation(cfg) -> list[Finding]:
    ds = cfg.datasets
    names = cfg.dataset_names
    own = {n: ds.dataset_configs[n].skip_evaluation for n in names}
    evaluated = [n for n in names if not cfg.eval_skipped(n)]
    skipped = [n for n in names if cfg.eval_skipped(n)]
    out = []
    overriding = [n for n in names if own[n] is False]
    if ds.skip_evaluation and overriding:
        everyone = len(overriding) == len(names)
        ev = [f"datasets.skip_evaluation: true, and datasets.dataset_configs.<name>.skip_evaluation: false "
              f"for {', '.join(overriding)}",
              "the per-dataset setting wins (Config.eval_skipped): "
              f"evaluated: {', '.join(evaluated) or 'none'}; skipped: {', '.join(skipped) or 'none'}"]
        title = ("datasets.skip_evaluation: true has no effect: every dataset sets skip_evaluation: false"
                 if everyone else "conflicting skip_evaluation settings: the global true is overridden for "
                 + ", ".join(overriding))
        changes: dict[str, Any] = {"datasets.skip_evaluation": False}
        for n in names:
            changes[f"datasets.dataset_configs.{n}.skip_evaluation"] = cfg.eval_skipped(n)
        out.append(Finding("eval.skip_conflict", "warning", title, ev,
                           "state it once: datasets.skip_evaluation: false and an explicit per-dataset value; "
                           "the fixed config does that without changing what is evaluated",
                           "datasets.skip_evaluation", changes))
    no_val = [n for n in names if ds.dataset_configs[n].val is None
              and _source_kind(ds.dataset_configs[n]) != "synthetic"]
    really = [n for n in evaluated if n not in no_val]
    if not really:
        why = []
        if skipped:
            why.append(f"skip_evaluation resolves to true for {', '.join(skipped)}")
        if no_val:
            why.append(f"no val split configured for {', '.join(no_val)}")
        out.append(Finding("eval.none", "info", "no dataset is evaluated: an eval Loss: inf would go unseen; only "
                           "train metrics are reported", why,
                           "evaluate at least a small eval_ratio of each dataset's val split"))
    elif no_val:
        out.append(Finding("eval.no_val", "info", f"not evaluated (no val split): {', '.join(no_val)}",
                           [f"datasets.dataset_configs.{n}.val is not set" for n in no_val],
                           "add a val manifest to see per-dataset eval loss and accuracy"))
    return out


def _source_kind(d) -> str:
    from stablesweep.config import data_source

    return data_source(d)


# ---- labels and files -----------------------------------------------------------------------

@dataclass
class BadLabel:
    dataset: str
    split: str
    manifest: str  # as the config names it
    line: int
    label: int


def manifest_labels(path: Path, label_key: str) -> list[tuple[int, int]]:
    """(line, label) of every line whose label is an integer; other lines are the scan's business."""
    out = []
    with open(path, "rb") as f:
        for ln, raw in enumerate(f, 1):
            text = raw.strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(obj, dict):
                lab = obj.get(label_key)
                if isinstance(lab, int) and not isinstance(lab, bool):
                    out.append((ln, lab))
    return out


def _lines_text(lines: list[int]) -> str:
    shown = ", ".join(map(str, lines[:MAX_LINES]))
    return shown + (f", ... ({len(lines) - MAX_LINES} more)" if len(lines) > MAX_LINES else "")


def check_labels(cfg, report) -> tuple[list[Finding], list[BadLabel]]:
    """Label findings per dataset and split, and the list of out-of-range labels."""
    findings: list[Finding] = []
    bad: list[BadLabel] = []
    for rep in report.splits:
        name, split, n = rep.dataset, rep.split, rep.num_classes
        d = cfg.datasets.dataset_configs[name]
        key = f"datasets.dataset_configs.{name}.{split}"
        covered = False  # the out-of-range problems of this split are explained by a finding here
        if rep.source == "manifest" and rep.path is not None:
            path = cfg.resolve_path(rep.path)
            if path is not None and path.is_file():
                labs = manifest_labels(path, d.label_key)
                outside = [(ln, lab) for ln, lab in labs if not 0 <= lab < n]
                bad += [BadLabel(name, split, rep.path, ln, lab) for ln, lab in outside]
                f = _label_finding(name, split, rep.path, path, n, labs, outside, key)
                if f is not None:
                    findings.append(f)
                    covered = True
                absent = _absent_finding(name, split, rep.path, n, labs, outside, key)
                if absent is not None:
                    findings.append(absent)
        findings += _problem_findings(rep, key, covered)
    return findings, bad


def _label_finding(name, split, display, path, n, labs, outside, key) -> Finding | None:
    if not labs or not outside:
        return None
    values = [lab for _, lab in labs]
    lo, hi = min(values), max(values)
    counts = Counter(values)
    lines = [ln for ln, _ in outside]
    one_based = lo == 1 and hi == n
    data_key = key  # the comment sits on the manifest's key in the fixed config
    if one_based:
        at_n = [ln for ln, lab in outside if lab == n]
        ev = [f"{display}: min label 1, max {n}, num_classes {n}; class 0 never appears",
              f"{len(at_n)} of {len(labs)} lines have label {n}, outside [0, {n}): "
              f"{display}:{at_n[0]}" + (f" (lines {_lines_text(at_n)})" if len(at_n) > 1 else ""),
              f"file: {path}"]
        fix = (f"the labels of {display} are 1-based: subtract 1 from every label in that manifest "
               f"(all {len(labs)} lines) so they run 0..{n - 1}. Do not clamp: clamping merges class {n} into "
               f"class {n - 1} and hides the bug.")
        return Finding("labels.one_based", "error", f"{name} {split}: labels are 1-based in {display}", ev, fix,
                       data_key, notes={data_key: f"NOT fixed here (data): {display} has 1-based labels; subtract 1 "
                                                  f"from every label in that manifest (finding labels.one_based)"},
                       dataset=name)
    by_label: dict[int, list[int]] = {}
    for ln, lab in outside:
        by_label.setdefault(lab, []).append(ln)
    ev = []
    for lab, lns in sorted(by_label.items()):
        ev.append(f"label {lab} outside [0, {n}) at {display}:" + (str(lns[0]) if len(lns) == 1
                                                                    else f" lines {_lines_text(lns)}"))
    ev.append(f"{display}: {len(labs)} lines, labels {lo}..{hi}, num_classes {n}; file: {path}")
    if len(lines) == 1:
        fix = (f"fix or drop line {lines[0]} of {display} (label {outside[0][1]}; valid labels are 0..{n - 1})")
    else:
        fix = f"fix or drop lines {_lines_text(lines)} of {display} (valid labels are 0..{n - 1})"
    mean = len(labs) / max(1, len(set(values)))
    if set(values) == set(range(n + 1)) and len(by_label[n]) >= 0.5 * mean:
        fix += (f"; label {n} appears {len(by_label[n])} times, about as often as the other classes "
                f"({mean:.0f} a class on average): if {name} really has {n + 1} classes, set "
                f"datasets.dataset_configs.{name}.num_classes: {n + 1} instead (this moves the column offsets "
                f"of every dataset after it)")
    fix += ". Do not clamp: a clamped label trains the wrong class silently."
    return Finding("labels.out_of_range", "error",
                   f"{name} {split}: {len(lines)} label(s) outside [0, {n}) in {display}", ev, fix, data_key,
                   notes={data_key: f"NOT fixed here (data): {display} has {len(lines)} label(s) outside [0, {n}) "
                                    f"at line(s) {_lines_text(lines)}: fix or drop them (finding labels.out_of_range)"},
                   dataset=name)


def _absent_finding(name, split, display, n, labs, outside, key) -> Finding | None:
    values = {lab for _, lab in labs if 0 <= lab < n}
    if not labs:
        return None
    if min(lab for _, lab in labs) == 1 and max(lab for _, lab in labs) == n:
        return None  # explained by the 1-based finding
    if len(values) >= n:
        return None
    missing = sorted(set(range(n)) - values)
    shown = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
    sev = "warning" if split == "train" else "info"
    what = ("their head columns never see a positive example" if split == "train"
            else "their accuracy is not measured")
    return Finding("labels.classes_absent", sev,
                   f"{name} {split}: {len(values)} of num_classes {n} classes present in {display}",
                   [f"{display}: {len(values)} distinct labels in [0, {n}); absent: {shown}"],
                   f"check num_classes of {name} against the dataset ({what}); if {name} has {len(values)} "
                   f"classes, relabel them 0..{len(values) - 1} and set num_classes: {len(values)}",
                   f"datasets.dataset_configs.{name}.num_classes", dataset=name)


def _problem_findings(rep, key: str, covered: bool) -> list[Finding]:
    """The scan's other problems (missing manifests or images, bad JSON, non-integer labels),
    grouped by kind per split."""
    from stablesweep.data.manifests import ProblemKind

    missing, other = [], []
    for p in rep.problems:
        if covered and p.kind in (ProblemKind.ONE_BASED, ProblemKind.LABEL_OUT_OF_RANGE):
            continue
        (missing if p.kind in (ProblemKind.MISSING_FILE, ProblemKind.MISSING_IMAGE) else other).append(p.message)
    out = []
    name, split = rep.dataset, rep.split
    for kind, probs, title, fix in (
            ("data.missing_file", missing, "missing file(s)",
             f"create the files or fix the paths ({key} is resolved against the config's folder; image paths "
             "against the manifest's)"),
            ("data.problem", other, "data problem(s)", "fix or drop the lines named")):
        if not probs:
            continue
        ev = probs[:MAX_LINES] + ([f"... and {len(probs) - MAX_LINES} more"] if len(probs) > MAX_LINES else [])
        out.append(Finding(kind, "error", f"{name} {split}: {len(probs)} {title}", ev, fix, key,
                           notes={key: f"NOT fixed here (data): {len(probs)} {title} in {name} {split} "
                                       f"(finding {kind})"}, dataset=name))
    return out


# ---- masking, precision, loss ---------------------------------------------------------------

def _measure_loss(cfg, masking: str, label_space, dataset: int = 0, dtype=None) -> float:
    """The guarded loss of one sample with a correct label and all-zero logits (of the dtype the
    model emits under the run's precision): what the loss config does to a healthy sample (e.g.
    inf for label smoothing over -inf masks)."""
    import torch

    from stablesweep.data.mixing import Batch
    from stablesweep.stability.loss import GuardedLoss

    off = label_space.offsets[dataset]
    logits = torch.zeros(1, label_space.total, dtype=dtype or torch.float32)
    batch = Batch(torch.empty(0), torch.tensor([off]), torch.tensor([0]), torch.tensor([dataset]),
                  ((dataset, 0, 1),))
    return float(GuardedLoss(cfg.loss, masking, label_space)(logits, batch).loss)


def _owner(space, column: int) -> tuple[str, int] | None:
    for name, off, n in zip(space.names, space.offsets, space.num_classes):
        if off <= column < off + n:
            return name, column - off
    return None


def check_masking(cfg, bad_labels: list[BadLabel]) -> list[Finding]:
    import torch

    from stablesweep.data.mixing import LabelSpace
    from stablesweep.stability.loss import mask_value

    space = LabelSpace.from_config(cfg)
    lo, t = cfg.loss, cfg.training
    masking = cfg.masking
    eps = lo.label_smoothing if lo.type == "label_smoothing" else 0.0
    amp = t.precision in ("fp16", "bf16")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(t.precision, torch.float32)
    in_dtype = dtype if lo.mask_in == "autocast" else torch.float32
    out: list[Finding] = []
    mkey = "loss.masking"
    src = "loss.masking" if lo.masking is not None else "datasets.enable_logits_masking (loss.masking unset)"

    if masking in VALUE_MASKS and bad_labels:
        ev = []
        for b in bad_labels[:MAX_LINES]:
            d = space.index(b.dataset)
            col = space.offsets[d] + b.label
            own = _owner(space, col)
            if own is None:
                ev.append(f"{b.manifest}:{b.line}: {b.dataset} label {b.label} (num_classes "
                          f"{space.num_classes[d]}) -> global column {col}, beyond all {space.total} columns: "
                          "an IndexError on CPU, a device-side assert on CUDA")
            else:
                ev.append(f"{b.manifest}:{b.line}: {b.dataset} label {b.label} (num_classes {space.num_classes[d]}) "
                          f"-> global column {col} = {own[0]} class {own[1]}, masked for {b.dataset} samples")
        if len(bad_labels) > MAX_LINES:
            ev.append(f"... and {len(bad_labels) - MAX_LINES} more")
        v = float(mask_value(masking, in_dtype, lo.mask_value))
        what = "inf" if v == float("-inf") else f"about {-v:.3g}"
        ev.append(f"{src}: {masking}: the target logit of such a sample is {v:.3g}, its cross entropy {what} "
                  "with finite gradients: training goes on while every loss that includes it reads inf")
        out.append(Finding("masking.target_masked", "error",
                           f"{len(bad_labels)} out-of-range label(s) land in another dataset's columns, which the "
                           f"{masking} mask hides: this is what makes the loss inf",
                           ev, "fix the labels (findings labels.*); loss.masking: slice computes each sample's loss "
                               "over its own dataset's columns, so a label error fails loudly instead of reading inf",
                           mkey, {mkey: "slice"}))

    if masking in VALUE_MASKS and eps > 0:
        loss = _measure_loss(cfg, masking, space, dtype=dtype)
        sev = "error" if not math.isfinite(loss) else "warning"
        ev = [f"loss.type: label_smoothing, loss.label_smoothing: {eps:g}; {src}: {masking}"
              + (f", loss.mask_value: {lo.mask_value:g}" if masking == "large_negative" else ""),
              f"measured: the guarded loss of a sample with a correct label and zero logits over {space.total} "
              f"classes is {loss:.4g} (chance level for its dataset, {space.names[0]} with "
              f"{space.num_classes[0]} classes, is {math.log(max(2, space.num_classes[0])):.3g})",
              "smoothing puts mass eps/C on every class, the masked ones included"]
        out.append(Finding("masking.smoothing", sev,
                           f"label smoothing over {masking}-masked logits: the loss is {loss:.3g} even when every "
                           "label is right", ev,
                           "loss.masking: slice (smoothing over the dataset's own classes only)", mkey,
                           {mkey: "slice"}))

    if masking == "large_negative" and lo.mask_in == "autocast" and amp:
        fmin = torch.finfo(dtype).min
        stored = float(mask_value(masking, dtype, lo.mask_value))
        if lo.mask_value < fmin:
            ev = [f"loss.mask_value: {lo.mask_value:g}, loss.mask_in: autocast, training.precision: {t.precision}",
                  f"the smallest {t.precision} value is {fmin:g}: {lo.mask_value:g} stored in {t.precision} is "
                  f"{stored:g} (measured: the conversion `x[mask] = {lo.mask_value:g}` makes); masked_fill raises "
                  "instead",
                  "so this is -inf masking, with all its failure modes (a label error or label smoothing -> inf)"]
            out.append(Finding("masking.value_overflow", "error",
                               f"mask value {lo.mask_value:g} does not exist in {t.precision}: it becomes {stored:g}",
                               ev, "loss.masking: slice (no mask value at all; exact); or mask in fp32 "
                                   "(loss.mask_in: fp32), or use bf16", mkey, {mkey: "slice"}))
    elif masking == "large_negative" and t.precision == "fp16" and lo.mask_value < torch.finfo(torch.float16).min:
        out.append(Finding("masking.value_fp32_only", "info",
                           f"mask value {lo.mask_value:g} is beyond fp16 but applied in fp32 (loss.mask_in: fp32)",
                           [f"fp16 min is {torch.finfo(torch.float16).min:g}; in fp16 it would be -inf"],
                           "keep loss.mask_in: fp32, or use loss.masking: slice which needs no mask value",
                           "loss.mask_value"))

    if masking in VALUE_MASKS and lo.mask_in == "autocast" and amp:
        stored = float(mask_value(masking, dtype, lo.mask_value))
        out.append(Finding("masking.mask_in_autocast", "warning",
                           f"masks are applied in {t.precision}, before the fp32 upcast of the loss",
                           [f"loss.mask_in: autocast with training.precision: {t.precision}; {masking} in "
                            f"{t.precision} is {stored:g}",
                            "under autocast cross_entropy/log_softmax run in fp32 but the masking op does not"],
                           "loss.mask_in: fp32 (cast the logits, then mask)", "loss.mask_in",
                           {"loss.mask_in": "fp32"}))

    if masking == "neg_inf" and not any(f.code in ("masking.target_masked",) for f in out):
        out.append(Finding("masking.neg_inf", "warning",
                           "-inf masking turns any label mapping error into loss inf with finite gradients",
                           [f"{src}: neg_inf",
                            "a masked target logit gives cross entropy inf; training goes on while every logged "
                            "loss reads inf (the incident); all logits masked gives NaN"],
                           "loss.masking: slice: equal to -inf masking when the labels are right, needs no mask "
                           "value, and a wrong label fails loudly", mkey, {mkey: "slice"}))

    if masking == "none" and len(space.names) > 1:
        out.append(Finding("masking.none", "info",
                           f"no logits masking: each sample's softmax runs over all {space.total} classes of "
                           f"{len(space.names)} datasets",
                           [f"{src}: none"],
                           "with one head over several label spaces, datasets.enable_logits_masking: true "
                           "(masking slice) keeps each sample's loss and prediction within its own dataset",
                           mkey))
    return out


def check_clipping(cfg) -> list[Finding]:
    t = cfg.training
    if t.max_grad_norm is not None:
        return []
    return [Finding("clip.none", "warning", "no gradient clipping (training.max_grad_norm: null)",
                    ["training.max_grad_norm: null: one bad batch can take a step of any size"],
                    "training.max_grad_norm: 1.0 (clipping does not rescue a non-finite gradient; the guard skips "
                    "those steps)", "training.max_grad_norm", {"training.max_grad_norm": 1.0})]


# ---- lr against a measured boundary ---------------------------------------------------------

@dataclass
class MeasuredSetting:
    key: dict[str, Any]  # dotted config key -> value (the categorical axes)
    label: str
    max_stable_lr: float | None
    min_diverged_lr: float | None
    recommended_lr: float | None
    budget_steps: int | None


@dataclass
class MeasuredRegion:
    path: str
    kind: str  # sweep | ramp
    lr_key: str
    budget_steps: int | None
    settings: list[MeasuredSetting]


# short axis names a region file may use -> the dotted config keys
_ALIASES = {"lr": "training.lr", "precision": "training.precision", "clip": "training.max_grad_norm",
            "max_grad_norm": "training.max_grad_norm", "masking": "loss.masking", "loss_type": "loss.type",
            "label_smoothing": "loss.label_smoothing", "mask_in": "loss.mask_in", "optimizer": "training.optimizer"}


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _int(v: Any) -> int | None:
    f = _num(v)
    return int(f) if f is not None else None


def read_region(path: str | Path) -> MeasuredRegion:
    """A sweep's stable_region.json (analysis.region.write_region) or a ramp's ramp.json.

    Tolerant: a list of settings under `groups`, `settings` or `results` (or a mapping of label ->
    setting), each with its categorical axes under `key` / `setting` / `params` / `group` and
    `max_stable_lr`, optionally `min_diverged_lr`, `recommended_lr`, `budget_steps` (or `steps`).
    Anything else is an InputError that says what was expected.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--region {p}: no such file (expected a sweep's stable_region.json or a ramp's ramp.json)")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"--region {p}: not JSON: {e}") from None
    expect = ("expected a sweep's stable_region.json (`groups`: [{key, max_stable_lr, min_diverged_lr, ...}]) "
              "or a ramp's ramp.json (`settings`: [{setting, max_stable_lr, min_diverged_lr, recommended_lr}])")
    if not isinstance(data, dict):
        raise InputError(f"--region {p}: unknown format: a JSON {type(data).__name__}; {expect}")
    entries = None
    kind = "sweep"
    for k in ("groups", "settings", "results", "setups"):
        if k in data:
            entries = data[k]
            kind = "sweep" if k == "groups" else "ramp"
            break
    if isinstance(data.get("kind"), str):
        kind = data["kind"]
    elif "ramp" in p.name:
        kind = "ramp"
    if isinstance(entries, dict):
        entries = [{"label": lab, **e} if isinstance(e, dict) else e for lab, e in entries.items()]
    if not isinstance(entries, list):
        raise InputError(f"--region {p}: unknown format: no list of settings; {expect}")
    lr_key = data.get("lr_key") if isinstance(data.get("lr_key"), str) else LR_KEY
    top_budget = _int(data.get("budget_steps", data.get("budget", data.get("steps"))))
    settings = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise InputError(f"--region {p}: setting #{i} is a {type(e).__name__}, not an object; {expect}")
        key = None
        for k in ("key", "setting", "params", "group"):
            if isinstance(e.get(k), dict):
                key = {_ALIASES.get(str(a), str(a)): b for a, b in e[k].items()}
                key.pop(lr_key, None)
                break
        if key is None:
            if any(k in e for k in ("key", "setting", "params", "group")):
                raise InputError(f"--region {p}: setting #{i}: its key is not an object; {expect}")
            key = {}
        if "max_stable_lr" not in e and "min_diverged_lr" not in e:
            raise InputError(f"--region {p}: setting #{i} has neither max_stable_lr nor min_diverged_lr; {expect}")
        label = e.get("label") if isinstance(e.get("label"), str) else (
            " ".join(f"{k}={_fmt(v)}" for k, v in key.items()) or "all")
        settings.append(MeasuredSetting(
            key=key, label=label, max_stable_lr=_num(e.get("max_stable_lr")),
            min_diverged_lr=_num(e.get("min_diverged_lr")), recommended_lr=_num(e.get("recommended_lr")),
            budget_steps=_int(e.get("budget_steps", e.get("budget", e.get("steps_per_probe", e.get("steps")))))
            or top_budget))
    return MeasuredRegion(str(p), kind, lr_key, top_budget, settings)


def config_value(cfg, key: str) -> tuple[bool, Any]:
    """(found, value) of a dotted key in the config as it runs (loss.masking resolved)."""
    from stablesweep.config import get_dotted

    if key == "loss.masking":
        return True, cfg.masking
    sentinel = object()
    v = get_dotted(cfg.to_dict(), key, sentinel)
    return (v is not sentinel), (None if v is sentinel else v)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b and type(a) is type(b)
    fa, fb = _num(a), _num(b)
    if fa is not None and fb is not None and not isinstance(a, str) and not isinstance(b, str):
        return math.isclose(fa, fb, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def match_setting(cfg, region: MeasuredRegion) -> MeasuredSetting | None:
    for s in region.settings:
        if all(config_value(cfg, k)[0] and _same(config_value(cfg, k)[1], v) for k, v in s.key.items()):
            return s
    return None


def _fmt(v: Any) -> str:
    return format_value(v)


def check_lr(cfg, report, measured: MeasuredRegion | None, config_path: Path) -> list[Finding]:
    from stablesweep.config import total_steps

    lr = cfg.training.lr
    setting = (f"precision {cfg.training.precision}, masking {cfg.masking}, clip "
               f"{_fmt(cfg.training.max_grad_norm)}, loss {cfg.loss.type}")
    if measured is None:
        return [Finding("lr.unmeasured", "info",
                        f"lr {lr:.3g} is not checked against a measured stability boundary",
                        [f"training.lr: {lr:g} ({setting}); no --region given"],
                        f"run `stablesweep ramp {config_path}` (or a sweep) and pass its ramp.json "
                        "(or stable_region.json) with --region", "training.lr")]
    train = sum(s.count for s in report.splits if s.split == "train")
    run_steps = total_steps(cfg, max(train, 1))
    s = match_setting(cfg, measured)
    name = Path(measured.path).name
    if s is None:
        known = "; ".join(x.label for x in measured.settings[:8]) or "none"
        keys = sorted({k for x in measured.settings for k in x.key})
        mine = ", ".join(f"{k}={_fmt(config_value(cfg, k)[1])}" for k in keys)
        return [Finding("lr.setting_unmeasured", "info",
                        f"{name} has no measurement for this config's setting ({mine or setting})",
                        [f"measured settings: {known}"],
                        f"run `stablesweep ramp {config_path}` with this setting in the space", "training.lr")]
    budget = s.budget_steps or measured.budget_steps
    bud = f"{budget} steps" if budget else "an unknown step budget"
    ev = [f"{name} ({measured.kind}), setting {s.label}: max stable lr "
          f"{_fmt(s.max_stable_lr)}, min diverged lr {_fmt(s.min_diverged_lr)}, measured over {bud}",
          f"training.lr: {lr:g}"]
    if budget and run_steps > budget:
        ev.append(f"this config trains {run_steps} steps, longer than the {budget} measured: a run stable for "
                  f"{budget} steps may still diverge later")
    M, D = s.max_stable_lr, s.min_diverged_lr
    rec = s.recommended_lr
    if rec is None and M is not None:
        rec = min(M, SAFETY * D) if D is not None else M
    if M is None:
        return [Finding("lr.no_stable", "error",
                        f"no lr was stable with this setting ({s.label}) in {name}", ev,
                        "change the setting (precision, masking, clipping) to one with a measured stable lr, or "
                        f"ramp lower than {_fmt(D)}", "training.lr")]
    if D is not None and lr >= D:
        return [Finding("lr.above_boundary", "error",
                        f"lr {lr:.3g} is at or above the smallest lr that diverged ({D:.3g}) with this setting",
                        ev, f"training.lr: {rec:.3g} (the recommended lr: max stable {M:.3g}"
                            + (f", at most {SAFETY} x {D:.3g}" if D is not None else "") + ")",
                        "training.lr", {"training.lr": float(f"{rec:.3g}")})]
    if lr > M:
        return [Finding("lr.above_max_stable", "warning",
                        f"lr {lr:.3g} is {lr / M:.3g}x the largest lr measured stable ({M:.3g}) with this setting",
                        ev,
                        f"training.lr: {rec:.3g} (the recommended lr), or measure up to {lr:g} with "
                        f"`stablesweep ramp`", "training.lr", {"training.lr": float(f"{rec:.3g}")})]
    return [Finding("lr.within", "info",
                    f"lr {lr:.3g} is within the measured stable range (max stable {M:.3g}; {lr / M:.2g}x of it)",
                    ev, "nothing to change" + (f"; recommended {rec:.3g}" if rec is not None and lr > rec else ""),
                    "training.lr")]


# ---- the probe ------------------------------------------------------------------------------

@dataclass
class BadSample:
    step: int
    dataset: str
    where: str  # file:line
    label: int
    num_classes: int
    global_label: int
    loss: float | None
    term: str  # which loss term broke
    detail: str


@dataclass
class ProbeResult:
    steps_run: int
    steps_asked: int
    device: str
    verdict: str
    reason: str | None
    first_bad_step: int  # the first step with a non-finite loss or gradient, or an out-of-bounds target
    first_module: str | None  # the first module whose output turned non-finite (e.g. features.0 (Conv2d))
    first_module_step: int
    first_grad_param: str | None
    dataset_loss: dict[str, float]  # per-dataset mean loss at the first bad step
    bad_samples: list[BadSample]
    bad_label_samples_seen: int
    error: str | None = None
    dataset_loss_step: int = -1
    targeted: int = 0  # out-of-range samples examined in one extra batch after the steps (none drawn)
    losses: list[float] = field(default_factory=list)  # the train loss of each step
    findings: list[Finding] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["findings"] = [f.to_dict() for f in self.findings]
        return d


class _Empty:
    def __len__(self) -> int:
        return 0


def run_probe(cfg, steps: int, *, device: str = "auto", sources: dict | None = None,
              log: Callable[[str], None] | None = None) -> ProbeResult:
    """Train `steps` steps of the real model on the real data, keeping out-of-range labels."""
    import torch

    from stablesweep.config import total_steps
    from stablesweep.data.manifests import DataError, scan
    from stablesweep.data.mixing import Batch, LabelSpace, MixingBatchSampler
    from stablesweep.model import build_model
    from stablesweep.stability.loss import GuardedLoss
    from stablesweep.stability.monitor import DivergenceMonitor
    from stablesweep.stability.precision import make_optimizer, make_precision
    from stablesweep.train import lr_factor, resolve_device

    say = log or (lambda s: None)
    dev = resolve_device(device)
    t = cfg.training
    torch.manual_seed(t.seed)
    if sources is None:
        _, sources = scan(cfg, "none")
    space = LabelSpace.from_config(cfg)
    train = [sources.get((n, "train")) or _Empty() for n in space.names]
    sizes = [len(s) for s in train]
    res = ProbeResult(0, steps, str(dev), "stable", None, -1, None, -1, None, {}, [], 0)
    unusable = [n for n, s in zip(space.names, train) if len(s) == 0]
    try:
        sampler = MixingBatchSampler(sizes, t.batch_size, t.seed, cfg.datasets.mixing,
                                     [cfg.datasets.dataset_configs[n].weight or 1.0 for n in space.names])
    except (DataError, ValueError) as e:
        res.error = f"no batches to train on: {e}"
        res.findings = [Finding("probe.skipped", "error", "the probe could not build a batch", [str(e)],
                                "fix the data findings first")]
        return res
    starts = [0]
    for n in sizes:
        starts.append(starts[-1] + n)

    model = build_model(cfg.model, space.total, cfg.source).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    precision = make_precision(t.precision, dev, t.tf32)
    optimizer = make_optimizer(t.optimizer, params, lr=t.lr, weight_decay=t.weight_decay, momentum=t.momentum,
                               betas=t.betas)
    total = total_steps(cfg, sum(sizes))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, t.warmup_steps, total, t.schedule))
    loss_fn = GuardedLoss(cfg.loss, cfg.masking, space, dev)
    # a probe is short: let the explosion rule (smoothed loss > factor x its best) apply from step 2
    monitor = DivergenceMonitor(dataclasses.replace(cfg.monitor, min_steps=min(cfg.monitor.min_steps, 2)), dev,
                                compile=False)
    masking = cfg.masking

    state = {"step": -1, "module": None}

    def hook(name):
        def fn(mod, inputs, output):
            if state["module"] is not None or not isinstance(output, torch.Tensor):
                return
            if output.is_floating_point() and not bool(torch.isfinite(output).all()):
                state["module"] = (state["step"], f"{name or 'model'} ({type(mod).__name__})")
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()]
    say(f"probe: {steps} steps on {dev} ({t.precision}, masking {masking}, lr {t.lr:.2e}), out-of-range labels kept")

    def prepare(step: int, items: list[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
        """(dataset, index, local label, global label) of the samples a loss can take; a sample whose
        target would be out of bounds (an IndexError on CPU, a device assert on CUDA) is recorded and
        dropped, as the host can see it before any kernel runs."""
        keep = []
        for d, i in sorted(items, key=lambda x: x[0]):
            lab = train[d].label(i)
            n, off = space.num_classes[d], space.offsets[d]
            g = off + lab
            if 0 <= lab < n or (masking != "slice" and 0 <= g < space.total):
                keep.append((d, i, lab, g))
                continue
            own = _owner(space, g)
            why = (f"outside the dataset's own {n} columns (masking slice)" if masking == "slice" and own is not None
                   else f"global column {g} is outside the {space.total} columns")
            res.bad_samples.append(BadSample(
                step, space.names[d], train[d].where(i), lab, n, g, None, "target out of bounds",
                f"label {lab} with num_classes {n}: {why}: an IndexError on CPU, a device-side assert on CUDA; "
                "the probe drops the sample and goes on"))
            if res.first_bad_step < 0:
                res.first_bad_step = step
        return keep

    def forward(keep):
        images = torch.stack([train[d].load(i) for d, i, _, _ in keep])
        ds = [d for d, _, _, _ in keep]
        segments, start = [], 0
        for k in range(1, len(ds) + 1):
            if k == len(ds) or ds[k] != ds[start]:
                segments.append((ds[start], start, k))
                start = k
        batch = Batch(images, torch.tensor([g for *_, g in keep]), torch.tensor([lab for _, _, lab, _ in keep]),
                      torch.tensor(ds), tuple(segments)).to(dev)
        with precision.autocast():
            logits = model(batch.images)
        out = loss_fn(logits, batch)
        return batch, logits, out, out.per_sample.detach().float().cpu()

    def examine(step, keep, batch, logits, out, per) -> bool:
        """Explain the bad samples of a batch; True when it had any."""
        bad_here = [k for k, (d, i, lab, g) in enumerate(keep)
                    if not math.isfinite(float(per[k])) or not 0 <= lab < space.num_classes[d]]
        lg = logits.detach().float().cpu() if bad_here else None
        for k in bad_here[:MAX_LINES]:
            d, i, lab, g = keep[k]
            term, detail = explain_sample(loss_fn, logits[k:k + 1].detach(), batch.dataset_ids[k:k + 1], lg[k], d,
                                          lab, g, space, cfg, float(per[k]))
            res.bad_samples.append(BadSample(step, space.names[d], train[d].where(i), lab, space.num_classes[d], g,
                                             float(per[k]), term, detail))
        bad = bool(bad_here) or not math.isfinite(float(out.loss.detach()))
        if bad and not res.dataset_loss:
            res.dataset_loss_step = step
            for d, s0, s1 in batch.segments:
                res.dataset_loss[space.names[d]] = float(per[s0:s1].mean())
        return bad

    def out_of_range(d: int) -> list[int]:
        labels = getattr(train[d], "labels", None)
        if labels is None:
            return []
        return [int(i) for i in ((labels < 0) | (labels >= space.num_classes[d])).nonzero()[0]]

    it = iter(sampler)
    try:
        for step in range(steps):
            state["step"] = step
            items = []
            for g in next(it):
                d = next(k for k in range(len(sizes)) if starts[k] <= g < starts[k + 1])
                items.append((d, g - starts[d]))
            res.bad_label_samples_seen += sum(not 0 <= train[d].label(i) < space.num_classes[d] for d, i in items)
            keep = prepare(step, items)
            if keep:
                batch, logits, out, per = forward(keep)
                examine(step, keep, batch, logits, out, per)
                res.losses.append(float(out.loss.detach()))
                precision.backward(out.loss)
                flags = precision.step(optimizer, params, out.loss, t.max_grad_norm, monitor)
                if res.first_grad_param is None and math.isfinite(float(out.loss.detach())) \
                        and not math.isfinite(float(flags.grad_norm)):
                    for name, p in model.named_parameters():
                        if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                            res.first_grad_param = f"{name} (step {step})"
                            break
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
            res.steps_run = step + 1
        # out-of-range samples the sampled steps did not draw: one more forward pass (no update) on
        # a batch of them, so the probe explains them whatever the sampling order
        targets = [(d, i) for d in range(len(train)) for i in out_of_range(d)]
        if targets and res.bad_label_samples_seen == 0:
            res.targeted = min(len(targets), t.batch_size)
            state["step"] = res.steps_run
            keep = prepare(res.steps_run, targets[:t.batch_size])
            if keep:
                with torch.no_grad():
                    batch, logits, out, per = forward(keep)
                    examine(res.steps_run, keep, batch, logits, out, per)
    except DataError as e:
        res.error = str(e)
    finally:
        for h in handles:
            h.remove()
    snap, verdict = monitor.read()
    res.verdict, res.reason = verdict.verdict, verdict.reason
    if verdict.first_bad_step >= 0 and (res.first_bad_step < 0 or verdict.first_bad_step < res.first_bad_step):
        res.first_bad_step = verdict.first_bad_step
    if state["module"] is not None:
        res.first_module_step, res.first_module = state["module"]
    if any(b.term == "target out of bounds" for b in res.bad_samples) and res.verdict == "stable":
        res.verdict, res.reason = "error", "target_out_of_bounds"  # a run would crash there
    res.findings = _probe_findings(cfg, res, snap, unusable)
    return res


def explain_sample(loss_fn, logits_k, dataset_ids_k, row, d: int, lab: int, g: int, space, cfg,
                   loss: float) -> tuple[str, str]:
    """(the loss term that broke, the detail) for one sample whose loss is bad or label out of range."""
    import torch

    name, n = space.names[d], space.num_classes[d]
    masking = cfg.masking
    if not bool(torch.isfinite(row).all()):
        bad = int((~torch.isfinite(row)).sum())
        return "model output non-finite", f"{bad} of {row.numel()} logits are not finite before any masking"
    in_range = 0 <= lab < n
    own = _owner(space, g)
    if masking in VALUE_MASKS:
        x = loss_fn.masked_logits(logits_k, dataset_ids_k)[0].float().cpu()
        if not in_range and own is not None:
            return ("target logit masked",
                    f"label {lab} with num_classes {n}: global column {g} is {own[0]}'s class {own[1]}, which the "
                    f"{masking} mask sets to {float(x[g]):.3g} for {name} samples; loss {loss:.4g}")
        if bool((~torch.isfinite(x)).all()):
            return "all logits masked", f"every logit of the {name} sample is masked: cross entropy NaN"
        eps = cfg.loss.label_smoothing if cfg.loss.type == "label_smoothing" else 0.0
        logp = torch.log_softmax(x, dim=0)
        nll = float(-logp[g])
        smooth = float(-logp.mean())
        if eps > 0 and not math.isfinite(smooth):
            return ("label smoothing term",
                    f"target term {nll:.4g} is finite, the smoothing term (eps {eps:g} over all {space.total} "
                    f"classes) is {smooth:.4g}: smoothing puts mass on the {masking}-masked classes")
        if not math.isfinite(nll):
            return "target term", f"target logit {float(x[g]):.4g}: cross entropy {nll:.4g}"
    if masking == "none" and not in_range and own is not None:
        return ("target in another dataset",
                f"label {lab} with num_classes {n}: without masking global column {g} is {own[0]}'s class "
                f"{own[1]}: the loss is finite ({loss:.4g}) and the sample silently trains the wrong class")
    if cfg.loss.z_loss and not math.isfinite(loss):
        return "z-loss term", "logsumexp of the logits overflowed"
    return "cross entropy", f"loss {loss:.4g} with finite logits (max |logit| {float(row.abs().max()):.4g})"


def _probe_findings(cfg, res: ProbeResult, snap, unusable: list[str]) -> list[Finding]:
    out = []
    head = (f"probe: {res.steps_run} of {res.steps_asked} steps on {res.device} ({cfg.training.precision}, "
            f"masking {cfg.masking}, lr {cfg.training.lr:.3g})")
    ev = [head + f": verdict {res.verdict}" + (f" ({res.reason} at step {res.first_bad_step})" if res.reason else "")]
    if unusable:
        ev.append(f"no usable train samples for {', '.join(unusable)}: not in the probe")
    if res.targeted:
        ev.append(f"the {res.steps_run} steps drew none of the out-of-range samples; one extra batch of "
                  f"{res.targeted} of them after step {res.steps_run - 1} (no update):")
    if res.dataset_loss:
        at = (f"in the extra batch" if res.targeted and res.dataset_loss_step == res.steps_run
              else f"at step {res.dataset_loss_step}")
        ev.append(f"per-dataset loss {at}: "
                  + ", ".join(f"{k} {v:.4g}" for k, v in res.dataset_loss.items()))
    ev.append(f"first module whose output turned non-finite: {res.first_module} at step {res.first_module_step}"
              if res.first_module else "model outputs finite at every probed step (no forward hook fired)")
    if res.first_grad_param:
        ev.append(f"first non-finite gradient: {res.first_grad_param}")
    if res.losses:
        shown = ", ".join(f"{v:.3g}" for v in res.losses[:12]) + (", ..." if len(res.losses) > 12 else "")
        ev.append(f"train loss per step: {shown}")
    if res.error:
        ev.append(f"stopped: {res.error}")
    def when(b: BadSample) -> str:
        return f"extra batch after step {b.step - 1}" if res.targeted and b.step == res.steps_run else f"step {b.step}"

    def listed(bad: list[BadSample]) -> list[str]:
        lines = [f"{when(b)}, {b.dataset} {b.where}: {b.term}: {b.detail}" for b in bad[:MAX_LINES]]
        if len(bad) > MAX_LINES:
            lines.append(f"... {len(bad) - MAX_LINES} more")
        lines.append("by dataset: " + ", ".join(f"{k} {v}" for k, v in Counter(b.dataset for b in bad).items()))
        return lines

    label_bad = [b for b in res.bad_samples if not 0 <= b.label < b.num_classes]
    other_bad = [b for b in res.bad_samples if 0 <= b.label < b.num_classes and b.term != "model output non-finite"]
    if label_bad:
        first = label_bad[0]
        title = (f"probe: {when(first)}, {first.dataset}: {first.term}, label {first.label} with num_classes "
                 f"{first.num_classes}")
        if cfg.masking == "slice":
            fix = ("fix the labels named by the labels.* findings (the probe keeps them; a run's pre-flight refuses "
                   "them, and with masking slice the loss would fail loudly on them)")
        else:
            fix = ("fix the labels named by the labels.* findings (the probe keeps them; a run's pre-flight refuses "
                   "them); loss.masking: slice makes such a label fail loudly instead of reading inf")
        out.append(Finding("probe.bad_labels", "error", title, ev + listed(label_bad), fix,
                           "loss.masking", dataset=first.dataset))
    if other_bad:
        first = other_bad[0]
        out.append(Finding("probe.loss_term", "error",
                           f"probe: {when(first)}, {first.dataset}: {first.term} (labels in range)",
                           ev + listed(other_bad),
                           "see the masking.* findings (loss.masking: slice)" if "masked" in first.term
                           or "smoothing" in first.term else
                           "lower training.lr (measure the boundary with `stablesweep ramp`) and keep clipping on",
                           "loss.masking" if "masked" in first.term or "smoothing" in first.term else "training.lr",
                           dataset=first.dataset))
    unexplained = res.verdict == "diverged" and not res.bad_samples
    if res.first_module or res.first_grad_param or res.reason == "loss_explosion" or unexplained or res.error:
        if res.error:
            title = f"probe: stopped at step {res.steps_run}: {res.error.splitlines()[0]}"
        else:
            where = (f"; first non-finite output: {res.first_module} at step {res.first_module_step}"
                     if res.first_module else "")
            title = f"probe: diverged at step {res.first_bad_step} ({res.reason}){where}"
        out.append(Finding("probe.diverged", "error", title, ev,
                           "lower training.lr (measure the boundary with `stablesweep ramp`), keep clipping on "
                           "(training.max_grad_norm), and see the other findings", "training.lr"))
    if not out:
        ev.append(f"max loss {snap.max_loss:.4g}, max grad norm {snap.max_grad_norm:.4g}; stable for "
                  f"{res.steps_run} steps only: a longer run may still diverge")
        out.append(Finding("probe.stable", "info", head + ": stable, every loss and gradient finite", ev,
                           "nothing to fix from the probe", None))
    return out


# ---- the fixed config ----------------------------------------------------------------------

def _get_effective(cfg, raw: dict, key: str) -> Any:
    from stablesweep.config import get_dotted

    sentinel = object()
    v = get_dotted(raw, key, sentinel)
    if v is not sentinel:
        return v
    found, value = config_value(cfg, key)
    return value if found else None


def _scalar(v: Any) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e6:
        return f"{v:.1f}"
    text = yaml.safe_dump(v, default_flow_style=True, width=10 ** 9, allow_unicode=True)
    if text.endswith("\n...\n"):
        text = text[:-5]
    return text.strip()


def _emit(node: dict, path: tuple, indent: int, lines: list[str], comments: dict, inline: dict) -> None:
    pad = " " * indent
    for k, v in node.items():
        p = path + (str(k),)
        for c in comments.get(p, []):
            for wrapped in textwrap.wrap(c, width=max(40, 110 - indent), break_long_words=False,
                                         break_on_hyphens=False) or [""]:
                lines.append(f"{pad}# {wrapped}")
        key = _scalar(k) if not isinstance(k, str) or not k.isidentifier() else k
        tail = f"  # {inline[p]}" if p in inline else ""
        if isinstance(v, dict) and v:
            lines.append(f"{pad}{key}:{tail}")
            _emit(v, p, indent + 2, lines, comments, inline)
        elif isinstance(v, (list, tuple)):
            lines.append(f"{pad}{key}: [{', '.join(_scalar(x) for x in v)}]{tail}")
        elif isinstance(v, dict):
            lines.append(f"{pad}{key}: {{}}{tail}")
        else:
            lines.append(f"{pad}{key}: {_scalar(v)}{tail}")


def fixed_config(diag: Diagnosis, out_dir: str | Path | None = None) -> tuple[Path, str, list[Change]] | None:
    """(path, YAML text, changes) of `<stem>_fixed.yaml`; None when there is nothing to change.
    The text is checked to load as a config before it is returned."""
    from stablesweep.config import ConfigError, config_from_dict, set_dotted

    changes = diag.changes()
    if not changes:
        return None
    src = diag.config_path
    folder = Path(out_dir) if out_dir is not None else src.parent
    target = folder / f"{src.stem}_fixed.yaml"
    raw = copy.deepcopy(diag.raw)
    comments: dict[tuple, list[str]] = {}
    inline: dict[tuple, str] = {}
    by_code = {f.code: f for f in diag.findings}
    for c in changes:
        set_dotted(raw, c.key, c.new)
        p = tuple(c.key.split("."))
        for code in c.codes:
            f = by_code[code]
            comments.setdefault(p, []).append(f"diagnose {f.severity} {code}: {f.title}")
        inline[p] = f"was {c.old_text}"
    data_notes = []
    for f in diag.findings:
        for key, note in f.notes.items():
            p = tuple(key.split("."))
            if note not in comments.get(p, []):
                comments.setdefault(p, []).append(note)
                data_notes.append(note)
    base_dir = src.resolve().parent
    moved = folder.resolve() != base_dir
    if moved:  # manifests are resolved against the config's folder: keep them pointing at the same files
        for name, d in ((raw.get("datasets") or {}).get("dataset_configs") or {}).items():
            if not isinstance(d, dict):
                continue
            for split in ("train", "val"):
                v = d.get(split)
                if isinstance(v, str) and not Path(v).expanduser().is_absolute():
                    d[split] = os.path.relpath(base_dir / v, folder.resolve())
                    comments.setdefault(("datasets", "dataset_configs", name, split), []).append(
                        f"path relative to this file (the original config, in {base_dir}, says {v})")
    stamp = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    header = [f"# {target.name}: written by `stablesweep diagnose {src}` on {stamp}.",
              f"# The original ({src}) is unchanged. Every changed setting carries the finding behind it",
              "# (\"diagnose <severity> <code>: ...\") and its old value; the original's own comments are not kept."]
    if diag.overrides:
        header += ["# " + w for w in textwrap.wrap(
            "Overrides applied before the diagnosis (and kept here): " + " ".join(f"--set {o}" for o in diag.overrides),
            width=100, break_long_words=False, break_on_hyphens=False)]
    if data_notes:
        header.append("# DATA NOT FIXED: this file changes settings only. The data problems noted below at")
        header.append("# datasets.dataset_configs.* must be fixed in the manifests; until then the pre-flight check")
        header.append("# of `stablesweep train` refuses this config, as it should.")
    header += ["# " + w for w in textwrap.wrap(f"Changed: {', '.join(c.key for c in changes)}.", width=100,
                                                 break_long_words=False, break_on_hyphens=False)]
    lines = list(header)
    _emit(raw, (), 0, lines, comments, inline)
    text = "\n".join(lines) + "\n"
    try:
        config_from_dict(yaml.safe_load(text), source=str(target), base_dir=str(folder.resolve()))
    except (ConfigError, yaml.YAMLError) as e:  # a bug of ours: never write a config that does not load
        raise RuntimeError(f"the fixed config does not load: {e}\n{text}") from e
    return target, text, changes


def _key_present(raw: dict, key: str) -> bool:
    from stablesweep.config import get_dotted

    sentinel = object()
    return get_dotted(raw, key, sentinel) is not sentinel


def write_fixed(diag: Diagnosis, out_dir: str | Path | None = None) -> tuple[Path, list[Change]] | None:
    """Write `<stem>_fixed.yaml` (atomically); never over the config itself or another existing
    input of the diagnosis."""
    made = fixed_config(diag, out_dir)
    if made is None:
        return None
    target, text, changes = made
    if target.resolve() == diag.config_path.resolve():
        raise InputError(f"refusing to overwrite the config {diag.config_path}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, target)
    return target, changes


# ---- printing -------------------------------------------------------------------------------

def format_diagnosis(diag: Diagnosis) -> str:
    cfg = diag.cfg
    t = cfg.training
    from stablesweep.data.mixing import LabelSpace

    space = LabelSpace.from_config(cfg)
    lines = [f"diagnose {diag.config_path}: {len(space.names)} datasets, {space.total} classes, {t.precision}, "
             f"masking {cfg.masking}, lr {t.lr:.3g}, clip {_fmt(t.max_grad_norm)}, loss {cfg.loss.type}", ""]
    for f in diag.sorted_findings():
        lines.append(f"{f.severity.upper():<7} [{f.code}] {f.title}")
        for e in f.evidence:
            lines.append(f"        - {e}")
        if f.key:
            lines.append(f"        key: {f.key}")
        if f.fix:
            lines.append(f"        fix: {f.fix}")
        lines.append("")
    c = {s: diag.count(s) for s in SEVERITIES}
    verdict = "healthy" if diag.healthy else "findings"
    lines.append(f"{verdict}: {c['error']} error(s), {c['warning']} warning(s), {c['info']} info")
    return "\n".join(lines)


def format_changes(path: Path, changes: list[Change]) -> str:
    lines = [f"wrote {path} (the original is unchanged); changed:"]
    for c in changes:
        lines.append(f"  {c.key}: {c.old_text} -> {_scalar(c.new)}   "
                     f"({', '.join(c.codes)})")
    return "\n".join(lines)
