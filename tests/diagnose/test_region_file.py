"""The lr against a measured boundary: a sweep's stable_region.json or a ramp's ramp.json, and bad region files."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from stablesweep.diagnose import diagnose, read_region
from stablesweep.vocab import InputError

from .conftest import codes, find


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


def test_stalls_in_a_region_written_by_the_sweep_engine(healthy, tmp_path):
    """Stable 1e-4..1e-3, a stall above the band at 3e-3 (the edge), a divergence at 1e-1, a stall
    below the band at 1e-6: diagnose reads the edge and the too-small side."""
    import pandas as pd

    from stablesweep.analysis import region as region_mod

    keys = ["training.lr", "training.max_grad_norm", "training.precision", "loss.masking"]
    rows = [{"trial_id": f"t{i}", "training.lr": lr, "training.max_grad_norm": 1.0, "training.precision": "fp32",
             "loss.masking": "slice", "verdict": v, "objective": 1.0, "initial_loss": 3.0, "steps": 50,
             "budget_steps": 50}
            for i, (lr, v) in enumerate([(1e-6, "stalled"), (1e-4, "stable"), (1e-3, "stable"),
                                         (3e-3, "stalled"), (1e-1, "diverged")])]
    df = pd.DataFrame(rows)
    region = region_mod.analyze(df, group_keys=keys[1:], param_keys=keys, importance=False)
    path = region_mod.write_region(region, df, tmp_path / "sweep", figures=False)["json"]
    (s,) = read_region(path).settings
    assert (s.min_stable_lr, s.min_failed_lr, s.stalled_below) == (1e-4, 3e-3, [1e-6])
    above = find(diagnose(healthy, ["training.lr=5e-3"], region=path), "lr.above_boundary")  # below 1e-1
    assert "diverged or stalled above" in above.title and above.changes == {"training.lr": 1e-4}
    small = find(diagnose(healthy, ["training.lr=1e-6"], region=path), "lr.too_small")
    assert small.severity == "warning" and small.changes == {"training.lr": 1e-4}


def test_the_recommended_lr_is_the_best_training_safe_one_and_a_cause_is_no_boundary(healthy, tmp_path):
    """A region written by the sweep engine: slice trains best at 1e-4 of its safe lrs (the largest
    safe lr is 0.5 x 1e-2), so the fix is 1e-4, not the edge's margin; neg_inf fails at every lr
    tried, which diagnose reports as the cause, with no lr to change to."""
    import pandas as pd

    from stablesweep.analysis import region as region_mod

    keys = ["training.lr", "training.max_grad_norm", "training.precision", "loss.masking"]
    runs = [("slice", 1e-4, "stable", 0.5), ("slice", 1e-3, "stable", 0.8), ("slice", 1e-2, "diverged", 3.0),
            ("neg_inf", 1e-4, "diverged", 3.0), ("neg_inf", 1e-3, "diverged", 3.0)]
    df = pd.DataFrame([{"trial_id": f"t{i}", "training.lr": lr, "training.max_grad_norm": 1.0,
                        "training.precision": "fp32", "loss.masking": m, "verdict": v, "objective": o,
                        "initial_loss": 3.0, "steps": 50, "budget_steps": 50} for i, (m, lr, v, o) in enumerate(runs)])
    region = region_mod.analyze(df, group_keys=keys[1:], param_keys=keys, importance=False)
    path = region_mod.write_region(region, df, tmp_path / "sweep", figures=False)["json"]
    slice_, = [s for s in read_region(path).settings if s.key["loss.masking"] == "slice"]
    assert (slice_.recommended_lr, slice_.largest_safe_lr) == (1e-4, 5e-3)
    f = find(diagnose(healthy, ["training.lr=2e-2"], region=path), "lr.above_boundary")
    assert f.changes == {"training.lr": 1e-4} and "best-training lr measured safe, at most 0.005" in f.fix
    assert any("largest safe lr 5.0e-03" in e for e in f.evidence)
    g = find(diagnose(healthy, ["loss.masking=neg_inf", "training.lr=1e-5"], region=path), "lr.cause")
    assert g.severity == "error" and not g.changes
    assert any("masking=neg_inf fails at every lr tried" in e for e in g.evidence)
