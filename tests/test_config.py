"""Config: the user's YAML shape, typed; errors name the key; overrides are checked like the file."""
import pytest

from stablesweep.config import ConfigError, config_from_dict, load_config

BASE = {"training": {"lr": 5e-6, "steps": 10},
        "datasets": {"dataset_configs": {"food101": {"num_classes": 101}}}}


def test_user_shape_loads_with_types(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("training: {lr: 5.0e-6, max_grad_norm: 1.0, precision: bf16, epochs: 3, batch_size: 64}\n"
                 "datasets:\n  enable_logits_masking: true\n  dataset_configs:\n"
                 "    food101: {num_classes: 101, train: d/f_train.jsonl, val: d/f_val.jsonl, eval_ratio: 0.1}\n"
                 "loss: {type: cross_entropy}\n")
    cfg = load_config(p)
    assert cfg.training.lr == 5e-6 and cfg.training.precision == "bf16" and cfg.training.epochs == 3
    assert cfg.masking == "slice"  # masking on, no mode named: the exact one
    assert cfg.resolve_path("d/f_train.jsonl") == tmp_path / "d/f_train.jsonl"


def test_yaml_1_1_exponent_without_dot_is_a_number():
    cfg = config_from_dict(BASE, ["training.lr=1e-6"])
    assert cfg.training.lr == 1e-6


def test_masking_off_means_none_and_conflicts_are_refused():
    raw = {**BASE, "datasets": {**BASE["datasets"], "enable_logits_masking": False}}
    assert config_from_dict(raw).masking == "none"
    with pytest.raises(ConfigError, match="enable_logits_masking is false"):
        config_from_dict(raw, ["loss.masking=neg_inf"])


@pytest.mark.parametrize("override, message", [
    ("training.learning_rate=1", "unknown key 'training.learning_rate'"),
    ("trainin.lr=1", "unknown key 'trainin'; did you mean 'training'"),
    ("training.precision=fp8", "training.precision: expected one of"),
    ("training.batch_size=1.5", "training.batch_size: expected an integer"),
    ("training.max_grad_norm=0", "training.max_grad_norm: must be positive or null"),
    ("datasets.dataset_configs.food101.eval_ratio=1.5", "eval_ratio: must be in (0, 1]"),
    ("monitor.grad_spike_floor=2", "monitor.grad_spike_floor: must be in [0, 1]"),
    ("loss.masking=neginf", "did you mean 'neg_inf'"),
    ("training.use_amp=true", "known here:"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        config_from_dict(BASE, [override], source="my.yaml")
    assert message in str(e.value) and "my.yaml" in str(e.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("training:\n  lr: 1e-3\n  steps: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+:\d+: YAML syntax error"):
        load_config(p)


def test_skip_evaluation_precedence_per_dataset_wins():
    raw = {**BASE, "datasets": {"skip_evaluation": True, "dataset_configs": {
        "a": {"num_classes": 2}, "b": {"num_classes": 2, "skip_evaluation": False}}}}
    cfg = config_from_dict(raw)
    assert cfg.eval_skipped("a") and not cfg.eval_skipped("b")
    raw["datasets"]["skip_evaluation"] = False
    raw["datasets"]["dataset_configs"]["a"]["skip_evaluation"] = True
    cfg = config_from_dict(raw)
    assert cfg.eval_skipped("a") and not cfg.eval_skipped("b")


def test_round_trip_through_yaml(tmp_path):
    cfg = config_from_dict(BASE, ["training.betas=[0.9, 0.95]"])
    p = tmp_path / "rt.yaml"
    p.write_text(cfg.to_yaml())
    again = load_config(p)
    assert again.to_dict() == cfg.to_dict()
