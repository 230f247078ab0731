"""Search spaces: YAML files whose keys are dotted config keys.

```yaml
training.lr: {loguniform: [1.0e-6, 1.0e-1]}
training.max_grad_norm: {choice: [null, 0.5, 1.0, 5.0]}
loss.masking: {choice: [none, neg_inf, large_negative, finfo_min, slice]}
training.precision: {choice: [fp32, bf16, fp16]}
training.warmup_steps: {int: [0, 100]}        # both ends included
training.weight_decay: {uniform: [0.0, 0.1]}
training.batch_size: {grid: [32, 64]}          # a grid axis (every value, with --sampler grid)
```

A space is checked twice before Ray starts: `parse_space` checks the file itself (known
distribution, a non-empty range in the right order, positive log bounds, a non-empty list of
scalar choices), `SearchSpace.validate(cfg)` checks it against the base config (every key is a
config key, every value it can take is accepted by the config). Every error is a `SpaceError`
that names the file, the line and the key.
"""
from __future__ import annotations

import copy
import difflib
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stablesweep.config import Config, ConfigError, config_from_dict, set_dotted
from stablesweep.vocab import CATEGORICAL, LR_KEY, InputError

DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice", "grid")
# the config check tries every combination of probe values up to this many, else one axis at a time
MAX_COMBINATIONS = 512


class SpaceError(InputError):
    """A bad search space: the message names the file (and line) and the key."""


@dataclass(frozen=True)
class Axis:
    """One swept config key and its distribution."""

    key: str
    kind: str  # one of DISTRIBUTIONS
    low: float | int | None = None
    high: float | int | None = None
    values: tuple = ()
    line: int | None = None

    @property
    def categorical(self) -> bool:
        return self.kind in CATEGORICAL

    def spec(self) -> dict:
        """The YAML form of the axis."""
        if self.categorical:
            return {self.kind: list(self.values)}
        return {self.kind: [self.low, self.high]}

    def probe_values(self) -> list:
        """Values the config check tries: every choice, or both ends of a range."""
        if self.categorical:
            return list(self.values)
        return [self.low, self.high] if self.low != self.high else [self.low]

    def grid_values(self, where: str) -> list:
        if self.categorical:
            return list(self.values)
        if self.kind == "int" and self.high - self.low < 64:
            return list(range(self.low, self.high + 1))
        raise SpaceError(f"{where}: {self.key}: a {self.kind} range cannot be gridded; "
                         f"use {{grid: [...]}} with the values to try, or another --sampler")

    def to_optuna(self):
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.categorical:
            return CategoricalDistribution(list(self.values))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high))
        return FloatDistribution(float(self.low), float(self.high), log=self.kind == "loguniform")

    def to_tune(self):
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "int":
            return tune.randint(int(self.low), int(self.high) + 1)  # Tune's upper bound is exclusive
        if self.kind == "loguniform":
            return tune.loguniform(float(self.low), float(self.high))
        return tune.uniform(float(self.low), float(self.high))


