"""The options of sweeps and ramps: one set of shared fields, the step budget as an override."""
from __future__ import annotations

import re
from dataclasses import fields

import pytest

from stablesweep.sweep.options import RampOptions, RunOptions, SweepOptions
from stablesweep.vocab import InputError


def test_steps_come_after_the_overrides():
    opts = SweepOptions(config="c", space="s", overrides=["training.lr=0.1", "training.steps=5"], steps=40)
    assert opts.config_overrides() == ["training.lr=0.1", "training.steps=5", "training.steps=40"]
    assert RampOptions(config="c", overrides=["training.lr=0.1"]).config_overrides() == ["training.lr=0.1"]


def test_sweeps_and_ramps_share_the_run_options():
    shared = {f.name for f in fields(RunOptions)}
    assert {"out", "local_dir", "shared_storage", "max_failures", "resources_per_trial", "mlflow", "name"} <= shared
    for options in (SweepOptions, RampOptions):
        assert shared <= {f.name for f in fields(options)}
    assert (SweepOptions.DEFAULT_DIR, RampOptions.DEFAULT_DIR) == ("runs/sweeps", "runs/ramps")


def test_options_are_named_not_positional():
    with pytest.raises(TypeError):
        SweepOptions("c.yaml", "s.yaml")  # a swapped config and space would otherwise pass unseen


def test_a_run_is_named_after_its_config_or_by_a_safe_name():
    assert re.fullmatch(r"demo-ramp-\d{8}-\d{6}", RampOptions(config="configs/demo.yaml").run_name("ramp"))
    assert SweepOptions(config="c", space="s", name="food-qmc.2").run_name("s") == "food-qmc.2"
    for bad in ("../up", "a b", ".hidden", "x/y"):
        with pytest.raises(InputError, match=re.escape(f"--name {bad!r}: use letters, digits")):
            SweepOptions(config="c", space="s", name=bad).run_name("s")
