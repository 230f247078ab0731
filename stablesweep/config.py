"""Typed training configuration: YAML in the user's own shape, loaded into dataclasses.

Every error names the dotted key (and the file) and says what was expected. Unknown keys get a
close-match suggestion. Dotted overrides (`training.lr=2e-6`) are applied to the raw mapping
before validation, so an override is checked exactly like the file. How a mapping is read into
the dataclasses, field by field: typed.py.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from stablesweep.typed import build_typed
from stablesweep.vocab import InputError


class ConfigError(InputError):
    """Bad configuration: the message names the file and the dotted key."""


# The six datasets of the incident: name -> number of classes (2816 in all).
FOOD_DATASETS: dict[str, int] = {
    "food101": 101,
    "food172": 172,
    "foodx251": 251,
    "food2k": 2000,
    "fru92": 92,
    "veg200": 200,
}


@dataclass
class TrainingConfig:
    lr: float = 1e-3
    max_grad_norm: float | None = 1.0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    tf32: bool = True
    epochs: int | None = None
    steps: int | None = None  # total optimizer steps; wins over epochs when both are set
    batch_size: int = 64
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 0.0
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    # constant or cosine after warmup; exponential rises from lr to lr_final over the budget (the
    # lr range test of the fastai / Lightning lr finders)
    schedule: Literal["constant", "cosine", "exponential"] = "constant"
    lr_final: float | None = None
    seed: int = 0
    report_interval: int = 10  # steps between reports (and the one host sync of the monitor)
    eval_every: int = 0  # evaluate every N reports; 0 = only at the end
    checkpoint_every: int = 1  # write a checkpoint every N reports when a directory is given; 0 = never
    keep_checkpoints: int = 3  # the last K checkpoints are kept (a ring): `stablesweep explain` replays from them
    num_workers: int = 0


@dataclass
class DatasetConfig:
    num_classes: int
    # where the data comes from: a JSONL manifest or an ImageFolder directory (train/val), or
    # `synthetic` (generated in memory, with class structure a small model can learn)
    source: Literal["auto", "manifest", "folder", "synthetic"] = "auto"
    train: str | None = None
    val: str | None = None
    image_key: str = "image"
    label_key: str = "label"
    eval_ratio: float = 1.0
    skip_evaluation: bool | None = None  # None = inherit datasets.skip_evaluation
    weight: float | None = None  # mixing weight (only with datasets.mixing: weighted)
    train_size: int | None = None  # synthetic: samples in the train split (default: per class x classes)
    val_size: int | None = None


@dataclass
class DatasetsConfig:
    dataset_configs: dict[str, DatasetConfig] = field(default_factory=dict)
    enable_logits_masking: bool = True
    skip_evaluation: bool = False
    mixing: Literal["proportional", "balanced", "weighted"] = "proportional"


@dataclass
class LossConfig:
    type: Literal["cross_entropy", "label_smoothing"] = "cross_entropy"
    label_smoothing: float = 0.1  # epsilon, used when type is label_smoothing
    # None: follow datasets.enable_logits_masking (true -> slice, false -> none)
    masking: Literal["none", "neg_inf", "large_negative", "finfo_min", "slice"] | None = None
    mask_value: float = -1e9  # the value of large_negative
    mask_in: Literal["fp32", "autocast"] = "fp32"  # dtype the mask is applied in
    z_loss: float = 0.0
    logit_clip: float | None = None
    on_bad_label: Literal["error", "skip"] = "error"


@dataclass
class ModelConfig:
    name: str = "resnet18"  # any torchvision classification model, small_cnn, or timm:NAME (timm installed)
    factory: str | None = None  # "package.module:function": called with the number of classes, returns an nn.Module
    weights: str | None = None  # local weights file (loaded with weights_only=True); the head is replaced
    channels_last: bool = True  # on GPU


@dataclass
class AugmentConfig:
    """Training augmentation, on the device, per sample, seeded by (training.seed, step); evaluation
    is never augmented. Off by default."""

    random_resized_crop: bool = False  # crop a random box (area `scale`, aspect `ratio`), resize back to image_size
    scale: tuple[float, float] = (0.08, 1.0)  # the box's area as a fraction of the image (torchvision's defaults)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # the box's aspect ratio (width / height)
    hflip: bool = False  # flip half the samples left to right


@dataclass
class DataConfig:
    image_size: int = 64
    synthetic_per_class: int = 16  # synthetic train samples per class (val: a quarter)
    synthetic_noise: float = 0.6
    synthetic_seed: int = 1234
    verify_images: Literal["none", "header", "full"] = "header"
    # decoded images of manifest/folder datasets: auto (a cache under ~/.cache/stablesweep, built when
    # a run reads its train set at least once, read whenever it is there), off, or a directory
    cache: bool | str = "auto"
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class MonitorConfig:
    # diverged when the smoothed loss exceeds this multiple of its best (from min_steps on) or of
    # the initial loss (from step 0)
    explosion_factor: float = 4.0
    smoothing: float = 0.9  # EMA factor of the smoothed loss
    min_steps: int = 10  # steps before the rule against the best smoothed loss applies
    history_steps: int = 32  # the last N steps' loss and gradient norm, kept on the device for a divergence's story
    initial_batches: int = 4  # the initial loss: mean over this many batches at the initial weights (0: the first step's)
    min_progress: float = 0.1  # stable needs the final smoothed loss <= (1 - this) x the initial loss
    max_skipped_steps: int = 0  # non-finite steps tolerated (skipped) before the run is diverged
    stop_on_divergence: bool = True
    # on CUDA, replay the guard as CUDA graphs: in bf16/fp32 with AdamW the whole guarded step (clip,
    # monitor, optimizer) as one; in fp16 the monitor's bookkeeping (false: everything op by op)
    cuda_graphs: bool = True
    # early-warning thresholds (null: off); a run over one is flagged at_risk with the signal and
    # step. Chosen with bench/early_warning.py (docs/benchmarks.md, "Early warning").
    warn_grad_spike: float | None = 5.0  # gradient norm / median of the previous history_steps steps
    # that median is taken as at least this x the largest such median from min_steps on: near
    # convergence the norms shrink 10-100x and one harder batch is many times their median (ResNet-18
    # on real digits: up to 17x in stable runs), a ratio that says nothing about stability
    grad_spike_floor: float = 0.1
    warn_update_ratio: float | None = 0.05  # |weight update| / |weights| of one step (the step before each report)
    warn_max_logit: float | None = 30.0  # largest |logit| of the raw model output (scale-dependent: set per model)
    warn_logsumexp: float | None = 30.0  # largest |logsumexp| of a sample's raw logits
    warn_scale_drops: int | None = 3  # fp16 loss-scale drops after the first min_steps steps


@dataclass
class Config:
    training: TrainingConfig = field(default_factory=TrainingConfig)
    datasets: DatasetsConfig = field(default_factory=DatasetsConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    base_dir: str = field(default=".", metadata={"internal": True})  # manifests resolve against it
    source: str = field(default="<dict>", metadata={"internal": True})

    # ---- derived -------------------------------------------------------------------------
    @property
    def masking(self) -> str:
        if self.loss.masking is not None:
            return self.loss.masking
        return "slice" if self.datasets.enable_logits_masking else "none"

    @property
    def dataset_names(self) -> list[str]:
        return list(self.datasets.dataset_configs)

    def resolve_path(self, p: str | None) -> Path | None:
        if p is None:
            return None
        path = Path(p).expanduser()
        return path if path.is_absolute() else Path(self.base_dir) / path

    def eval_skipped(self, name: str) -> bool:
        """Per-dataset `skip_evaluation` wins over the global one when it is set.

        `datasets.skip_evaluation: true` with `food101: {skip_evaluation: false}` evaluates only
        food101; a per-dataset `true` skips that dataset whatever the global says.
        """
        own = self.datasets.dataset_configs[name].skip_evaluation
        return self.datasets.skip_evaluation if own is None else own

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            if f.metadata.get("internal"):
                continue
            out[f.name] = _plain(getattr(self, f.name))
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


# ---- loading ------------------------------------------------------------------------------

def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply `key=value` overrides, validate, return a Config."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.load(path.read_text(), Loader=UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return config_from_dict(raw, overrides, source=str(path), base_dir=str(path.resolve().parent))


class UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice (first on line {seen[key] + 1}); the later one "
                                "would silently win", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def config_from_dict(raw: dict, overrides: list[str] | None = None, *, source: str = "<dict>",
                     base_dir: str = ".") -> Config:
    raw = copy.deepcopy(raw)
    for ov in overrides or []:
        apply_override(raw, ov)
    try:
        cfg = build_typed(Config, raw, "", source, ConfigError)
        cfg.source = source
        cfg.base_dir = base_dir
        validate(cfg)
    except ConfigError as e:
        raise _blame_override(e, overrides or [], source) from None
    return cfg


def _blame_override(e: ConfigError, overrides: list[str], source: str) -> ConfigError:
    """An error about a key a --set gave is the --set's, not the file's."""
    msg = str(e)
    for ov in reversed(overrides):  # the last --set of a key is the one in effect
        key = parse_override(ov)[0]
        if msg.startswith(f"{source}: {key}") or f"unknown key {key!r}" in msg:
            return ConfigError(f"--set {ov} (over {source}): " + msg.removeprefix(f"{source}: "))
    return e


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, for example training.lr=2e-6")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def apply_override(raw: dict, text: str | tuple[str, Any]) -> None:
    key, value = parse_override(text) if isinstance(text, str) else text
    set_dotted(raw, key, value)


def set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = nxt
    node[parts[-1]] = value


def get_dotted(raw: dict, key: str, default: Any = None) -> Any:
    node: Any = raw
    for p in key.split("."):
        if not isinstance(node, dict) or p not in node:
            return default
        node = node[p]
    return node


def validate(cfg: Config) -> None:
    s = cfg.source
    t = cfg.training

    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{s}: {key}: {msg}")

    need(math.isfinite(t.lr) and t.lr > 0, "training.lr", f"must be a positive number, got {t.lr}")
    need(t.max_grad_norm is None or t.max_grad_norm > 0, "training.max_grad_norm",
         f"must be positive or null (no clipping), got {t.max_grad_norm}")
    need(t.batch_size >= 1, "training.batch_size", f"must be at least 1, got {t.batch_size}")
    need(t.steps is None or t.steps >= 1, "training.steps", f"must be at least 1, got {t.steps}")
    need(t.epochs is None or t.epochs >= 1, "training.epochs", f"must be at least 1, got {t.epochs}")
    need(t.steps is not None or t.epochs is not None, "training.steps",
         "set training.steps or training.epochs")
    need(t.report_interval >= 1, "training.report_interval", f"must be at least 1, got {t.report_interval}")
    need(t.warmup_steps >= 0, "training.warmup_steps", "must be 0 or more")
    if t.schedule == "exponential":
        need(t.lr_final is not None and t.lr_final > t.lr, "training.lr_final",
             f"the exponential schedule needs lr_final above lr ({t.lr}), got {t.lr_final}")
    need(t.eval_every >= 0, "training.eval_every", "must be 0 or more")
    need(t.checkpoint_every >= 0, "training.checkpoint_every", "must be 0 or more")
    need(t.keep_checkpoints >= 1, "training.keep_checkpoints", f"must be at least 1, got {t.keep_checkpoints}")
    need(t.weight_decay >= 0, "training.weight_decay", "must be 0 or more")
    need(all(0 <= b < 1 for b in t.betas), "training.betas", "each must be in [0, 1)")

    ds = cfg.datasets
    need(len(ds.dataset_configs) > 0, "datasets.dataset_configs", "at least one dataset is needed")
    for name, d in ds.dataset_configs.items():
        k = f"datasets.dataset_configs.{name}"
        need(d.num_classes >= 1, f"{k}.num_classes", f"must be at least 1, got {d.num_classes}")
        need(0 < d.eval_ratio <= 1, f"{k}.eval_ratio", f"must be in (0, 1], got {d.eval_ratio}")
        src = data_source(d)
        if src in ("manifest", "folder"):
            need(d.train is not None, f"{k}.train", f"a {src} dataset needs a train path")
        if d.weight is not None:
            need(d.weight > 0, f"{k}.weight", "must be positive")
        if ds.mixing == "weighted":
            need(d.weight is not None, f"{k}.weight", "datasets.mixing is weighted: every dataset needs a weight")
        for sz in ("train_size", "val_size"):
            v = getattr(d, sz)
            need(v is None or v >= 1, f"{k}.{sz}", "must be at least 1")

    lo = cfg.loss
    need(0 <= lo.label_smoothing < 1, "loss.label_smoothing", f"must be in [0, 1), got {lo.label_smoothing}")
    need(lo.mask_value < 0, "loss.mask_value", f"must be negative, got {lo.mask_value}")
    need(lo.z_loss >= 0, "loss.z_loss", "must be 0 or more")
    need(lo.logit_clip is None or lo.logit_clip > 0, "loss.logit_clip", "must be positive or null")
    if lo.masking not in (None, "none"):
        need(ds.enable_logits_masking, "loss.masking",
             f"is {lo.masking!r} but datasets.enable_logits_masking is false; set one of them consistently")

    need(cfg.data.image_size >= 8, "data.image_size", "must be at least 8")
    if isinstance(cfg.data.cache, bool):  # YAML 1.1 reads a bare off / on as a boolean
        cfg.data.cache = "auto" if cfg.data.cache else "off"
    need(cfg.data.cache.strip() != "", "data.cache", "expected auto, off or a directory, got an empty string")
    a = cfg.data.augment
    need(0 < a.scale[0] <= a.scale[1] <= 1, "data.augment.scale",
         f"must be [lo, hi] with 0 < lo <= hi <= 1, got {list(a.scale)}")
    need(0 < a.ratio[0] <= a.ratio[1], "data.augment.ratio", f"must be [lo, hi] with 0 < lo <= hi, got {list(a.ratio)}")
    need(cfg.data.synthetic_per_class >= 1, "data.synthetic_per_class", "must be at least 1")
    m = cfg.monitor
    need(m.explosion_factor > 1, "monitor.explosion_factor", "must be greater than 1")
    need(0 <= m.smoothing < 1, "monitor.smoothing", "must be in [0, 1)")
    need(0 <= m.min_progress < 1, "monitor.min_progress", "must be in [0, 1) (0: any finite run counts as stable)")
    need(m.initial_batches >= 0, "monitor.initial_batches", "must be 0 or more")
    need(m.history_steps >= 1, "monitor.history_steps", "must be at least 1")
    need(m.max_skipped_steps >= 0, "monitor.max_skipped_steps", "must be 0 or more")
    need(0 <= m.grad_spike_floor <= 1, "monitor.grad_spike_floor", "must be in [0, 1] (0: the median as it is)")
    for f in dataclasses.fields(m):
        x = getattr(m, f.name)
        if f.name.startswith("warn_"):
            need(x is None or x > 0, f"monitor.{f.name}", f"must be positive or null (off), got {x}")


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Refuse an output folder that cannot be one before any work: an existing file, or a place
    under which nothing can be created (read-only, no permission). Writes nothing."""
    import os

    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise InputError(f"{flag} {path}: is a file, not a folder")
    existing = next(a for a in (p, *p.parents) if a.exists())
    if not existing.is_dir():
        raise InputError(f"{flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: cannot write in {existing.resolve()} (read-only or no permission)")
    return p


def data_source(d: DatasetConfig) -> str:
    """The concrete source of a dataset: manifest, folder or synthetic."""
    if d.source != "auto":
        return d.source
    if d.train is None:
        return "synthetic"
    return "manifest" if str(d.train).endswith((".jsonl", ".json", ".ndjson")) else "folder"


def total_steps(cfg: Config, train_samples: int) -> int:
    t = cfg.training
    if t.steps is not None:
        return t.steps
    per_epoch = max(1, train_samples // t.batch_size)
    return per_epoch * (t.epochs or 1)
