"""One record of a setting's answer, from a sweep's combination and from a ramp's setting, and its
one renderer: pure, no Ray, no MLflow."""
from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from stablesweep.analysis.answer import (
    AT_RISK,
    MAX_STABLE,
    MIN_FAILED,
    RAMP_MD_COLUMNS,
    RAMP_TEXT_COLUMNS,
    RAMP_WORDS,
    RULE_TEXT,
    SWEEP_WORDS,
    SettingAnswer,
    answers_markdown,
    answers_text,
    boundary_markdown,
    boundary_text,
    recommend,
    recommended_header,
    rule_line,
)
from stablesweep.analysis.boundary import fit_boundary
from stablesweep.analysis.region import add_boundaries, analyze, answer_of
from stablesweep.sweep.ramp import BRACKETED, Probe, Setting, boundary_runs
from stablesweep.vocab import SETTING_METRICS
from tests.analysis.tables import GROUPS, KEYS, trial

CLIP = {"training.max_grad_norm": 1.0}
# one setting's evidence: (lr, verdict, seed); seed 0 the bracket, 1 and 2 replicates
BRACKET = [(1e-3, "stable"), (1e-2, "stable"), (3e-2, "stalled"), (1e-1, "diverged")]
REPLICATES = [(1e-2, "stable", 1), (1e-2, "diverged", 2), (3e-2, "diverged", 1), (3e-2, "stable", 2)]
FLOPS = 1e9


def _sweep(replicates: bool):
    """The evidence as a sweep's trials (objective lowest at the largest stable lr) and replicates."""
    rows = [{**trial(i, lr, v, objective=1.0 - lr if v == "stable" else None, precision="fp32"),
             "train_flops": FLOPS} for i, (lr, v) in enumerate(BRACKET)]
    df = pd.DataFrame(rows)
    r = analyze(df, group_keys=["training.max_grad_norm"], param_keys=["training.lr", "training.max_grad_norm"],
                importance=False)
    if replicates:
        reps = pd.DataFrame([{**trial(10 + i, lr, v), "seed": sd, "train_flops": FLOPS}
                             for i, (lr, v, sd) in enumerate(REPLICATES)])
        add_boundaries(r, df, reps, k=2, seed=0)
    return r


def _ramp(replicates: bool):
    """The same evidence as a ramp's probes."""
    s = Setting("s00", dict(CLIP), [1e-3, 1e-2, 1e-1], status=BRACKETED)
    s.probes = [Probe(lr, v, steps=100, train_flops=FLOPS, objective=1.0 - lr if v == "stable" else float("nan"))
                for lr, v in BRACKET]
    if replicates:
        s.probes += [Probe(lr, v, steps=100, train_flops=FLOPS, phase="replicate", seed=sd) for lr, v, sd in REPLICATES]
    b = fit_boundary(boundary_runs(s, 0))[0].to_dict() if replicates else None
    return s, b


# the fields only one of the tools knows
ONE_TOOL = {"best_objective": None, "lr_sensitivity": None, "status": None, "probes": None, "compute_s": None,
            "recommend_note": None}  # the ramp's note says it sampled no lrs below the edge


@pytest.mark.parametrize("replicates", [False, True])
def test_a_combination_and_a_ramp_setting_with_the_same_evidence_give_the_same_answer(replicates):
    (g,) = _sweep(replicates).groups
    s, b = _ramp(replicates)
    swept, ramped = answer_of(g, "training.lr"), s.answer(0.5, b)
    assert swept.label == ramped.label == "clip=1.0"
    if not replicates:  # a sweep without replicates has no boundary; a ramp without them neither
        swept = dataclasses.replace(swept, train_flops=ramped.train_flops, replicate_flops=ramped.replicate_flops,
                                    single_seed=None, evidence=None, boundary_note=None)
    assert dataclasses.replace(swept, **ONE_TOOL) == dataclasses.replace(ramped, **ONE_TOOL)
    assert swept.rule == (AT_RISK if replicates else MIN_FAILED) and swept.min_failed_lr == 3e-2
    # ... so they render the same boundary lines, the same table rows and the same rule line
    assert boundary_text([swept], RAMP_WORDS) == boundary_text([ramped], RAMP_WORDS)
    assert boundary_markdown([swept], SWEEP_WORDS, seeds=2, budget=100) == \
        boundary_markdown([ramped], SWEEP_WORDS, seeds=2, budget=100)
    for short in (False, True):
        assert rule_line(swept, 2, short=short) == rule_line(
            dataclasses.replace(ramped, recommend_note=swept.recommend_note), 2, short=short)


