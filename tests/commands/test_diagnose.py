"""`stablesweep diagnose` as a user runs it: findings, exit codes, what is written and what is not
(in this process, conftest's `cli`; the unreadable inputs through the real entry point, a subprocess)."""
from __future__ import annotations

import json

from stablesweep.config import load_config
from tests.diagnose.conftest import diagnose_subprocess, digest_tree, with_settings


def test_incident_cli_names_each_label_error_and_fix_exit_1(incident, tmp_path, cli):
    path, info = incident
    before = digest_tree(path.parent)
    out = tmp_path / "out"
    r = cli("diagnose", path, "--out", out)
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


def test_healthy_cli_exit_0_no_findings_nothing_written(healthy, cli):
    before = digest_tree(healthy.parent)
    r = cli("diagnose", healthy)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "healthy: 0 error(s), 0 warning(s)" in r.stdout
    assert "ERROR" not in r.stdout and "WARNING" not in r.stdout
    assert "stablesweep ramp" in r.stdout  # the one info: lr not measured, where to measure it
    assert not (healthy.parent / "config_fixed.yaml").exists()
    assert digest_tree(healthy.parent) == before


def test_unreadable_input_exit_2(tmp_path, healthy):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  lr: [1e-3\n")
    r = diagnose_subprocess(str(bad))
    assert r.returncode == 2 and "error:" in r.stderr and "bad.yaml:" in r.stderr, r.stderr
    unknown = with_settings(healthy, tmp_path / "unknown.yaml", training={"lrate": 1e-3})
    r = diagnose_subprocess(str(unknown))
    assert r.returncode == 2 and "unknown key 'training.lrate'" in r.stderr, r.stderr
    region = tmp_path / "region.json"
    region.write_text(json.dumps({"trials": [1, 2, 3]}))
    r = diagnose_subprocess(str(healthy), "--region", str(region))
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
