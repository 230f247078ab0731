"""The model: a classification backbone with one head over the union of all datasets' classes.

Three ways to name it (`model:` in the config):
- `name: resnet50`: any torchvision classification model (`small_cnn`: a tiny network for CPU runs
  and tests);
- `name: timm:convnext_tiny`: a timm model, when timm is installed (`pip install 'stablesweep[timm]'`);
- `factory: "package.module:function"`: your own; called with the number of classes, it returns an
  `nn.Module` whose output is the logits over them.
`weights:` loads a local state dict into any of them, the head (whose shape differs) left new.
"""
from __future__ import annotations

import difflib
import importlib
from pathlib import Path

import torch
from torch import nn

from stablesweep.config import ConfigError, ModelConfig


class SmallCNN(nn.Module):
    """Four conv blocks and a linear head: learns the synthetic data in a few hundred CPU steps."""

    def __init__(self, num_classes: int, width: int = 32):
        super().__init__()
        layers, c = [], 3
        for w in (width, width * 2, width * 4):
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def classification_models() -> list[str]:
    import torchvision  # 1 s (its models import torch._dynamo): only where a torchvision model is named

    return sorted(torchvision.models.list_models(module=torchvision.models)) + ["small_cnn"]


TIMM = "timm:"


def check_model_name(name: str, source: str = "config") -> None:
    if name == "small_cnn":
        return
    if name.startswith(TIMM):
        timm = _timm(source)
        if not timm.list_models(name[len(TIMM):]):
            close = difflib.get_close_matches(name[len(TIMM):], timm.list_models(), n=3)
            hint = f"; did you mean {', '.join(TIMM + c for c in close)}?" if close else ""
            raise ConfigError(f"{source}: model.name: timm has no model {name[len(TIMM):]!r}{hint}")
        return
    known = classification_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"{source}: model.name: unknown model {name!r}{hint} "
                          "(any torchvision classification model, small_cnn, or timm:NAME)")


def _timm(source: str):
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise ConfigError(f"{source}: model.name: timm models need the timm package: "
                          "pip install 'stablesweep[timm]' (or pip install timm)") from None


def load_factory(spec: str, source: str = "config"):
    """The callable named by `model.factory` ("package.module:function")."""
    mod_name, sep, attr = spec.partition(":")
    if not sep or not mod_name or not attr:
        raise ConfigError(f"{source}: model.factory: {spec!r}: expected \"package.module:function\"")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ConfigError(f"{source}: model.factory: cannot import {mod_name!r}: {e}") from None
    fn = mod
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ConfigError(f"{source}: model.factory: {mod_name} has no {attr!r}")
    if not callable(fn):
        raise ConfigError(f"{source}: model.factory: {spec} is a {type(fn).__name__}, not a function")
    return fn


def build_model(cfg: ModelConfig, num_classes: int, source: str = "config") -> nn.Module:
    if cfg.factory:
        model = load_factory(cfg.factory, source)(num_classes)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{source}: model.factory: {cfg.factory}({num_classes}) returned a "
                              f"{type(model).__name__}, not a torch.nn.Module")
    else:
        check_model_name(cfg.name, source)
        if cfg.name == "small_cnn":
            model = SmallCNN(num_classes)
        elif cfg.name.startswith(TIMM):
            model = _timm(source).create_model(cfg.name[len(TIMM):], pretrained=False, num_classes=num_classes)
        else:
            import torchvision

            model = torchvision.models.get_model(cfg.name, weights=None, num_classes=num_classes)
    if cfg.weights:
        load_backbone_weights(model, cfg.weights, source)
    return model


def load_backbone_weights(model: nn.Module, path: str | Path, source: str = "config") -> list[str]:
    """Load a local state dict (weights_only=True). Tensors whose shape differs (the old head) are
    left as initialised; returns their names. Any other missing key is an error."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{source}: model.weights: no such file {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    own = model.state_dict()
    keep = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(k for k in own if k not in keep)
    head = {k for k in skipped if own[k].shape and own[k].shape[0] == model_num_classes(model)}
    missing = [k for k in skipped if k not in head and not k.endswith("num_batches_tracked")]
    if missing:
        raise ConfigError(f"{source}: model.weights: {path} lacks {len(missing)} tensors of the model "
                          f"(first: {missing[0]}); is it a state dict of this architecture?")
    model.load_state_dict(keep, strict=False)
    return sorted(head)


def model_num_classes(model: nn.Module) -> int:
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else -1