def test_the_header_names_the_rule_that_set_the_largest_safe_lr():
    s, b = _ramp(True)
    at_risk = s.answer(0.5, b)
    assert at_risk.rule == AT_RISK and at_risk.edge_lr == b["lr_at_risk"]
    assert at_risk.largest_safe_lr == pytest.approx(0.5 * b["lr_at_risk"])
    line = rule_line(at_risk, 2, short=True)
    assert f"0.5 x {b['lr_at_risk']:.3g}, the lr at 5% risk of failing, fitted over 8 runs with 2 seed(s)" \
        in line and RULE_TEXT[MIN_FAILED] not in line
    plain = s.answer(0.5)
    assert plain.rule == MIN_FAILED and plain.edge_lr == 3e-2 and plain.largest_safe_lr == pytest.approx(0.015)
    assert plain.recommended_lr == 1e-2 and plain.recommended_objective == pytest.approx(0.99)
    assert rule_line(plain, short=True).startswith(
        f"lr = 0.01: the best objective (0.99 at the budget) among the lrs measured safe (stable, and at most the "
        f"largest safe lr 0.015 = 0.5 x 0.03, {RULE_TEXT[MIN_FAILED]})")
    never = Setting("s01", {}, [1e-3, 1e-2], probes=[Probe(1e-3, "stable", steps=100, objective=0.5)])
    top = never.answer(0.5)
    assert top.rule == MAX_STABLE and top.label == "config" and top.recommended_lr == 1e-3  # a measured lr
    assert "nothing failed" in rule_line(top)
    nothing = Setting("s02", {}, [1e-3], probes=[Probe(1e-3, "diverged")]).answer(0.5)
    assert (nothing.recommended_lr, nothing.rule, nothing.edge_lr) == (None, None, None)
    assert recommended_header(["a", "b"]) == "# a\n# b\n"


def test_recommend_picks_the_best_objective_among_measured_safe_lrs():
    runs = [(1e-3, 0.9), (1e-2, 0.4), (5e-2, 0.2), (2e-1, 0.1)]
    rec = recommend(runs, max_stable=2e-1, min_failed=3e-1, safety=0.5)
    assert (rec.lr, rec.rule, rec.largest_safe_lr, rec.objective) == (5e-2, MIN_FAILED, 0.15, 0.2)
    rec = recommend(runs, max_stable=2e-1, min_failed=3e-1, at_risk=1e-2, safety=0.5)
    assert (rec.lr, rec.rule, rec.largest_safe_lr) == (1e-3, AT_RISK, 5e-3) and "one measured safe lr" in rec.note
    rec = recommend(runs, max_stable=2e-1, min_failed=None)  # nothing failed: the largest stable lr caps it
    assert (rec.lr, rec.rule, rec.largest_safe_lr) == (2e-1, MAX_STABLE, 2e-1)
    rec = recommend([(1e-3, None), (1e-2, None)], max_stable=1e-2, min_failed=1.0)
    assert rec.lr == 1e-2 and "cannot tell the best lr" in rec.note
    rec = recommend([(2e-5, 1.0)], max_stable=2e-5, min_failed=3e-5)  # never half of the one stable lr
    assert rec.lr is None and rec.largest_safe_lr == pytest.approx(1.5e-5)
    for lr, obj in runs:  # whatever the edges, the lr is one that ran
        for edge in (None, 1e-3, 1e-2, 1.0):
            got = recommend(runs, max_stable=2e-1, min_failed=edge).lr
            assert got is None or got in [x for x, _ in runs]


