"""Search spaces: parsing, the checks against the config, readable names. No Ray, no torch."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from stablesweep.config import load_config
from stablesweep.sweep.space import (
    SpaceError,
    apply_params,
    load_space,
    parse_space,
)
from tests.conftest import DEMO, ROOT


@pytest.fixture(scope="module")
def demo_cfg():
    return load_config(DEMO)


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("name", ["default.yaml", "food_seed.yaml", "quick.yaml"])
def test_shipped_spaces_parse_and_fit_the_demo_config(name, demo_cfg):
    space = load_space(ROOT / "search_spaces" / name)
    space.validate(demo_cfg)
    assert space.lr_key == "training.lr"
    assert "training.lr" not in space.categorical_keys
    dists = space.to_optuna()
    assert isinstance(dists["training.lr"], optuna.distributions.FloatDistribution) and dists["training.lr"].log


def test_default_space_has_the_four_axes():
    space = load_space(ROOT / "search_spaces" / "default.yaml")
    assert set(space.keys) == {"training.lr", "training.max_grad_norm", "loss.masking", "training.precision"}
    assert space.axes["training.max_grad_norm"].values == (None, 0.5, 1.0, 5.0)


def test_all_distributions_and_yaml11_numbers(tmp_path, demo_cfg):
    p = write(tmp_path, "training.lr: {loguniform: [1e-6, 1e-1]}\n"      # YAML 1.1 reads 1e-6 as a string
                        "training.weight_decay: {uniform: [0.0, 0.1]}\n"
                        "training.warmup_steps: {int: [0, 20]}\n"
                        "training.max_grad_norm: {choice: [null, 1.0]}\n"
                        "training.batch_size: {grid: [16, 32]}\n")
    space = load_space(p)
    space.validate(demo_cfg)
    lr = space.axes["training.lr"]
    assert (lr.low, lr.high) == (1e-6, 1e-1)
    d = space.to_optuna()
    assert d["training.warmup_steps"] == optuna.distributions.IntDistribution(0, 20)
    assert d["training.batch_size"].choices == (16, 32)
    tune_space = space.to_tune()
    assert set(tune_space) == set(space.keys)
    assert space.categorical_keys == ["training.max_grad_norm", "training.batch_size"]


@pytest.mark.parametrize("text, key, words", [
    ("training.lrr: {loguniform: [1.0e-6, 1.0e-1]}\n", "training.lrr", ["unknown config key", "training.lr"]),
    ("traning.lr: {loguniform: [1.0e-6, 1.0e-1]}\n", "traning.lr", ["unknown config key", "training.lr"]),
    ("training.lr: {loguniform: [1.0e-1, 1.0e-6]}\n", "training.lr", ["inverted"]),
    ("training.lr: {uniform: [0.1, 0.1]}\n", "training.lr", ["empty"]),
    ("training.lr: {loguniform: [0.0, 1.0e-1]}\n", "training.lr", ["positive"]),
    ("training.lr: {logunifrom: [1.0e-6, 1.0e-1]}\n", "training.lr", ["unknown distribution", "loguniform"]),
    ("training.max_grad_norm: {choice: []}\n", "training.max_grad_norm", ["non-empty"]),
    ("training.lr: {loguniform: [1.0e-6]}\n", "training.lr", ["[low, high]"]),
    ("training.lr: 0.1\n", "training.lr", ["expected one distribution"]),
    ("training.warmup_steps: {int: [0.5, 4]}\n", "training.warmup_steps", ["integers"]),
    ("loss.masking: {choice: [slice, neg_infinity]}\n", "loss.masking", ["neg_infinity", "refused by the config"]),
    ("training.precision: {choice: [fp32, fp8]}\n", "training.precision", ["fp8"]),
    ("training: {choice: [1, 2]}\n", "training", ["section"]),
])
def test_bad_spaces_name_file_line_and_key(tmp_path, demo_cfg, text, key, words):
    p = write(tmp_path, "# a comment\n" + text)
    with pytest.raises(SpaceError) as e:
        load_space(p).validate(demo_cfg)
    msg = str(e.value)
    assert f"{p}:2" in msg, msg  # file and line
    assert key in msg, msg
    for w in words:
        assert w in msg, msg


def test_masking_refused_when_the_config_disables_masking(tmp_path):
    cfg_path = write(tmp_path, DEMO.read_text().replace("enable_logits_masking: true", "enable_logits_masking: false")
                     .replace("masking: slice", "masking: none"), "cfg.yaml")
    cfg = load_config(cfg_path)
    p = write(tmp_path, "loss.masking: {choice: [none, neg_inf]}\n")
    with pytest.raises(SpaceError, match=r"loss\.masking: value 'neg_inf'.*enable_logits_masking"):
        load_space(p).validate(cfg)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(SpaceError, match="no such search space file"):
        load_space(tmp_path / "nope.yaml")
    with pytest.raises(SpaceError, match="empty"):
        load_space(write(tmp_path, "# nothing\n"))
    with pytest.raises(SpaceError, match="YAML syntax error"):
        load_space(write(tmp_path, "training.lr: {loguniform: [1, 2\n"))


def test_grid_needs_discrete_axes(tmp_path):
    space = parse_space({"training.lr": {"grid": [1e-3, 1e-2]}, "training.max_grad_norm": {"choice": [None, 1.0]}})
    assert space.grid() == {"training.lr": [1e-3, 1e-2], "training.max_grad_norm": [None, 1.0]}
    assert space.grid_size() == 4
    cont = parse_space({"training.lr": {"loguniform": [1e-3, 1e-2]}}, source="s.yaml")
    with pytest.raises(SpaceError, match=r"s\.yaml: training\.lr: a loguniform range cannot be gridded"):
        cont.grid()


def test_apply_params_builds_the_trial_config(demo_cfg):
    cfg = apply_params(demo_cfg.to_dict(), {"training.lr": 2e-6, "training.max_grad_norm": None,
                                            "loss.masking": "large_negative"})
    assert cfg.training.lr == 2e-6 and cfg.training.max_grad_norm is None and cfg.masking == "large_negative"
    assert demo_cfg.training.lr == 3e-3  # the base is untouched


def test_values_fine_alone_but_clashing_together_are_refused(tmp_path):
    cfg = load_config(write(tmp_path, DEMO.read_text().replace("masking: slice", "masking: null"), "cfg.yaml"))
    p = write(tmp_path, "datasets.enable_logits_masking: {choice: [true, false]}\n"
                        "loss.masking: {choice: [null, neg_inf]}\n")
    with pytest.raises(SpaceError) as e:
        load_space(p).validate(cfg)
    assert "(with " in str(e.value) and "enable_logits_masking" in str(e.value)
