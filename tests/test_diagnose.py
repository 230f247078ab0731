"""`stablesweep diagnose` on real files (write_synthetic), real torch, CPU.

The user's incident as a fixture: food101's train manifest shifted to 1-based, one food172 label
equal to num_classes, -inf masking, bf16, lr 5e-6.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stablesweep.config import ConfigError, load_config
from stablesweep.diagnose import InputError, diagnose, read_region, write_fixed
from stablesweep.train import run_training
from tests.diagnose_fixtures import (clone, digest_tree, make_incident, read_manifest, synth, with_settings,
                                     write_manifest)

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "stablesweep", "diagnose", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=300)


def codes(diag) -> dict[str, str]:
    return {f.code: f.severity for f in diag.findings}


def find(diag, code: str):
    hits = [f for f in diag.findings if f.code == code]
    assert hits, f"no {code} finding in {sorted(codes(diag))}"
    return hits[0]


@pytest.fixture(scope="module")
def healthy_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("healthy")
    synth(root)
    return root


@pytest.fixture
def healthy(healthy_dir, tmp_path) -> Path:
    """A private copy of the healthy data and config."""
    return clone(healthy_dir, tmp_path / "data")


@pytest.fixture
def incident(healthy_dir, tmp_path):
    root = tmp_path / "incident"
    clone(healthy_dir, root)
    path, info = make_incident(root)
    return path, info


# ---- through the CLI: exit codes ------------------------------------------------------------

def test_incident_cli_names_each_label_error_and_fix_exit_1(incident, tmp_path):
    path, info = incident
    before = digest_tree(path.parent)
    out = tmp_path / "out"
    r = cli(str(path), "--out", str(out))
    assert r.returncode == 1, r.stdout + r.stderr
    text = r.stdout
    # 1-based food101: file, line, the right fix (subtract 1), never a clamp
    assert "[labels.one_based] food101 train" in text
    assert f"food101_train.jsonl:{info['shifted_lines'][0]}" in text
    assert "subtract 1 from every label" in text
    # one label == num_classes in food172: file and line, fix or drop that line
    assert "[labels.out_of_range] food172 train" in text
    assert f"food172_train.jsonl:{info['bad_line']}" in text
    assert f"fix or drop line {info['bad_line']} of food172_train.jsonl" in text
    # why the loss read inf: the target lands in another dataset's columns, which -inf masking hides
    assert "[masking.target_masked]" in text
    assert "global column 2 = food172 class 0" in text  # food101 label 2 -> food172's first column
    assert f"global column {info['n101'] + info['n172']} = foodx251 class 0" in text
    # the fixed config: beside nothing of the user's, masking switched, data not pretended fixed
    fixed = out / "incident_fixed.yaml"
    assert fixed.is_file() and f"wrote {fixed}" in text
    ftext = fixed.read_text()
    assert "DATA NOT FIXED" in ftext and "subtract 1" in ftext
    cfg = load_config(fixed)
    assert cfg.masking == "slice"
    orig = load_config(path)
    assert {n: d.num_classes for n, d in cfg.datasets.dataset_configs.items()} == \
        {n: d.num_classes for n, d in orig.datasets.dataset_configs.items()}
    # manifests resolve to the same files from the other folder
    assert cfg.resolve_path(cfg.datasets.dataset_configs["food101"].train).resolve() == \
        (path.parent / "food101_train.jsonl").resolve()
    assert digest_tree(path.parent) == before  # the user's config and data: byte-identical


def test_healthy_cli_exit_0_no_findings_nothing_written(healthy):
    before = digest_tree(healthy.parent)
    r = cli(str(healthy))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "healthy: 0 error(s), 0 warning(s)" in r.stdout
    assert "ERROR" not in r.stdout and "WARNING" not in r.stdout
    assert "stablesweep ramp" in r.stdout  # the one info: lr not measured, where to measure it
    assert not (healthy.parent / "config_fixed.yaml").exists()
    assert digest_tree(healthy.parent) == before


def test_unreadable_input_exit_2(tmp_path, healthy):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  lr: [1e-3\n")
    r = cli(str(bad))
    assert r.returncode == 2 and "error:" in r.stderr and "bad.yaml:" in r.stderr, r.stderr
    unknown = with_settings(healthy, tmp_path / "unknown.yaml", training={"lrate": 1e-3})
    r = cli(str(unknown))
    assert r.returncode == 2 and "unknown key 'training.lrate'" in r.stderr, r.stderr
    region = tmp_path / "region.json"
    region.write_text(json.dumps({"trials": [1, 2, 3]}))
    r = cli(str(healthy), "--region", str(region))
    assert r.returncode == 2 and "unknown format" in r.stderr, r.stderr
    assert not list(tmp_path.glob("*_fixed.yaml")) and not (healthy.parent / "config_fixed.yaml").exists()


def test_no_write_writes_nothing(incident, capsys):
    from stablesweep.cli import main

    path, _ = incident
    before = digest_tree(path.parent)
    assert main(["diagnose", str(path), "--no-write"]) == 1
    out = capsys.readouterr().out
    assert "[labels.one_based]" in out and "wrote" not in out
    assert digest_tree(path.parent) == before  # no incident_fixed.yaml either


# ---- masking against precision and loss -----------------------------------------------------

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


# ---- the fixed config trains ----------------------------------------------------------------

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


# ---- the probe ------------------------------------------------------------------------------

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


# ---- lr against a measured region -----------------------------------------------------------

def _region_json(path: Path) -> Path:
    """A stable_region.json in the format of analysis.region (Region.to_dict + write_region extras)."""
    def group(precision, masking, clip, max_stable, min_div):
        key = {"training.max_grad_norm": clip, "training.precision": precision, "loss.masking": masking}
        return {"key": key, "counts": {"stable": 3, "diverged": 2, "pruned": 0, "error": 0},
                "max_stable_lr": max_stable, "min_diverged_lr": min_div, "bracket_ok": True,
                "best_objective": 0.6, "best_trial": "t02", "best_params": {**key, "training.lr": max_stable},
                "lr_sensitivity": 0.3, "sensitivity_n": 5, "budget_steps": 60,
                "label": f"clip={clip} precision={precision} masking={masking}"}
    data = {"title": "Stable region: sweep t", "sweep": "t", "sampler": "tpe", "samples": 10, "interrupted": False,
            "lr_key": "training.lr", "group_keys": ["training.max_grad_norm", "training.precision", "loss.masking"],
            "param_keys": ["training.lr", "training.max_grad_norm", "training.precision", "loss.masking"],
            "budget_steps": 60, "counts": {"stable": 6, "diverged": 4, "pruned": 0, "error": 0},
            "groups": [group("fp32", "slice", 1.0, 1e-3, 1e-2), group("bf16", "neg_inf", None, 1e-5, 1e-4)],
            "best": None, "importance": {}, "importance_method": "", "divergence_rates": {}, "recommended": None}
    path.write_text(json.dumps(data, indent=2))
    return path


def test_lr_against_a_sweep_region(healthy, tmp_path):
    region = _region_json(tmp_path / "stable_region.json")
    diag = diagnose(healthy, region=region)  # lr 2e-3 (write_synthetic), fp32, slice, clip 1.0
    f = find(diag, "lr.above_max_stable")
    assert f.severity == "warning"
    assert any("max stable lr 1.0e-03" in e and "60 steps" in e for e in f.evidence)
    assert any("trains 200 steps, longer than the 60 measured" in e for e in f.evidence)
    assert f.changes == {"training.lr": 1e-3}
    above = diagnose(healthy, ["training.lr=0.02"], region=region)
    assert find(above, "lr.above_boundary").severity == "error"
    within = diagnose(healthy, ["training.lr=5e-4"], region=region)
    assert find(within, "lr.within").severity == "info" and within.healthy
    other = diagnose(healthy, ["training.precision=bf16"], region=region)
    assert find(other, "lr.setting_unmeasured").severity == "info"
    nogo = diagnose(healthy, ["training.precision=bf16", "training.max_grad_norm=null", "loss.masking=neg_inf",
                              "training.lr=1e-5"], region=region)
    assert "lr.within" in codes(nogo) and "lr.unmeasured" not in codes(nogo)


def test_region_written_by_the_sweep_engine_reads(healthy, tmp_path):
    region_mod = pytest.importorskip("stablesweep.analysis.region")
    pd = pytest.importorskip("pandas")
    rows = []
    for i, (lr, verdict) in enumerate([(1e-4, "stable"), (1e-3, "stable"), (1e-2, "diverged"), (1e-1, "diverged")]):
        rows.append({"trial_id": f"t{i}", "training.lr": lr, "training.max_grad_norm": 1.0,
                     "training.precision": "fp32", "loss.masking": "slice", "verdict": verdict,
                     "objective": 1.0 if verdict == "stable" else 3.0, "initial_loss": 3.0, "steps": 50,
                     "budget_steps": 50})
    df = pd.DataFrame(rows)
    keys = ["training.lr", "training.max_grad_norm", "training.precision", "loss.masking"]
    region = region_mod.analyze(df, group_keys=keys[1:], param_keys=keys, importance=False)
    files = region_mod.write_region(region, df, tmp_path / "sweep", figures=False)
    measured = read_region(files["json"])
    assert measured.kind == "sweep" and measured.settings[0].max_stable_lr == 1e-3
    f = find(diagnose(healthy, region=files["json"]), "lr.above_max_stable")
    assert any("50 steps" in e for e in f.evidence)


def test_lr_against_a_ramp_json_and_bad_region_files(healthy, tmp_path):
    ramp = tmp_path / "ramp.json"
    ramp.write_text(json.dumps({"budget_steps": 80, "settings": [
        {"setting": {"training.precision": "fp32", "loss.masking": "slice"}, "max_stable_lr": 4e-3,
         "min_diverged_lr": 5e-3, "recommended_lr": 2e-3, "probes": 7},
        {"setting": {"precision": "bf16", "masking": "slice"}, "max_stable_lr": 1e-3,  # short axis names
         "min_diverged_lr": 2e-3, "recommended_lr": 5e-4, "steps": 40}]}))
    measured = read_region(ramp)
    assert measured.kind == "ramp" and measured.settings[0].budget_steps == 80
    diag = diagnose(healthy, ["training.lr=4.5e-3"], region=ramp)
    f = find(diag, "lr.above_max_stable")
    assert f.changes == {"training.lr": 2e-3} and any("80 steps" in e for e in f.evidence)
    ok = diagnose(healthy, region=ramp)
    assert find(ok, "lr.within").severity == "info"
    bf16 = diagnose(healthy, ["training.precision=bf16"], region=ramp)  # lr 2e-3 >= min diverged 2e-3
    g = find(bf16, "lr.above_boundary")
    assert g.changes == {"training.lr": 5e-4} and any("40 steps" in e for e in g.evidence)
    for text, match in [("[1, 2]", "unknown format"), ("{\"groups\": [{\"key\": {}}]}", "neither max_stable_lr"),
                        ("not json", "not JSON")]:
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(InputError, match=match):
            diagnose(healthy, region=bad)
    with pytest.raises(InputError, match="no such file"):
        diagnose(healthy, region=tmp_path / "missing.json")
