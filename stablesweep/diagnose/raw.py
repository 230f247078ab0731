"""The config file as written: its mapping with the overrides applied, and the one check that has to
run on it before validation (eval_ratio outside (0, 1], which validation refuses)."""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import yaml

from stablesweep.config import UniqueKeyLoader, apply_override, load_config

from .findings import Finding


def read_raw(path: Path, overrides: list[str]) -> dict:
    """The config file's mapping with the overrides applied; any read error is load_config's."""
    try:
        raw = yaml.load(path.read_text(), Loader=UniqueKeyLoader) if path.is_file() else None
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        raw = None
    if not isinstance(raw, dict):
        load_config(path, overrides)  # raises the ConfigError that names the file, line and column
        raw = {} if raw is None else raw  # an empty file: an empty mapping, as load_config reads it
    raw = copy.deepcopy(raw)
    for ov in overrides:
        apply_override(raw, ov)
    return raw


def check_eval_ratio(raw: dict, source: str) -> list[Finding]:
    """eval_ratio outside (0, 1]: config validation refuses it, so it is checked on the raw mapping
    first, and replaced there (pass a copy) so that the rest of the diagnosis can go on."""
    out: list[Finding] = []
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
