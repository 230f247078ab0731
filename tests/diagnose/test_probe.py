"""The probe: a few steps through the Trainer with out-of-range labels kept, on real files, CPU."""
from __future__ import annotations

import math

import pytest

from stablesweep.config import load_config
from stablesweep.diagnose import diagnose
from stablesweep.train import run_training

from .conftest import digest_tree, find


def test_probe_names_dataset_and_target_logit_masked(incident):
    path, info = incident
    before = digest_tree(path.parent)
    diag = diagnose(path, probe_steps=3, device="cpu")
    p = diag.probe
    assert p is not None and p.steps_run == 3
    f = find(diag, "probe.bad_labels")
    assert f.severity == "error"
    assert "food101: target logit masked, label 2 with num_classes 2" in f.title
    first = next(b for b in p.bad_samples if b.dataset == "food101")
    assert first.term == "target logit masked" and math.isinf(first.loss)
    assert "food172's class 0" in first.detail  # the target column is ANOTHER dataset's, hidden by the mask
    assert first.where.startswith("food101_train.jsonl:")
    assert int(first.where.rsplit(":", 1)[1]) in info["shifted_lines"]
    assert math.isinf(p.dataset_loss["food101"])
    assert any(math.isfinite(v) for k, v in p.dataset_loss.items() if k not in ("food101", "food172"))
    assert p.first_module is None  # the model's outputs are finite: the loss broke, not the network
    # with slice masking the same labels are out of bounds (an IndexError a run would hit), never inf
    sliced = diagnose(path, ["loss.masking=slice"], probe_steps=3, device="cpu")
    g = find(sliced, "probe.bad_labels")
    assert "target out of bounds" in g.title and sliced.probe.verdict == "error"
    assert digest_tree(path.parent) == before


def test_probe_locates_first_nonfinite_module_on_a_huge_lr(healthy):
    diag = diagnose(healthy, ["training.lr=1e36", "training.max_grad_norm=null"], probe_steps=3, device="cpu")
    f = find(diag, "probe.diverged")
    assert diag.probe.first_module is not None and "Conv2d" in diag.probe.first_module
    assert diag.probe.first_module_step == 1 and "first non-finite output" in f.title


def test_probe_runs_what_train_runs_lr_schedule_included(healthy):
    """The probe is the run: same model, batches, loss and optimizer as `train`, and the lr follows
    the schedule (an exponential schedule rises to lr_final; the probe once ran at a constant lr)."""
    overrides = ["training.schedule=exponential", "training.lr_final=2e-2", "training.steps=4",
                 "training.report_interval=1"]
    cfg = load_config(healthy, overrides)
    assert cfg.training.lr == 2e-3
    reports = []
    run_training(cfg, lambda metrics, checkpoint: reports.append(metrics), device="cpu")
    assert len(reports) == 4
    diag = diagnose(healthy, overrides, probe_steps=4, device="cpu")
    p = diag.probe
    assert p.steps_run == 4 and p.verdict == "stable"
    assert p.losses == pytest.approx([m["last_loss"] for m in reports], rel=1e-6)
    assert p.lrs == pytest.approx([2e-3 * 10 ** (k / 3) for k in range(4)], rel=1e-9)  # 2e-3 up to 2e-2
    assert p.lrs[-1] == pytest.approx(cfg.training.lr_final)
    assert [m["lr"] for m in reports[:-1]] == pytest.approx(p.lrs[1:])  # train reports the lr after its step
    f = find(diag, "probe.stable")
    assert any(e.startswith("lr per step (exponential schedule, warmup 0): 0.002, 0.00431, 0.00928, 0.02")
               for e in f.evidence), f.evidence


def test_probe_names_the_gradient_that_turned_non_finite_first(healthy):
    """At lr 1e15 the step-1 loss is finite (about 7e31) but the backward pass overflows: the
    gradient hooks name the parameter where it began (the last BatchNorm, features.9, before the
    head), not the input layer the non-finite values flow back to."""
    diag = diagnose(healthy, ["training.lr=1e15", "training.max_grad_norm=null"], probe_steps=3, device="cpu")
    p = diag.probe
    assert p.verdict == "diverged" and p.reason == "nonfinite_grad" and p.first_bad_step == 1
    assert math.isfinite(p.losses[1]) and p.first_module is None
    assert p.first_grad_param == "features.9.weight (step 1)"
    assert "first non-finite gradient: features.9.weight (step 1)" in find(diag, "probe.diverged").evidence
