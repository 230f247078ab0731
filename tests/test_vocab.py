"""The project's vocabulary: the one recommended-lr rule, the value helpers, the error base, and
that it stays the ground floor (a fresh interpreter imports none of torch, Ray, Optuna, MLflow)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stablesweep.cluster.launcher import ClusterError
from stablesweep.config import ConfigError
from stablesweep.data.problems import DataError
from stablesweep.diagnose.explain import ExplainError
from stablesweep.sweep.space import SpaceError
from stablesweep.vocab import (
    SAFETY,
    InputError,
    finite,
    format_value,
    jsonable,
    py,
    recommended_lr,
    short_key,
    short_name,
)

ROOT = Path(__file__).resolve().parents[1]


def test_vocab_imports_no_heavy_package():
    code = ("import sys, json; import stablesweep.vocab; print(json.dumps(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('torch', 'ray', 'optuna', 'mlflow', 'pandas', 'numpy'))))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == []


def test_recommended_lr_takes_the_nearest_known_edge():
    assert SAFETY == 0.5
    # the edge: the lr at 5% risk where replicates measured it, else the smallest diverged, else the largest stable
    assert recommended_lr(1e-3, max_stable=1e-3, min_diverged=1e-2, at_risk=4e-3) == pytest.approx(1e-3)
    assert recommended_lr(3e-3, max_stable=4e-3, min_diverged=1e-2, at_risk=4e-3) == pytest.approx(2e-3)
    assert recommended_lr(8e-3, max_stable=8e-3, min_diverged=1e-2) == pytest.approx(5e-3)
    assert recommended_lr(8e-3, max_stable=8e-3, min_diverged=None) == pytest.approx(4e-3)
    assert recommended_lr(1e-4, max_stable=8e-3, min_diverged=None) == pytest.approx(1e-4)  # below the margin: kept
    assert recommended_lr(8e-3, max_stable=8e-3, min_diverged=1e-2, safety=0.25) == pytest.approx(2.5e-3)


def test_recommended_lr_is_none_without_a_stable_lr():
    assert recommended_lr(None, max_stable=1e-3, min_diverged=1e-2) is None
    assert recommended_lr(1e-3, max_stable=None, min_diverged=1e-2) is None


def test_py_and_finite_give_plain_values():
    assert py(np.float32(0.5)) == 0.5 and type(py(np.float32(0.5))) is float
    assert py(np.int64(3)) == 3 and type(py(np.int64(3))) is int
    assert py(float("nan")) is None and py(np.float64("nan")) is None and py(None) is None
    assert py("x") == "x" and py(np.array([1, 2])).tolist() == [1, 2]  # not a scalar: left as it is
    assert finite(np.float64(2.0)) == 2.0 and finite(3) == 3.0 and type(finite(3)) is float
    for bad in (None, math.nan, math.inf, -math.inf, True, "1.0", [1.0]):
        assert finite(bad) is None, bad


def test_jsonable_turns_nested_numpy_and_non_finite_values_into_json():
    doc = jsonable({"a": (np.float32(1.5), math.inf), 2: {"b": np.int64(2), "c": math.nan}, "d": [None, "s"]})
    assert doc == {"a": [1.5, None], "2": {"b": 2, "c": None}, "d": [None, "s"]}
    json.dumps(doc, allow_nan=False)


@pytest.mark.parametrize("value,text", [
    (None, "none"), (math.nan, "none"), (True, "true"), (False, "false"), (1.0, "1.0"), (np.float64(2.0), "2.0"),
    (2e-6, "2.0e-06"), (0.25, "0.25"), (0.5, "0.5"), (1e5, "1.0e+05"), (0.0, "0.0"), (3, "3"), ("bf16", "bf16"),
])
def test_format_value(value, text):
    assert format_value(value) == text


def test_short_key():
    assert [short_key(k) for k in ("training.lr", "training.max_grad_norm", "loss.masking", "training.precision",
                                   "loss.label_smoothing", "seed")] == \
        ["lr", "clip", "masking", "precision", "label_smoothing", "seed"]


@pytest.mark.parametrize("cls", [ConfigError, DataError, SpaceError, ClusterError, ExplainError])
def test_every_bad_input_error_is_an_input_error(cls):
    with pytest.raises(InputError, match="where: what"):
        raise cls("where: what")


def test_short_names():
    assert short_name({"training.lr": 2e-6, "training.precision": "bf16", "loss.masking": "slice",
                       "training.max_grad_norm": 1.0}) == "lr=2.0e-06 bf16 slice clip=1.0"
    assert short_name({"training.max_grad_norm": None, "training.warmup_steps": 10}) == "clip=none warmup_steps=10"
