"""The inputs of the Python API (`stablesweep.api`): a config as a path or a dict, and config
overrides as keyword arguments.

The convention: a keyword argument whose name holds a double underscore is a dotted config key,
`training__lr=0.01` being `--set training.lr=0.01`; its value is a Python value (a float, None, a
list...), written as the YAML the config reads. Any other keyword is an option of the command
(`samples=`, `steps=`, `out=`...).
"""
from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml


def split_kwargs(kwargs: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """(the config overrides as `--set` texts, the other keyword arguments).

    >>> split_kwargs({"training__lr": 0.01, "model__name": "small_cnn", "training__max_grad_norm": None, "samples": 4})
    (['training.lr=0.01', 'model.name=small_cnn', 'training.max_grad_norm=null'], {'samples': 4})
    """
    overrides, rest = [], {}
    for name, value in kwargs.items():
        if "__" in name:
            text = value if isinstance(value, str) else json.dumps(value)  # JSON is YAML
            overrides.append(f"{name.replace('__', '.')}={text}")
        else:
            rest[name] = value
    return overrides, rest


_PATH_KEYS = ("train", "val")  # a dataset's paths, relative to the config's folder


@contextlib.contextmanager
def config_file(config: str | Path | dict, name: str = "config") -> Iterator[Path]:
    """A path to the config: the path itself, or a dict written as `NAME.yaml` in a temporary
    folder for the call's duration, its relative dataset paths (and data.cache, model.weights)
    made absolute against the current directory, where a dict's paths resolve."""
    if not isinstance(config, dict):
        yield Path(config)
        return
    raw = json.loads(json.dumps(config))  # a deep copy of plain values
    cwd = Path.cwd()

    def absolute(p: Any) -> Any:
        return str(cwd / Path(p).expanduser()) if isinstance(p, str) and not Path(p).expanduser().is_absolute() else p

    for d in ((raw.get("datasets") or {}).get("dataset_configs") or {}).values():
        if isinstance(d, dict):
            for k in _PATH_KEYS:
                if k in d:
                    d[k] = absolute(d[k])
    data = raw.get("data") or {}
    if isinstance(data, dict) and data.get("cache") not in (None, "auto", "off"):
        data["cache"] = absolute(data["cache"])
    model = raw.get("model") or {}
    if isinstance(model, dict) and model.get("weights"):
        model["weights"] = absolute(model["weights"])
    with tempfile.TemporaryDirectory(prefix="stablesweep-") as tmp:
        path = Path(tmp) / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        yield path


def unknown(command: str, names: set[str], allowed: set[str]) -> None:
    """A TypeError for keyword arguments that are neither an option of `command` nor a config key."""
    bad = sorted(names - allowed)
    if bad:
        raise TypeError(f"stablesweep.{command}(): unknown keyword argument(s) {', '.join(bad)}; options are "
                        f"{', '.join(sorted(allowed))}, and config keys are written with double underscores "
                        "(training__lr=0.01 for training.lr)")
