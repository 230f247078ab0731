"""Answers by config on hand-built sweeps and ramps: each run's per-setting answers (as its parent
run holds them) side by side, per config file, and where they disagree (no MLflow, no Ray)."""
from __future__ import annotations

import json
import re

from stablesweep.analysis.answers_by_config import parse_setting_metrics
from stablesweep.analysis.comparison import compare
from stablesweep.analysis.render import to_csv, to_html, to_markdown, to_text
from tests.analysis.tables import BASE, sweep

CONFIG = "/data/configs/demo.yaml"


def run(name, kind, answers, *, config=CONFIG, budget=100):
    """A sweep or ramp with a single stable trial and `answers` (setting slug -> numbers) on its parent."""
    return sweep(name, [(1e-3, "stable")], BASE, ["training.lr"], [], kind=kind,
                 params={"config_file": config, "budget_steps": budget}, setting_answers=answers)


SWEEP = {"all": {"max_stable_lr": 0.01, "min_failed_lr": 1.0, "largest_safe_lr": 0.5, "recommended_lr": 0.01}}
RAMP = {"all": {"max_stable_lr": 0.1, "min_failed_lr": 1.0, "largest_safe_lr": 0.5, "recommended_lr": 0.1,
                "lr_at_5pct_risk": 0.3}}


def test_the_parents_metrics_are_read_per_setting():
    got = parse_setting_metrics({"max_stable_lr.slice_clip-1.0": 0.1, "min_failed_lr.slice_clip-1.0": 1.0,
                                 "lr_at_5pct_risk.all": 0.3, "lr_at_50pct.all": float("nan"),
                                 "best_objective": 0.2, "trials_stable": 3.0})
    assert got == {"slice_clip-1.0": {"max_stable_lr": 0.1, "min_failed_lr": 1.0}, "all": {"lr_at_5pct_risk": 0.3}}


def test_a_sweep_and_a_ramp_of_one_config_side_by_side():
    s, r = run("s", "sweep", SWEEP), run("r", "ramp", RAMP)
    other = run("o", "sweep", SWEEP, config="/data/configs/other.yaml")  # alone on its config: no section
    cmp = compare([s, other, r])
    (ca,) = cmp.by_config
    assert ca.config_file == CONFIG and [x.label for x in ca.runs] == ["s", "r"] and ca.settings == ["all"]
    assert ca.flags == [] and len(ca.agreements) == 1 and ca.agreements[0].startswith("s and r agree at 100 steps")
    assert [c for c, _ in ca.runs[0].columns()] == ["max_stable_lr", "min_failed_lr", "largest_safe_lr",
                                                     "recommended_lr"]
    assert ca.runs[1].columns()[-1] == ("lr_at_5pct_risk", "5% risk")  # only where measured

    text = to_text(cmp)
    section = text[text.index("Answers by config"):text.index("Configurations:")]
    lines = section.splitlines()
    heading = next(ln for ln in lines if "s (sweep)" in ln)
    assert heading.index("s (sweep)") < heading.index("r (ramp)")
    head = next(ln for ln in lines if ln.strip().startswith("setting"))
    assert head.split() == ["setting", "budget", "max", "stable", "min", "failed", "largest", "safe", "recommended",
                            "budget", "max", "stable", "min", "failed", "largest", "safe", "recommended", "5%", "risk"]
    row = next(ln for ln in lines if ln.strip().startswith("all "))
    assert row.split() == ["all", "100", "1.00e-02", "1.00e+00", "5.00e-01", "1.00e-02",
                           "100", "1.00e-01", "1.00e+00", "5.00e-01", "1.00e-01", "3.00e-01"]
    # the run group's heading starts over its budget column
    assert heading.index("r (ramp)") == head.index("budget", head.index("recommended"))
    assert "agree: s and r agree" in section and "o (sweep)" not in section

    md = to_markdown(cmp)
    assert f"### `{CONFIG}`" in md
    assert "| setting | s (sweep): budget | s (sweep): max stable |" in md and "r (ramp): 5% risk |" in md
    assert "| all | 100 | 1.00e-02 | 1.00e+00 | 5.00e-01 | 1.00e-02 | 100 | 1.00e-01 |" in md
    page = to_html(cmp)
    assert '<th colspan="5">s (sweep)</th><th colspan="6">r (ramp)</th>' in page
    assert re.search(r"<td>all</td><td>100</td><td>1\.00e-02</td>", page)
    doc = cmp.to_dict()["answers_by_config"]
    assert json.loads(json.dumps(doc))[0]["answers"][1] == {
        "config_file": CONFIG, "setting": "all", "run": "r", "kind": "ramp", "run_id": "r-parent", "budget_steps": 100,
        "min_stable_lr": None, "max_stable_lr": 0.1, "min_diverged_lr": None, "min_failed_lr": 1.0,
        "recommended_lr": 0.1, "largest_safe_lr": 0.5, "lr_at_5pct_risk": 0.3, "lr_at_50pct": None}
    assert "Answers by config" not in to_csv(cmp)  # stdout's CSV stays the configs table


