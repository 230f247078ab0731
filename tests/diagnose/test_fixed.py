"""The fixed config: every change commented with its finding, loads, and trains stable where the original diverged."""
from __future__ import annotations

import math

from stablesweep.config import load_config
from stablesweep.diagnose import diagnose, write_fixed
from stablesweep.train import run_training

from .conftest import codes, digest_tree, with_settings


def test_fixed_yaml_trains_stable(healthy, tmp_path):
    short = ["training.steps=30", "training.report_interval=10"]
    path = with_settings(healthy, healthy.parent / "risky.yaml", training={"max_grad_norm": None},
                         loss={"type": "label_smoothing", "label_smoothing": 0.1, "masking": "neg_inf"})
    before = digest_tree(healthy.parent)
    broken = run_training(load_config(path, short), device="cpu")
    assert broken.verdict == "diverged" and broken.reason == "nonfinite_loss" and broken.first_bad_step == 0

    diag = diagnose(path)
    assert {"masking.smoothing": "error", "masking.neg_inf": "warning", "clip.none": "warning"}.items() \
        <= codes(diag).items()
    out = tmp_path / "fixed"
    fixed_path, changes = write_fixed(diag, out)
    assert fixed_path == out / "risky_fixed.yaml"
    assert {c.key: c.new for c in changes} == {"loss.masking": "slice", "training.max_grad_norm": 1.0}
    # each change carries its finding as a comment on the changed key, and the old value inline
    lines = fixed_path.read_text().splitlines()
    i = next(k for k, line in enumerate(lines) if line.strip().startswith("masking:"))
    assert lines[i].strip() == "masking: slice  # was neg_inf"
    above = []
    k = i - 1
    while lines[k].strip().startswith("#"):
        above.insert(0, lines[k].strip())
        k -= 1
    assert any("masking.smoothing" in c for c in above) and any("masking.neg_inf" in c for c in above)
    j = next(k for k, line in enumerate(lines) if line.strip().startswith("max_grad_norm:"))
    assert lines[j].strip() == "max_grad_norm: 1.0  # was null" and "clip.none" in lines[j - 1]

    fixed = run_training(load_config(fixed_path, short), device="cpu")
    assert fixed.verdict == "stable" and fixed.steps == 30, fixed
    assert all(math.isfinite(d["loss"]) for d in fixed.datasets.values())
    assert diagnose(fixed_path).healthy
    assert digest_tree(healthy.parent) == before
