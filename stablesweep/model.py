"""The model: any torchvision classification backbone by name, its classifier replaced by one head
over the union of all datasets' classes. `small_cnn` is a tiny network for CPU runs and tests."""
from __future__ import annotations

import difflib
from pathlib import Path

import torch
import torchvision
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
    return sorted(torchvision.models.list_models(module=torchvision.models)) + ["small_cnn"]


def check_model_name(name: str, source: str = "config") -> None:
    known = classification_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"{source}: model.name: unknown model {name!r}{hint} "
                          "(any torchvision classification model, or small_cnn)")


def build_model(cfg: ModelConfig, num_classes: int, source: str = "config") -> nn.Module:
    check_model_name(cfg.name, source)
    if cfg.name == "small_cnn":
        model = SmallCNN(num_classes)
    else:
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