def test_a_recommendation_above_the_others_failed_lr_is_a_disagreement():
    ramp = {"all": {**RAMP["all"], "recommended_lr": 0.5, "max_stable_lr": 0.5, "min_failed_lr": 5.0}}
    sw = {"all": {**SWEEP["all"], "min_failed_lr": 0.3}}
    cmp = compare([run("s", "sweep", sw), run("r", "ramp", ramp)])
    (ca,) = cmp.by_config
    assert ca.agreements == []
    assert ca.flags == ["all: r and s disagree: r recommends lr 5.00e-01, above s's smallest failed lr 3.00e-01 "
                        "(both at 100 steps)"]
    assert "differs: all: r and s disagree" in to_text(cmp)
    assert "- **differs**: all: r and s disagree" in to_markdown(cmp)


def test_a_stable_lr_above_the_others_failed_lr_is_a_noisy_boundary():
    ramp = {"all": {**RAMP["all"], "max_stable_lr": 1.0, "min_failed_lr": 2.0, "recommended_lr": 0.1}}
    (ca,) = compare([run("s", "sweep", SWEEP), run("r", "ramp", ramp)]).by_config
    assert len(ca.flags) == 1 and ca.flags[0].startswith("all: r found lr 1.00e+00 stable, at or above s's smallest "
                                                          "failed lr 1.00e+00 (both at 100 steps): the boundary is noisy")


def test_a_failure_inside_the_others_bracket_narrows_it():
    """The sweep's coarse bracket (0.01, 1000] calls lr 500 safe; the ramp saw 0.05 fail: not a
    contradiction, but the sweep's largest safe lr does not hold."""
    sw = {"all": {"max_stable_lr": 0.01, "min_failed_lr": 1000.0, "largest_safe_lr": 500.0, "recommended_lr": 0.01}}
    ramp = {"all": {"max_stable_lr": 0.0292, "min_failed_lr": 0.05, "largest_safe_lr": 0.025, "recommended_lr": 0.01}}
    (ca,) = compare([run("s", "sweep", sw), run("r", "ramp", ramp)]).by_config
    assert ca.agreements == [] and ca.flags == [
        "all: s's largest safe lr 5.00e+02 is above r's smallest failed lr 5.00e-02 (both at 100 steps): r saw lr "
        "5.00e-02 fail inside s's bracket (1.00e-02, 1.00e+03]; the narrower bracket holds: the edge is at most 5.00e-02"]


def test_different_budgets_are_said_and_not_judged_against_each_other():
    ramp = {"all": {**RAMP["all"], "recommended_lr": 5.0, "min_failed_lr": 10.0},
            "masking-neg_inf": {"max_stable_lr": 1e-3}}
    (ca,) = compare([run("s", "sweep", SWEEP, budget=200), run("r", "ramp", ramp, budget=20)]).by_config
    assert ca.settings == ["all", "masking-neg_inf"] and ca.agreements == []
    assert ca.flags[0].startswith("the answers hold for different budgets (s 200 steps, r 20 steps)")
    assert ca.flags[1:] == ["masking-neg_inf: answered only by r"]  # 5.0 > 1.0 is not a disagreement across budgets
    assert ca.records()[-1]["setting"] == "masking-neg_inf" and len(ca.records()) == 3


def test_two_sweeps_of_one_config_and_none_of_unknown_config():
    cmp = compare([run("a", "sweep", SWEEP), run("b", "sweep", SWEEP)])
    assert [x.label for x in cmp.by_config[0].runs] == ["a", "b"]
    cmp = compare([run("a", "sweep", SWEEP, config=None), run("b", "sweep", SWEEP, config=None)])
    assert cmp.by_config == [] and "Answers by config" not in to_text(cmp) + to_markdown(cmp) + to_html(cmp)
    cmp = compare([run("a", "sweep", SWEEP), run("b", "sweep", {})])  # b logged no per-setting answers
    assert cmp.by_config == []
