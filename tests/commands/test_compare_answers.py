"""`stablesweep compare` on a real sweep and a real ramp of one config (the demo, CPU, real Ray,
Optuna, MLflow and training loop) in one default store: the answers by config side by side, each
run's numbers those of its own stable_region.json or ramp.json. The parts on plain data:
tests/analysis/test_answers_by_config.py."""
from __future__ import annotations

import json

import pytest

import stablesweep
from stablesweep.analysis.text import lr_text
from stablesweep.cli import main
from tests.conftest import DEMO

COLUMNS = ("max_stable_lr", "min_failed_lr", "largest_safe_lr", "recommended_lr")
FAST = dict(training__report_interval=5, training__warmup_steps=0, datasets__skip_evaluation=True)


def test_a_sweep_and_a_ramp_of_one_config_side_by_side(tmp_path, monkeypatch, ray_cluster, capsys):
    monkeypatch.chdir(tmp_path)
    swept = stablesweep.sweep(DEMO, {"training.lr": {"grid": [0.01, 1000.0]}}, sampler="grid", steps=20, asha=False,
                              name="tiny-sweep", log=None, max_concurrent=1, **FAST)  # one worker
    edge = stablesweep.ramp(DEMO, lr_start=0.01, lr_stop=1000.0, ladder="x10", resolution=10, steps=20, target_steps=20,
                            name="tiny-ramp", log=None, max_concurrent=1, **FAST)
    assert edge.tracking_uri == swept.tracking_uri  # one default store
    (region,) = json.loads((swept.dir / "stable_region.json").read_text())["groups"]
    (ramped,) = json.loads((edge.dir / "ramp.json").read_text())["settings"]
    files = {"tiny-sweep": region, "tiny-ramp": ramped}
    for doc in files.values():
        assert doc["max_stable_lr"] is not None and doc["min_failed_lr"] is not None

    capsys.readouterr()
    out = tmp_path / "cmp"
    assert main(["compare", "--out", str(out), "--no-log", "--no-figures"]) == 0
    text = capsys.readouterr().out
    section = text[text.index("Answers by config"):text.index("Configurations:")]
    lines = section.splitlines()
    assert any(ln.strip() == f"{DEMO.resolve()}:" for ln in lines)
    heading = next(ln for ln in lines if "tiny-sweep (sweep)" in ln)
    assert heading.index("tiny-sweep (sweep)") < heading.index("tiny-ramp (ramp)")  # side by side, one table
    (row,) = [ln.split() for ln in lines if ln.strip().startswith("all ")]  # the one setting of both
    # per run: budget, then the four lrs (no replicates: no lr at 5% risk)
    assert row == ["all", "20", *[lr_text(region[c]) for c in COLUMNS], "20", *[lr_text(ramped[c]) for c in COLUMNS]]
    # at one budget, neither recommends an lr the other saw fail; where one's largest safe lr is above
    # the other's failure (a coarse grid's bracket, a ramp's finer one), the section says which holds
    assert region["recommended_lr"] < ramped["min_failed_lr"] and ramped["recommended_lr"] < region["min_failed_lr"]
    assert "recommends lr" not in section and "is noisy" not in section
    if region["largest_safe_lr"] > ramped["min_failed_lr"]:
        assert (f"differs: all: tiny-sweep's largest safe lr {lr_text(region['largest_safe_lr'])} is above "
                f"tiny-ramp's smallest failed lr {lr_text(ramped['min_failed_lr'])} (both at 20 steps)") in section
        assert f"the edge is at most {lr_text(ramped['min_failed_lr'])}" in section and "agree:" not in section
    else:
        assert "agree: tiny-sweep and tiny-ramp agree at 20 steps" in section and "differs:" not in section

    # the numbers exactly, in the report's JSON and answers.csv: each run's own files
    (ca,) = json.loads((out / "compare.json").read_text())["answers_by_config"]
    assert ca["runs"] == ["tiny-sweep", "tiny-ramp"] and ca["settings"] == ["all"]
    for rec in ca["answers"]:
        doc = files[rec["run"]]
        assert rec["budget_steps"] == 20
        for c in (*COLUMNS, "min_stable_lr", "min_diverged_lr"):
            assert rec[c] == pytest.approx(doc[c], rel=1e-12) if doc[c] is not None else rec[c] is None, c
    assert (out / "answers.csv").read_text().count("\n") == 3  # a header and a row per run
