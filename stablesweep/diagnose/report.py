"""The diagnosis as a person reads it: findings by severity, then the changes written."""
from __future__ import annotations

from pathlib import Path

from stablesweep.vocab import format_value

from .diagnosis import Diagnosis
from .findings import SEVERITIES, Change, scalar


def format_diagnosis(diag: Diagnosis) -> str:
    cfg = diag.cfg
    t = cfg.training
    dcs = cfg.datasets.dataset_configs
    lines = [f"diagnose {diag.config_path}: {len(dcs)} datasets, {sum(d.num_classes for d in dcs.values())} "
             f"classes, {t.precision}, masking {cfg.masking}, lr {t.lr:.3g}, clip {format_value(t.max_grad_norm)}, "
             f"loss {cfg.loss.type}", ""]
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
        lines.append(f"  {c.key}: {c.old_text} -> {scalar(c.new)}   ({', '.join(c.codes)})")
    return "\n".join(lines)
