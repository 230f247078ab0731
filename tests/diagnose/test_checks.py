"""The checks on real files (write_synthetic), real torch, CPU: masking, clipping, evaluation, labels and files."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from stablesweep.config import ConfigError, load_config
from stablesweep.data.manifests import scan
from stablesweep.diagnose import diagnose, write_fixed
from stablesweep.diagnose.checks import Context, check_labels, check_masking

from .conftest import codes, find, read_manifest, with_settings, write_manifest


def test_fp16_with_minus_1e9_in_autocast_is_flagged(healthy):
    path = with_settings(healthy, healthy.parent / "fp16.yaml", training={"precision": "fp16"},
                         loss={"masking": "large_negative", "mask_value": -1e9, "mask_in": "autocast"})
    diag = diagnose(path)
    f = find(diag, "masking.value_overflow")
    assert f.severity == "error" and "-1e+09" in f.title and "fp16" in f.title
    assert any("-inf" in e for e in f.evidence)  # measured: -1e9 stored in fp16 is -inf
    assert find(diag, "masking.mask_in_autocast").severity == "warning"
    changes = {c.key: c.new for c in diag.changes()}
    assert changes == {"loss.masking": "slice", "loss.mask_in": "fp32"}
    # bf16 holds -1e9: only the autocast masking is flagged; fp16 masked in fp32 is fine
    bf16 = diagnose(path, ["training.precision=bf16"])
    assert "masking.value_overflow" not in codes(bf16) and "masking.mask_in_autocast" in codes(bf16)
    fp32_mask = diagnose(path, ["loss.mask_in=fp32"])
    assert fp32_mask.healthy, [f.title for f in fp32_mask.findings if f.severity != "info"]


def test_label_smoothing_with_neg_inf_is_flagged(healthy):
    path = with_settings(healthy, healthy.parent / "ls.yaml",
                         loss={"type": "label_smoothing", "label_smoothing": 0.1, "masking": "neg_inf"})
    diag = diagnose(path)
    f = find(diag, "masking.smoothing")
    assert f.severity == "error" and "inf" in f.title
    assert any("is inf" in e for e in f.evidence)  # measured on a correct label
    # -1e9 instead: finite but huge (about 1e8 here), still a warning
    big = diagnose(path, ["loss.masking=large_negative"])
    g = find(big, "masking.smoothing")
    assert g.severity == "warning"
    measured = float(g.title.split("the loss is ")[1].split()[0])
    assert 1e6 < measured < 1e10


def test_no_clipping_eval_ratio_and_skip_evaluation(healthy):
    raw = yaml.safe_load(healthy.read_text())
    raw["training"]["max_grad_norm"] = None
    dcs = raw["datasets"]["dataset_configs"]
    dcs["food2k"]["eval_ratio"] = 10  # meant 10 %
    raw["datasets"]["skip_evaluation"] = True
    for d in dcs.values():
        d["skip_evaluation"] = False
    path = healthy.parent / "evals.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError, match="eval_ratio"):
        load_config(path)  # what train would say
    diag = diagnose(path)
    assert diag.exit_code == 1
    r = find(diag, "eval.ratio")
    assert r.key == "datasets.dataset_configs.food2k.eval_ratio" and r.severity == "error"
    assert find(diag, "clip.none").severity == "warning"
    s = find(diag, "eval.skip_conflict")
    assert "no effect" in s.title and any("per-dataset setting wins" in e for e in s.evidence)
    written = write_fixed(diag)
    assert written is not None
    fixed_path, changes = written
    assert fixed_path == healthy.parent / "evals_fixed.yaml"
    cfg = load_config(fixed_path)
    assert cfg.datasets.dataset_configs["food2k"].eval_ratio == pytest.approx(0.1)
    assert cfg.training.max_grad_norm == 1.0
    assert not cfg.datasets.skip_evaluation
    assert not any(cfg.eval_skipped(n) for n in cfg.dataset_names)  # same datasets evaluated as before


def test_missing_files_named(healthy):
    (healthy.parent / "fru92_val.jsonl").unlink()
    (healthy.parent / "images" / "veg200" / "train" / "3.png").unlink()
    diag = diagnose(healthy)
    missing = [f for f in diag.findings if f.code == "data.missing_file"]
    text = "\n".join(e for f in missing for e in f.evidence)
    assert "fru92_val.jsonl" in text and "veg200_train.jsonl:4" in text
    assert all(f.severity == "error" for f in missing)


def test_absent_classes_and_probably_more_classes(healthy):
    m = healthy.parent / "foodx251_train.jsonl"  # 5 classes; relabel class 4 as 5: 0..3 and 5
    rows = read_manifest(m)
    for r in rows:
        if r["label"] == 4:
            r["label"] = 5
    write_manifest(m, rows)
    diag = diagnose(healthy)
    f = find(diag, "labels.out_of_range")
    assert "label 5 outside [0, 5)" in f.evidence[0]
    absent = find(diag, "labels.classes_absent")
    assert absent.severity == "warning" and "absent: 4" in absent.evidence[0]


def test_data_findings_read_problem_kinds_not_message_text(incident):
    """The checks classify the scan's problems by their kind, file, line and value: with every
    message replaced by an opaque one, the findings and their file:line evidence are the same."""
    path, info = incident
    (path.parent / "fru92_val.jsonl").unlink()
    cfg = load_config(path)
    report, _ = scan(cfg, cfg.data.verify_images)
    for s in report.splits:
        s.problems = [dataclasses.replace(p, message=f"problem #{i}") for i, p in enumerate(s.problems)]
    ctx = Context(cfg, path, report)
    labels = check_labels(ctx)
    assert {(f.code, f.dataset) for f in labels} == {
        ("labels.one_based", "food101"), ("labels.out_of_range", "food172"), ("data.missing_file", "fru92")}
    assert f"fix or drop line {info['bad_line']} of food172_train.jsonl" in find(labels, "labels.out_of_range").fix
    assert find(labels, "data.missing_file").evidence == ["problem #0"]  # the message, as the scan wrote it
    masked = find(check_masking(ctx), "masking.target_masked")
    assert any(e.startswith(f"food172_train.jsonl:{info['bad_line']}: food172 label 3") for e in masked.evidence)
