"""`stablesweep compare`'s per-setting table on a real sweep with replicates (the demo, CPU, real
Ray, Optuna, MLflow sqlite store and training loop): its lrs are the parent run's recorded answer,
the numbers of the sweep's own stable_region.json, whatever the replicates did; an older parent
with no per-setting metrics is recomputed from its child runs and says so. The parts on plain
data: tests/analysis/test_comparison.py."""
from __future__ import annotations

import json

import pandas as pd
import pytest

import stablesweep
from stablesweep.analysis.comparison import compare
from stablesweep.analysis.reading import read_sweeps
from stablesweep.analysis.render import to_text
from stablesweep.analysis.text import lr_text
from stablesweep.cli import main
from stablesweep.tracking import TrackerReader
from tests.conftest import DEMO

LRS = ("max_stable_lr", "min_diverged_lr", "min_failed_lr", "largest_safe_lr", "recommended_lr")
FAST = dict(training__report_interval=5, training__warmup_steps=0, training__schedule="constant",
            training__max_grad_norm=None, datasets__skip_evaluation=True)


def test_the_per_setting_table_is_the_parents_answer_of_a_sweep_with_replicates(tmp_path, monkeypatch, ray_cluster,
                                                                                capsys, mlflow_uri):
    monkeypatch.chdir(tmp_path)
    swept = stablesweep.sweep(DEMO, {"training.lr": {"grid": [0.02, 0.05, 1000.0]}}, sampler="grid", steps=20,
                              asha=False, replicates=2, name="rep", mlflow=mlflow_uri, log=None, max_concurrent=1, **FAST)
    table = swept.table
    assert (table["phase"] == "replicate").sum() > 0  # seeds 0 and 1 inside the bracket and at its ends
    (region,) = json.loads((swept.dir / "stable_region.json").read_text())["groups"]
    parent = TrackerReader(mlflow_uri).get_run(swept.parent_run_id)
    recorded = {n: parent.metrics.get(f"{n}.all") for n in LRS}  # one setting: its slug is `all`
    for n in LRS:  # the parent's metrics are the region file's numbers
        assert recorded[n] == (pytest.approx(region[n], rel=1e-12) if region[n] is not None else None), n

    capsys.readouterr()
    out = tmp_path / "cmp"
    assert main(["compare", "--mlflow", mlflow_uri, "--out", str(out), "--no-log", "--no-figures"]) == 0
    text = capsys.readouterr().out
    # the table: its lrs are the parent's, its counts the sweep's own trials (replicates left out)
    (row,) = pd.read_csv(out / "settings.csv").to_dict(orient="records")
    assert row["answer_from"] == "parent" and row["setting"] == "all"
    for n in LRS:
        assert (row[n] == pytest.approx(recorded[n], rel=1e-12)) if recorded[n] is not None else pd.isna(row[n]), n
    own = table[table["phase"] == "sweep"]
    assert [row[v] for v in ("stable", "stalled", "diverged")] == [
        int((own["verdict"] == v).sum()) for v in ("stable", "stalled", "diverged")] == \
        [region["counts"][v] for v in ("stable", "stalled", "diverged")]
    section = text[text.index("Per sweep and setting"):text.index("Configurations:")]
    (line,) = [ln.split() for ln in section.splitlines() if ln.strip().startswith("rep ")]
    assert line[6:11] == [lr_text(recorded[n]) for n in LRS]
    assert line[-1] == "parent" and "recomputed" not in section

    # an older parent records no per-setting metrics: the table recomputes from the child runs (the
    # replicates left out, so here the same numbers) and says where they came from
    (data,) = read_sweeps(mlflow_uri, names=["rep"])
    assert data.setting_answers["all"]["max_stable_lr"] == recorded["max_stable_lr"]
    data.setting_answers = {}
    old = compare([data])
    (row,) = old.settings_table().to_dict(orient="records")
    assert row["answer_from"] == "child runs" and old.recomputed() == ["rep"]
    for n in ("max_stable_lr", "min_diverged_lr", "min_failed_lr"):
        assert row[n] == (pytest.approx(recorded[n]) if recorded[n] is not None else None), n
    assert "rep: the parent records no per-setting answer (an older version), so its lrs are recomputed from " \
           "its child runs (answer from: child runs)." in to_text(old).replace("\n  ", " ")