@dataclass
class SearchSpace:
    axes: dict[str, Axis]
    source: str = "<dict>"
    raw: dict = field(default_factory=dict)

    # ---- views ----------------------------------------------------------------------------
    @property
    def keys(self) -> list[str]:
        return list(self.axes)

    @property
    def categorical_keys(self) -> list[str]:
        """The categorical axes, lr excluded: the stable region is reported per combination."""
        return [k for k, a in self.axes.items() if a.categorical and k != LR_KEY]

    @property
    def lr_key(self) -> str | None:
        return LR_KEY if LR_KEY in self.axes else None

    def where(self, key: str | None = None) -> str:
        line = self.axes[key].line if key in self.axes else None
        return f"{self.source}:{line}" if line else self.source

    def to_optuna(self) -> dict:
        """Optuna distributions, one per dotted key (Optuna takes dots in names as they are)."""
        return {k: a.to_optuna() for k, a in self.axes.items()}

    def to_tune(self) -> dict:
        """The same space as a Tune param space (flat dotted keys), for Tune's own searchers."""
        return {k: a.to_tune() for k, a in self.axes.items()}

    def grid(self) -> dict[str, list]:
        """Every axis as a list of values, for Optuna's GridSampler; continuous axes are refused."""
        return {k: a.grid_values(self.where(k)) for k, a in self.axes.items()}

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid().values())

    def to_yaml(self) -> str:
        return yaml.safe_dump({k: a.spec() for k, a in self.axes.items()}, sort_keys=False)

    # ---- the check against the config -----------------------------------------------------
    def validate(self, cfg: Config) -> None:
        """Refuse keys the config does not have and values it does not accept."""
        base = cfg.to_dict()
        leaves = dict(_leaves(base))
        for key, axis in self.axes.items():
            if key in leaves:
                continue
            if _is_section(base, key):
                raise SpaceError(f"{self.where(key)}: {key}: is a config section, not a value; "
                                 f"sweep one of its keys (for example {_first_leaf(base, key)!r})")
            close = difflib.get_close_matches(key, list(leaves), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SpaceError(f"{self.where(key)}: {key}: unknown config key{hint}")
        probes = {k: a.probe_values() for k, a in self.axes.items()}
        # each value alone (the rest of the config as it is), then, when there are not too many,
        # every combination (two axes may be fine alone and clash together)
        singles = ({k: v} for k, vals in probes.items() for v in vals)
        n = math.prod(len(v) for v in probes.values())
        combos = (dict(zip(probes, vals)) for vals in itertools.product(*probes.values())) \
            if 1 < len(probes) and n <= MAX_COMBINATIONS else ()
        for sample in itertools.chain(singles, combos):
            try:
                apply_params(base, sample, source=cfg.source, base_dir=cfg.base_dir)
            except ConfigError as e:
                key = _blame(e, sample)
                others = {k: v for k, v in sample.items() if k != key}
                with_ = f" (with {_fmt_sample(others)})" if others else ""
                raise SpaceError(f"{self.where(key)}: {key}: value {sample[key]!r}{with_} is refused by "
                                 f"the config: {e}") from None


def apply_params(base: dict, params: dict[str, Any], *, source: str = "<dict>", base_dir: str = ".") -> Config:
    """The config of one trial: the base config (a plain dict) with the sampled dotted keys set."""
    raw = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(raw, key, value)
    return config_from_dict(raw, source=source, base_dir=base_dir)


# ---- parsing ------------------------------------------------------------------------------

def load_space(path: str | Path) -> SearchSpace:
    """Read and check a search space file (the config check is `SearchSpace.validate`)."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"{path}: no such search space file")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SpaceError(f"{where}: YAML syntax error: {getattr(e, 'problem', None) or e}") from None
    lines = {}
    if isinstance(node, yaml.MappingNode):
        for k, _ in node.value:
            lines[str(k.value)] = k.start_mark.line + 1
    return parse_space(raw, source=str(path), lines=lines)


def parse_space(raw: Any, *, source: str = "<dict>", lines: dict[str, int] | None = None) -> SearchSpace:
    lines = lines or {}
    if raw is None or (isinstance(raw, dict) and not raw):
        raise SpaceError(f"{source}: the search space is empty; expected keys like "
                         "'training.lr: {loguniform: [1.0e-6, 1.0e-2]}'")
    if not isinstance(raw, dict):
        raise SpaceError(f"{source}: expected a mapping of config keys to distributions, "
                         f"got {type(raw).__name__}")
    axes = {}
    for key, spec in raw.items():
        key = str(key)
        where = f"{source}:{lines[key]}" if key in lines else source
        axes[key] = _parse_axis(key, spec, where, lines.get(key))
    return SearchSpace(axes=axes, source=source, raw=copy.deepcopy(raw))


def _parse_axis(key: str, spec: Any, where: str, line: int | None) -> Axis:
    example = "{loguniform: [lo, hi]}, {uniform: [lo, hi]}, {int: [lo, hi]}, {choice: [...]} or {grid: [...]}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise SpaceError(f"{where}: {key}: expected one distribution, {example}; got {spec!r}")
    (kind, args), = spec.items()
    kind = str(kind)
    if kind not in DISTRIBUTIONS:
        close = difflib.get_close_matches(kind, DISTRIBUTIONS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpaceError(f"{where}: {key}: unknown distribution {kind!r}{hint}; expected {example}")
    if kind in CATEGORICAL:
        if not isinstance(args, list) or not args:
            raise SpaceError(f"{where}: {key}: {kind} needs a non-empty list of values, got {args!r}")
        for v in args:
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise SpaceError(f"{where}: {key}: {kind} values must be numbers, strings, booleans or "
                                 f"null, got {v!r}")
        values = [_maybe_number(v) for v in args]
        if len({repr(v) for v in values}) != len(values):
            raise SpaceError(f"{where}: {key}: {kind} lists a value twice: {args!r}")
        return Axis(key, kind, values=tuple(values), line=line)
    if not isinstance(args, list) or len(args) != 2:
        raise SpaceError(f"{where}: {key}: {kind} needs [low, high], got {args!r}")
    lo, hi = (_number(v, kind, key, where) for v in args)
    if kind == "int":
        if not all(float(v).is_integer() for v in (lo, hi)):
            raise SpaceError(f"{where}: {key}: int bounds must be integers, got {args!r}")
        lo, hi = int(lo), int(hi)
    if not lo < hi:
        what = "empty" if lo == hi else "inverted"
        raise SpaceError(f"{where}: {key}: {kind} range [{lo}, {hi}] is {what}; expected low < high")
    if kind == "loguniform" and lo <= 0:
        raise SpaceError(f"{where}: {key}: loguniform bounds must be positive, got [{lo}, {hi}]")
    return Axis(key, kind, low=lo, high=hi, line=line)


def _number(v: Any, kind: str, key: str, where: str) -> float:
    if isinstance(v, bool):
        raise SpaceError(f"{where}: {key}: {kind} bounds must be numbers, got {v!r}")
    if isinstance(v, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
        try:
            v = float(v)
        except ValueError:
            raise SpaceError(f"{where}: {key}: {kind} bounds must be numbers, got {v!r}") from None
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SpaceError(f"{where}: {key}: {kind} bounds must be finite numbers, got {v!r}")
    return v


def _maybe_number(v: Any) -> Any:
    """'1e-6' (a YAML 1.1 string) becomes 1e-06; other strings stay strings."""
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return v
        if math.isfinite(f) and any(c.isdigit() for c in v) and v.strip().lower() not in ("nan", "inf"):
            return f
    return v


def _leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            yield from _leaves(v, key + ".")
        else:
            yield key, v


def _is_section(base: dict, key: str) -> bool:
    node: Any = base
    for p in key.split("."):
        if not isinstance(node, dict) or p not in node:
            return False
        node = node[p]
    return isinstance(node, dict)


def _first_leaf(base: dict, key: str) -> str:
    node: Any = base
    for p in key.split("."):
        node = node[p]
    for k, _ in _leaves(node, key + "."):
        return k
    return key


def _blame(e: ConfigError, sample: dict) -> str:
    """The swept key a config error is about (the one named in the message, else the first)."""
    msg = str(e)
    named = [k for k in sample if k in msg]
    if named:
        return max(named, key=len)
    return next(iter(sample))


def _fmt_sample(sample: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sample.items())


# ---- readable names -------------------------------------------------------------------------

