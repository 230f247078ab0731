"""Plain data (a YAML mapping) read into typed dataclasses (`build_typed`): each field as its type
annotation says (numbers, true/false, strings, one of a Literal's values, fixed-length tuples,
optional values, nested dataclasses and mappings of them), an unknown key refused with the closest
known one, and every error raised as the caller's error class with a message that names the file
and the dotted key, and what was expected. The training config's schema and checks: config.py.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal, get_args, get_origin


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        inner = " or ".join(_type_name(a) for a in args)
        return inner + (" or null" if len(args) < len(get_args(tp)) else "")
    if origin is tuple:
        return "a list of " + str(len(get_args(tp))) + " numbers"
    if origin is dict:
        return "a mapping"
    return {float: "a number", int: "an integer", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(tp: Any, value: Any, key: str, source: str, error: type[Exception]) -> Any:
    def bad(extra: str = "") -> Exception:
        return error(f"{source}: {key}: expected {_type_name(tp)}, got {value!r}{extra}")

    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, key, source, error)
            except error:
                continue
        literals = [str(v) for a in args if get_origin(a) is Literal for v in get_args(a)]
        close = difflib.get_close_matches(str(value), literals, n=1)
        raise bad(f" (did you mean {close[0]!r}?)" if close else "")
    if origin is Literal:
        if value in get_args(tp):
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in get_args(tp)], n=1)
        raise bad(f" (did you mean {close[0]!r}?)" if close else "")
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(get_args(tp)):
            raise bad()
        return tuple(_coerce(a, v, f"{key}[{i}]", source, error) for i, (a, v) in enumerate(zip(get_args(tp), value)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if tp is int:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad()
    if tp is float:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise bad() from None
        if isinstance(value, (int, float)) and not math.isnan(value):
            return float(value)
        raise bad(" (not a number)" if isinstance(value, float) else "")
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad()
    raise bad()


def build_typed(cls: type, raw: Any, prefix: str, source: str, error: type[Exception]) -> Any:
    """`cls(**raw)`, each field read as its type says, nested dataclasses and mappings of them
    built alike; a field of `internal` metadata is never read. `prefix`: the dotted key of `raw`
    ("" at the top level); `source`: where it was read (named in each error)."""
    where = prefix or "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise error(f"{source}: {where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    for k in raw:
        if k not in fields:
            key = f"{prefix}.{k}" if prefix else str(k)
            close = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f"; did you mean {(prefix + '.' if prefix else '') + close[0]!r}?" if close else ""
            raise error(f"{source}: unknown key {key!r}{hint} (known here: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise error(f"{source}: {key}: required, missing")
            continue
        value = raw[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build_typed(tp, value, key, source, error)
        elif get_origin(tp) is dict:
            _, vtp = get_args(tp)
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise error(f"{source}: {key}: expected a mapping, got {value!r}")
            kwargs[name] = {str(k): build_typed(vtp, v, f"{key}.{k}", source, error) for k, v in value.items()}
        else:
            kwargs[name] = _coerce(tp, value, key, source, error)
    return cls(**kwargs)
