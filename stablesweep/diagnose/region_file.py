"""The measured stability boundary a diagnosis checks the lr against: a sweep's
`stable_region.json` (analysis.region.write_region) or a ramp's `ramp.json`."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stablesweep.config import Config
from stablesweep.vocab import BUDGET_STEPS, LR_KEY, InputError, finite, format_value

from .keys import config_value, same

# short axis names a region file may use -> the dotted config keys
ALIASES = {"lr": LR_KEY, "precision": "training.precision", "clip": "training.max_grad_norm",
           "max_grad_norm": "training.max_grad_norm", "masking": "loss.masking", "loss_type": "loss.type",
           "label_smoothing": "loss.label_smoothing", "mask_in": "loss.mask_in", "optimizer": "training.optimizer"}
EXPECTED = ("expected a sweep's stable_region.json (`groups`: [{key, max_stable_lr, min_diverged_lr, ...}]) "
            "or a ramp's ramp.json (`settings`: [{setting, max_stable_lr, min_diverged_lr, recommended_lr}])")


@dataclass
class MeasuredSetting:
    key: dict[str, Any]  # dotted config key -> value (the categorical axes)
    label: str
    max_stable_lr: float | None
    min_diverged_lr: float | None
    recommended_lr: float | None
    budget_steps: int | None
    min_stable_lr: float | None = None  # the bottom of the stable band
    min_failed_lr: float | None = None  # the smallest lr that diverged or stalled above the band (the edge)
    stalled_below: list[float] | None = None  # lrs that stalled below the band: too small to learn
    largest_safe_lr: float | None = None  # the safety margin below the edge: the cap of `recommended_lr`
    cause: str | None = None  # a categorical value of it fails at every lr tried: no lr boundary


@dataclass
class MeasuredRegion:
    path: str
    kind: str  # sweep | ramp
    lr_key: str
    budget_steps: int | None
    settings: list[MeasuredSetting]

    def setting_for(self, cfg: Config) -> MeasuredSetting | None:
        """The first measured setting whose every axis has the config's value."""
        for s in self.settings:
            if all(config_value(cfg, k)[0] and same(config_value(cfg, k)[1], v) for k, v in s.key.items()):
                return s
        return None


def _int(v: Any) -> int | None:
    f = finite(v)
    return int(f) if f is not None else None


def read_region(path: str | Path) -> MeasuredRegion:
    """A sweep's stable_region.json or a ramp's ramp.json.

    Tolerant: a list of settings under `groups`, `settings` or `results` (or a mapping of label ->
    setting), each with its categorical axes under `key` / `setting` / `params` / `group` and
    `max_stable_lr`, optionally `min_diverged_lr`, `recommended_lr` (the best-training lr measured
    safe), `largest_safe_lr` (its cap), `cause`, `budget_steps` (or `steps`),
    and the stall fields `min_stable_lr`, `min_failed_lr`, `stalled_below` (files written before
    the `stalled` verdict have none: the edge is then the smallest diverged lr).
    Anything else is an InputError that says what was expected.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--region {p}: no such file (expected a sweep's stable_region.json or a ramp's ramp.json)")
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"--region {p}: not JSON: {e}") from None
    if not isinstance(data, dict):
        raise InputError(f"--region {p}: unknown format: a JSON {type(data).__name__}; {EXPECTED}")
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
        raise InputError(f"--region {p}: unknown format: no list of settings; {EXPECTED}")
    lr_key = data.get("lr_key") if isinstance(data.get("lr_key"), str) else LR_KEY
    top_budget = _int(data.get(BUDGET_STEPS, data.get("budget", data.get("steps"))))
    return MeasuredRegion(str(p), kind, lr_key, top_budget,
                          [_setting(p, i, e, lr_key, top_budget) for i, e in enumerate(entries)])


def _setting(p: Path, i: int, e: Any, lr_key: str, top_budget: int | None) -> MeasuredSetting:
    if not isinstance(e, dict):
        raise InputError(f"--region {p}: setting #{i} is a {type(e).__name__}, not an object; {EXPECTED}")
    key = None
    for k in ("key", "setting", "params", "group"):
        if isinstance(e.get(k), dict):
            key = {ALIASES.get(str(a), str(a)): b for a, b in e[k].items()}
            key.pop(lr_key, None)
            break
    if key is None:
        if any(k in e for k in ("key", "setting", "params", "group")):
            raise InputError(f"--region {p}: setting #{i}: its key is not an object; {EXPECTED}")
        key = {}
    if "max_stable_lr" not in e and "min_diverged_lr" not in e:
        raise InputError(f"--region {p}: setting #{i} has neither max_stable_lr nor min_diverged_lr; {EXPECTED}")
    label = e.get("label") if isinstance(e.get("label"), str) else (
        " ".join(f"{k}={format_value(v)}" for k, v in key.items()) or "all")
    budget = _int(e.get(BUDGET_STEPS, e.get("budget", e.get("steps_per_probe", e.get("steps")))))
    return MeasuredSetting(key=key, label=label, max_stable_lr=finite(e.get("max_stable_lr")),
                           min_diverged_lr=finite(e.get("min_diverged_lr")),
                           recommended_lr=finite(e.get("recommended_lr")), budget_steps=budget or top_budget,
                           min_stable_lr=finite(e.get("min_stable_lr")), min_failed_lr=finite(e.get("min_failed_lr")),
                           stalled_below=[x for x in map(finite, e.get("stalled_below") or []) if x is not None],
                           largest_safe_lr=finite(e.get("largest_safe_lr")),
                           cause=e.get("cause") if isinstance(e.get("cause"), str) else None)