def test_the_setting_metrics_of_a_record_are_what_the_parent_run_logs():
    """(setting params, values by SETTING_METRICS): from a region's group as from a ramp's summary."""
    r = _sweep(True)
    s, b = _ramp(True)
    for answer, source in ((r.answers()[0], r.groups[0]), (s.answer(0.5, b), s.summary(0.5, b))):
        params, values = answer.setting_metrics(SETTING_METRICS)
        get = source.get if isinstance(source, dict) else (lambda k: getattr(source, k))
        assert params == CLIP and values == {n: get(n) for n in SETTING_METRICS}
    params, values = s.answer(0.5).setting_metrics(SETTING_METRICS)
    assert values["lr_at_5pct_risk"] is None and values["recommended_lr"] == 1e-2
    assert "largest_safe_lr" in SETTING_METRICS and values["largest_safe_lr"] == s.answer(0.5).largest_safe_lr


def test_summary_is_the_answer_in_ramp_json_words():
    s, b = _ramp(True)
    a, x = s.answer(0.5, b), s.summary(0.5, b)
    for k in ("min_stable_lr", "max_stable_lr", "min_diverged_lr", "min_failed_lr", "stalled_below",
              "stalled_above", "recommended_lr", "probes", "compute_s", "train_flops", "budget_steps", "status",
              "lr_at_5pct_risk", "lr_at_5pct_risk_interval", "lr_at_50pct", "evidence", "replicates",
              "replicate_flops"):
        assert x[k] == getattr(a, k), k
    assert "lr_at_5pct_risk" not in s.summary(0.5)  # no boundary measured: ramp.json says nothing of it


def test_tables_by_column_set():
    s, _ = _ramp(False)
    a = s.answer(0.5)
    md = answers_markdown([a], RAMP_MD_COLUMNS)
    assert md[0] == ("| setting | status | min stable lr | max stable lr | min diverged lr | min failed lr | stalled | "
                     "largest safe lr | recommended lr | recommended objective | probes | compute s | train FLOPs |")
    assert md[1] == "|" + "---|" * 13
    assert md[2] == "| clip=1.0 | bracketed | 0.001 | 0.01 | 0.1 | 0.03 | above 0.03 | 0.015 | 0.01 | 0.99 | 4 | 0.0 | 4e+09 |"
    text = answers_text([a], RAMP_TEXT_COLUMNS).splitlines()
    assert text[0].split()[:3] == ["setting", "status", "max"] and text[1].split()[:3] == ["clip=1.0", "bracketed", "0.01"]
    r = analyze(pd.DataFrame([trial(0, 1e-3, "stable", 0.5), trial(1, 1e-2, "diverged")]), group_keys=GROUPS,
                param_keys=KEYS, importance=False)
    md = answers_markdown(r.answers(), r.columns())
    assert md[0].startswith("| clip | precision | masking | stable | stalled |")
    assert md[2] == ("| 1.0 | fp32 | slice | 1 | 0 | 1 | 0 | 0 | 1.00e-03 | 1.00e-03 | 1.00e-02 | 0 | 0 | 0.5 | "
                     "1.00e-03 | 5.00e-03 | 1.00e-03 | 1.25 |")


def test_a_record_is_plain_data():
    a = SettingAnswer(params={}, label="all", budget_steps=None, counts={})
    assert a.rule is None and a.edge_lr is None and dataclasses.asdict(a)["stalled_below"] == []


def test_counts_read_as_counts_without_a_categorical_axis():
    """Every cell from the record, typed: no axis to group by makes no float of a count."""
    r = analyze(pd.DataFrame([trial(0, 1e-3, "stable", 0.5), trial(1, 1e-2, "diverged")]), group_keys=[],
                param_keys=["training.lr"], importance=False)
    (row,) = [ln for ln in r.to_markdown().splitlines() if ln.startswith("| 1 ")]
    assert row.startswith("| 1 | 0 | 1 | 0 | 0 | 1.00e-03 |")
    assert r.to_text().splitlines()[1].split()[:5] == ["1", "0", "1", "0", "0"]
