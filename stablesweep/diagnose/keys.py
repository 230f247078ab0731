"""Dotted config keys: a key's value as the config runs, whether the file sets it, equal values."""
from __future__ import annotations

import math
from typing import Any

from stablesweep.config import Config, get_dotted
from stablesweep.vocab import finite

_UNSET = object()


def config_value(cfg: Config, key: str) -> tuple[bool, Any]:
    """(found, value) of a dotted key in the config as it runs (loss.masking resolved)."""
    if key == "loss.masking":
        return True, cfg.masking
    v = get_dotted(cfg.to_dict(), key, _UNSET)
    return (v is not _UNSET), (None if v is _UNSET else v)


def key_present(raw: dict, key: str) -> bool:
    """The config file (overrides applied) sets the key."""
    return get_dotted(raw, key, _UNSET) is not _UNSET


def effective_value(cfg: Config, raw: dict, key: str) -> Any:
    """The key's value as the file says it, else the default the config runs with."""
    v = get_dotted(raw, key, _UNSET)
    return v if v is not _UNSET else config_value(cfg, key)[1]


def same(a: Any, b: Any) -> bool:
    """Equal as config values: numbers by value (1 == 1.0), a bool only equal to a bool."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b and type(a) is type(b)
    fa, fb = finite(a), finite(b)
    if fa is not None and fb is not None:
        return math.isclose(fa, fb, rel_tol=1e-9, abs_tol=0.0)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b
