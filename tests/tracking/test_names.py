"""The names of what goes into MLflow: run names, param values, setting slugs, flattened keys."""
from __future__ import annotations

from stablesweep.tracking import name_without_verdict, param_value, run_name, setting_slug, verdict_label
from stablesweep.vocab import flatten


def test_a_run_name_leads_with_its_verdict():
    assert run_name("diverged", 10, {"training.lr": 82.0, "loss.masking": "slice",
                                     "training.max_grad_norm": 1.0}) == "diverged@10 lr=8.2e+01 slice clip=1.0"
    assert run_name("stalled", -1, {"training.lr": 1e-6}) == "stalled lr=1.0e-06"
    assert name_without_verdict("diverged@10 lr=8.2e+01 slice") == "lr=8.2e+01 slice"
    assert name_without_verdict("lr=8.2e+01 slice") == "lr=8.2e+01 slice"
    assert verdict_label("diverged", 10) == "diverged@10" and verdict_label("diverged", -1) == "diverged"
    assert verdict_label("stable", 3) == "stable"


def test_params_are_written_as_a_config_writes_them():
    assert [param_value(v) for v in (None, True, 3, 1e-05, 0.001, 5e-6, float("nan"), "slice")] == \
        ["none", "true", "3", "1.0e-05", "0.001", "5.0e-06", "none", "slice"]


def test_a_setting_slug_has_no_slash():
    assert setting_slug({"training.precision": "bf16", "loss.masking": "neg_inf", "training.max_grad_norm": None,
                         "training.lr": 1.0, "data.image size": "a/b"}) == "bf16_neg_inf_clip-none_image_size-a_b"
    assert setting_slug({}) == "all"


def test_flatten():
    assert flatten({"training": {"lr": 1e-3, "opt": {"name": "adam"}}, "data": {}, "seed": 0}) == \
        {"training.lr": 1e-3, "training.opt.name": "adam", "data": {}, "seed": 0}
