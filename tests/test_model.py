"""The model: torchvision by name, small_cnn, timm:NAME, a user's factory, local weights with the head replaced."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from stablesweep.config import ConfigError, ModelConfig, load_config
from stablesweep.model import build_model, load_backbone_weights, model_num_classes
from tests.conftest import DEMO


class TwoLayer(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def make_two_layer(num_classes: int) -> nn.Module:
    """A factory as a user writes one: the number of classes in, an nn.Module out."""
    return TwoLayer(num_classes)


def not_a_module(num_classes: int):
    return [num_classes]


NOT_CALLABLE = 42
HERE = __name__


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "timm:resnet10t"])
def test_named_models_give_logits_over_every_class(name):
    model = build_model(ModelConfig(name=name), 37)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 37) and model_num_classes(model) == 37


def test_unknown_names_suggest_close_ones():
    with pytest.raises(ConfigError, match=r"model.name: unknown model 'resnet19'.*resnet18"):
        build_model(ModelConfig(name="resnet19"), 10)
    with pytest.raises(ConfigError, match=r"model.name: timm has no model 'resnet10x'"):
        build_model(ModelConfig(name="timm:resnet10x"), 10)


def test_a_factory_from_the_users_module_builds_the_model():
    model = build_model(ModelConfig(factory=f"{HERE}:make_two_layer"), 11)
    assert isinstance(model, TwoLayer) and model(torch.randn(1, 3, 8, 8)).shape == (1, 11)


@pytest.mark.parametrize("spec, message", [
    ("no_colon_here", "expected \"package.module:function\""),
    ("stablesweep_no_such_module:f", "cannot import 'stablesweep_no_such_module'"),
    (f"{HERE}:missing", f"{HERE} has no 'missing'"),
    (f"{HERE}:NOT_CALLABLE", "is a int, not a function"),
    (f"{HERE}:not_a_module", r"returned a list, not a torch.nn.Module"),
])
def test_a_bad_factory_names_the_key(spec, message):
    with pytest.raises(ConfigError, match=message) as e:
        build_model(ModelConfig(factory=spec), 5, source="cfg.yaml")
    assert str(e.value).startswith("cfg.yaml: model.factory:")


def test_a_run_trains_the_factory_model_from_the_config_key():
    from stablesweep.train import Trainer

    cfg = load_config(DEMO, [f"model.factory={HERE}:make_two_layer", "training.steps=4", "training.report_interval=2"])
    trainer = Trainer(cfg, device="cpu", log=lambda s: None)
    assert isinstance(trainer.model, TwoLayer)
    result = trainer.run()
    assert result.steps == 4 and result.verdict in ("stable", "stalled")  # finite; 4 steps need not fall 10%


def test_local_weights_load_into_a_factory_model_with_the_head_replaced(tmp_path):
    src = make_two_layer(7)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    model = build_model(ModelConfig(factory=f"{HERE}:make_two_layer", weights=str(tmp_path / "w.pt")), 13)
    assert torch.equal(model.body[0].weight, src.body[0].weight)  # the backbone came from the file
    assert model.head.out_features == 13  # the head is new, of the run's classes
    replaced = load_backbone_weights(make_two_layer(13), tmp_path / "w.pt")
    assert replaced == ["head.bias", "head.weight"]


def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.save(build_model(ModelConfig(name="small_cnn"), 5).state_dict(), tmp_path / "w.pt")
    with pytest.raises(ConfigError, match="lacks .* tensors of the model"):
        build_model(ModelConfig(factory=f"{HERE}:make_two_layer", weights=str(tmp_path / "w.pt")), 5)
