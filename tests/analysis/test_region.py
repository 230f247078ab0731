"""The stable region on hand-built trial tables: pure pandas, no Ray, no MLflow."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from stablesweep.analysis.region import (
    add_boundaries,
    analyze,
    lr_margins,
    lr_sensitivity,
    recommended_files,
    write_region,
)
from stablesweep.config import load_config
from tests.analysis.tables import GROUPS, KEYS, trial
from tests.conftest import DEMO


@pytest.fixture
def table():
    rows = [
        # fp32 / slice / clip 1.0: stable up to 1e-3, diverged from 1e-2; a pruned trial at 5e-3
        trial(0, 1e-5, "stable", 1.20), trial(1, 1e-4, "stable", 0.80), trial(2, 1e-3, "stable", 0.60),
        trial(3, 5e-3, "pruned", 2.00), trial(4, 1e-2, "diverged"), trial(5, 1e-1, "diverged"),
        # bf16 / neg_inf / no clip: diverges earlier
        trial(6, 1e-5, "stable", 1.30, clip=None, precision="bf16", masking="neg_inf"),
        trial(7, 1e-4, "diverged", clip=None, precision="bf16", masking="neg_inf"),
        trial(8, 1e-3, "diverged", clip=None, precision="bf16", masking="neg_inf"),
        trial(9, 3e-4, "error", objective=np.nan, initial=np.nan, clip=None, precision="bf16", masking="neg_inf"),
    ]
    return pd.DataFrame(rows)


def test_bracket_per_combination_ignores_pruned(table):
    r = analyze(table, group_keys=GROUPS, param_keys=KEYS, importance=False)
    assert r.counts == {"stable": 4, "stalled": 0, "diverged": 4, "pruned": 1, "error": 1}
    assert r.budget_steps == 100
    groups = {(g.key["training.precision"], g.key["loss.masking"]): g for g in r.groups}
    fp32 = groups[("fp32", "slice")]
    assert fp32.key["training.max_grad_norm"] == 1.0
    assert fp32.counts == {"stable": 3, "stalled": 0, "diverged": 2, "pruned": 1, "error": 0}
    assert (fp32.max_stable_lr, fp32.min_diverged_lr, fp32.bracket_ok) == (1e-3, 1e-2, True)  # not 5e-3
    assert fp32.best_objective == 0.60 and fp32.best_params["training.lr"] == 1e-3
    assert fp32.recommended_lr == 1e-3  # already below half the smallest diverged lr
    bf16 = groups[("bf16", "neg_inf")]
    assert bf16.key["training.max_grad_norm"] is None  # a null choice is its own group
    assert (bf16.max_stable_lr, bf16.min_diverged_lr) == (1e-5, 1e-4)
    assert bf16.counts["error"] == 1
    assert r.best["trial_id"] == "t02"


def test_lr_margins_against_each_groups_smallest_diverged_lr(table):
    r = analyze(table, group_keys=GROUPS, param_keys=KEYS, importance=False)
    got = lr_margins(table, r)
    assert list(got.index) == list(table.index)
    # fp32: lr / 1e-2; bf16 (a null clip is its own group): lr / 1e-4
    assert got.tolist() == pytest.approx([1e-3, 1e-2, 0.1, 0.5, 1.0, 10.0, 0.1, 1.0, 10.0, 3.0])
    alone = table[table["trial_id"].isin(["t00", "t01"])]  # nothing diverged: unknown, not a number
    assert lr_margins(alone, analyze(alone, group_keys=GROUPS, param_keys=KEYS, importance=False)).tolist() == \
        [None, None]


def test_lr_sensitivity_follows_wortsman():
    df = pd.DataFrame([trial(0, 1e-4, "stable", 1.0), trial(1, 1e-3, "stable", 2.0),
                       trial(2, 1e-2, "stable", 4.0, initial=3.0),  # worse than its start: counts as 3.0
                       trial(3, 1e-1, "diverged", initial=3.0), trial(4, 1.0, "pruned", 0.5)])
    sens, n = lr_sensitivity(df)
    assert n == 4  # the pruned trial has no final loss
    assert sens == pytest.approx((1.0 + 2.0 + 3.0 + 3.0) / 4 - 1.0)
    assert lr_sensitivity(df.iloc[:1]) == (None, 1)


def _header(r, tmp_path):
    files = recommended_files(r, load_config(DEMO).to_dict(), tmp_path, source=str(DEMO), base_dir=str(DEMO.parent))
    return files, files["recommended"].read_text() if "recommended" in files else None


def test_the_recommended_lr_is_the_best_measured_safe_lr_not_the_edge(table, tmp_path):
    close = table.copy()
    close.loc[close["trial_id"] == "t04", "training.lr"] = 1.5e-3  # diverged just above the best stable lr
    r = analyze(close, group_keys=GROUPS, param_keys=KEYS, importance=False)
    fp32 = next(g for g in r.groups if g.key["training.precision"] == "fp32")
    # largest safe lr 0.5 x 1.5e-3: 1e-3 (the best objective) is above it; 1e-4 is the best below it
    assert fp32.largest_safe_lr == pytest.approx(7.5e-4)
    assert fp32.recommended_lr == 1e-4 and fp32.recommended_objective == 0.80
    assert r.recommended["training.lr"] == 1e-4  # a measured lr, never 0.5 x one
    files, header = _header(r, tmp_path)
    cfg = yaml.safe_load(files["recommended"].read_text())
    assert cfg["training"]["lr"] == pytest.approx(1e-4)
    assert cfg["loss"]["masking"] == "slice" and cfg["training"]["precision"] == "fp32"
    assert "largest safe lr 0.00075 = 0.5 x 0.0015" in header and "budget: 100 steps" in header
    assert "# The demo" in files["recommended"].read_text()  # the user's own file, its comments kept


def test_no_divergence_in_the_best_combination_recommends_its_best_stable_lr(tmp_path):
    df = pd.DataFrame([trial(0, 1e-4, "stable", 1.0), trial(1, 1e-3, "stable", 0.9)])
    r = analyze(df, group_keys=GROUPS, param_keys=KEYS, importance=False)
    assert r.recommended["training.lr"] == 1e-3
    _, header = _header(r, tmp_path)
    assert "nothing failed" in header and "largest safe lr 0.001" in header


def test_one_stable_lr_under_a_close_failure_recommends_nothing_it_never_ran():
    df = pd.DataFrame([trial(0, 2e-5, "stable", 1.0), trial(1, 3e-5, "diverged"), trial(2, 1e-3, "diverged")])
    r = analyze(df, group_keys=GROUPS, param_keys=KEYS, importance=False)
    g = r.groups[0]
    assert g.largest_safe_lr == pytest.approx(1.5e-5) and g.recommended_lr is None and r.recommended is None
    assert "no measured lr is at or below the largest safe lr" in g.recommend_note


def test_a_value_that_fails_at_every_lr_is_the_cause_not_an_lr_boundary():
    rows = [trial(i, lr, "stable", 1.0 - i / 10) for i, lr in enumerate([1e-4, 1e-3])]
    rows += [trial(2 + i, lr, "diverged", precision="bf16", masking="neg_inf", clip=None)
             for i, lr in enumerate([1e-5, 1e-4, 1e-3, 1e-2])]
    r = analyze(pd.DataFrame(rows), group_keys=GROUPS, param_keys=KEYS, importance=True)
    bad = next(g for g in r.groups if g.key["loss.masking"] == "neg_inf")
    assert bad.min_diverged_lr is None and bad.min_failed_lr is None
    assert any("masking=neg_inf fails at every lr tried" in c and "cause masking" in c for c in r.causes)
    assert "cause masking" in bad.cause and "cause masking" in r.to_markdown()
    assert "lr" not in r.importance or r.importance_method.endswith("cause masking") or "cause" in r.importance_method


def test_the_combinations_of_the_space_no_trial_ran_are_named(tmp_path):
    """The space: masking {slice, neg_inf} x clip {none, 1.0}; the trials never ran (slice, none)
    nor (neg_inf, 1.0): the region names both in its file, its markdown and its terminal text."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    rows = [trial(i, lr, "stable") for i, lr in enumerate([1e-4, 1e-3])]
    rows += [trial(2 + i, lr, v, masking="neg_inf", clip=None) for i, (lr, v) in enumerate([(1e-4, "stable"),
                                                                                          (1e-2, "diverged")])]
    dists = {"training.lr": FloatDistribution(1e-5, 1.0, log=True),
             "training.max_grad_norm": CategoricalDistribution([None, 1.0]),
             "loss.masking": CategoricalDistribution(["slice", "neg_inf"])}
    keys = ["training.lr", "training.max_grad_norm", "loss.masking"]
    r = analyze(pd.DataFrame(rows), group_keys=keys[1:], param_keys=keys, distributions=dists, importance=False)
    assert r.uncovered == ["clip=none masking=slice", "clip=1.0 masking=neg_inf"]
    assert "not covered: combinations of the space no trial ran (nothing is known of them): clip=none " \
           "masking=slice, clip=1.0 masking=neg_inf" in r.to_text().splitlines()
    assert "`clip=none masking=slice`, `clip=1.0 masking=neg_inf`" in r.to_markdown()
    files = write_region(r, pd.DataFrame(rows), tmp_path, figures=False)
    assert json.loads(files["json"].read_text())["uncovered"] == r.uncovered
    full = analyze(pd.DataFrame(rows + [trial(9, 1e-3, "stable", clip=None), trial(10, 1e-3, "stable",
                                                                                   masking="neg_inf")]),
                   group_keys=keys[1:], param_keys=keys, distributions=dists, importance=False)
    assert full.uncovered == [] and "not covered" not in full.to_text() and "no trial ran" not in full.to_markdown()


def test_nothing_stable_means_nothing_recommended(tmp_path):
    df = pd.DataFrame([trial(0, 1e-1, "diverged"), trial(1, 1.0, "diverged")])
    r = analyze(df, group_keys=GROUPS, param_keys=KEYS)
    assert r.best is None and r.recommended is None
    assert _header(r, tmp_path) == ({}, None)
    assert r.importance == {}  # one class only: nothing to explain


def test_divergence_importance_finds_the_lr():
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        lr = float(10 ** rng.uniform(-5, -1))
        clip = [None, 1.0][i % 2]
        masking = ["slice", "neg_inf"][(i // 2) % 2]
        rows.append(trial(i, lr, "diverged" if lr > 1e-3 else "stable", clip=clip, masking=masking))
    r = analyze(pd.DataFrame(rows), group_keys=GROUPS, param_keys=KEYS)
    assert r.importance_method
    assert max(r.importance, key=r.importance.get) == "training.lr"
    assert r.importance["training.lr"] > 0.8
    rates = r.divergence_rates["loss.masking"]
    assert set(rates) == {"slice", "neg_inf"}


def test_divergence_importance_is_the_same_whatever_order_the_trials_finished_in():
    rows = [trial(i, lr, "diverged" if lr > 0.5 else "stable", clip=clip)
            for i, (lr, clip) in enumerate([(0.01, None), (1.0, None), (1000.0, None),
                                            (0.01, 1.0), (1.0, 1.0), (1000.0, 1.0)])]
    first = analyze(pd.DataFrame(rows), group_keys=GROUPS, param_keys=KEYS).importance
    assert first
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(rows))
        again = analyze(pd.DataFrame([rows[i] for i in order]), group_keys=GROUPS, param_keys=KEYS).importance
        assert again == first


def test_inferred_groups_and_params():
    df = pd.DataFrame([trial(0, 1e-4, "stable"), trial(1, 1e-2, "diverged"),
                       trial(2, 1e-3, "stable", masking="neg_inf")])
    r = analyze(df, importance=False)
    assert "training.lr" in r.param_keys and "training.lr" not in r.group_keys
    assert set(r.group_keys) == set(GROUPS)


def test_files(table, tmp_path):
    r = analyze(table, group_keys=GROUPS, param_keys=KEYS)
    files = write_region(r, table, tmp_path, base=load_config(DEMO).to_dict(), title="Region of test",
                         extra={"sweep": "test"})
    data = json.loads(files["json"].read_text())
    assert data["kind"] == "sweep" and data["sweep"] == "test" and data["budget_steps"] == 100
    assert len(data["groups"]) == 2 and {"key", "max_stable_lr", "min_diverged_lr", "recommended_lr", "budget_steps",
                                         "label"} <= set(data["groups"][0])
    md = files["md"].read_text()
    assert md.startswith("# Region of test") and "**100 steps**" in md and "| clip | precision | masking |" in md
    assert pd.read_csv(files["trials"]).shape[0] == len(table)
    for key in ("figure_region", "figure_objective"):
        assert files[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = files["recommended"].read_text()
    assert text.startswith("# recommended.yaml")
    assert yaml.safe_load(text)["training"]["lr"] <= 0.5 * 1e-2
    load_config(files["recommended"])
    assert r.to_text().splitlines()[0].split()[:3] == ["clip", "precision", "masking"]


def test_empty_table():
    df = pd.DataFrame(columns=["trial_id", "training.lr", "verdict", "objective", "initial_loss", "steps"])
    r = analyze(df, param_keys=["training.lr"])
    assert r.counts == {"stable": 0, "stalled": 0, "diverged": 0, "pruned": 0, "error": 0}
    assert r.best is None and r.recommended is None and r.budget_steps is None
    # no categorical axis: one group of all (no) trials, its row all zeros and dashes
    (g,) = r.groups
    assert g.label == "all" and sum(g.counts.values()) == 0 and g.max_stable_lr is None
    assert r.to_text().splitlines()[1].split() == ["0"] * 5 + ["-"] * 3 + ["0", "0"] + ["-"] * 5
    # with a categorical axis: no group at all
    df["loss.masking"] = pd.Series(dtype=object)
    r = analyze(df, group_keys=["loss.masking"], param_keys=["training.lr", "loss.masking"])
    assert r.groups == [] and r.to_text() == "(no trials)"


def test_stalls_are_placed_on_their_side_of_the_band_and_never_recommended(tmp_path):
    """Stable from 1e-4 to 1e-3; a stall at 1e-6 (too small), one at 5e-3 (the edge), a diverged
    trial at 1e-1. The stall at 1e-6 has the lowest objective of all: it still is not the best."""
    df = pd.DataFrame([trial(0, 1e-6, "stalled", 0.10), trial(1, 1e-4, "stable", 0.80),
                       trial(2, 1e-3, "stable", 0.60), trial(3, 5e-3, "stalled", 2.9),
                       trial(4, 1e-1, "diverged")])
    r = analyze(df, group_keys=GROUPS, param_keys=KEYS, importance=False)
    (g,) = r.groups
    assert (g.min_stable_lr, g.max_stable_lr, g.min_diverged_lr) == (1e-4, 1e-3, 1e-1)
    assert (g.stalled_below, g.stalled_above, g.stalled_inside) == ([1e-6], [5e-3], [])
    assert g.counts["stalled"] == 2 and r.counts["stalled"] == 2
    assert r.best["trial_id"] == "t02"
    # the edge is the stall above the band (5e-3), not the divergence at 1e-1
    assert g.min_failed_lr == 5e-3 and r.recommended["training.lr"] == pytest.approx(1e-3)
    df.loc[df["trial_id"] == "t02", "training.lr"] = 4e-3
    r = analyze(df, group_keys=GROUPS, param_keys=KEYS, importance=False)
    assert r.recommended["training.lr"] == pytest.approx(1e-4)  # 4e-3 is above the largest safe lr 2.5e-3
    files = write_region(r, df, tmp_path, base=load_config(DEMO).to_dict())
    data = json.loads(files["json"].read_text())["groups"][0]
    assert data["stalled_below"] == [1e-6] and data["stalled_above"] == [5e-3] and data["min_stable_lr"] == 1e-4
    md = files["md"].read_text()
    assert "stalled below" in md and "stalled 2" in md
    assert "stalled above the stable band" in files["recommended"].read_text()


def test_only_stalls_mean_nothing_recommended():
    df = pd.DataFrame([trial(0, 1e-6, "stalled", 2.9), trial(1, 1e-5, "stalled", 2.8)])
    r = analyze(df, group_keys=GROUPS, param_keys=KEYS, importance=False)
    assert r.best is None and r.recommended is None
    assert r.groups[0].stalled_inside == [1e-6, 1e-5]  # no band: the side is unknown


def test_replicates_give_each_combination_its_boundary_and_the_5pct_risk_lr_is_the_edge(table):
    r = analyze(table, group_keys=GROUPS, param_keys=KEYS, importance=False)
    assert r.replicates == 0 and "single-seed estimate" in r.to_markdown()
    # fp32: seeds 1, 2 in its bracket 1e-3..1e-2; one fails at 1e-3: the 5%-risk edge falls below it
    reps = pd.DataFrame([{**trial(20 + i, lr, v), "seed": sd, "train_flops": 1e9} for i, (lr, v, sd) in enumerate(
        [(1e-3, "stable", 1), (1e-3, "diverged", 2), (3.16e-3, "stable", 1), (3.16e-3, "diverged", 2),
         (1e-2, "diverged", 1), (1e-2, "diverged", 2)])])
    table["train_flops"] = 2e9
    fits = add_boundaries(r, table, reps, k=3, seed=0)
    groups = {g.key["training.precision"]: g for g in r.groups}
    fp32, bf16 = groups["fp32"], groups["bf16"]
    assert len(fits) == 2 and fits[0][0].lr_at_risk == r.groups[0].lr_at_5pct_risk
    assert fp32.replicates == 6 and fp32.replicate_flops == 6e9 and fp32.train_flops == 12e9
    assert {e["lr"]: (e["failures"], e["runs"]) for e in fp32.evidence}[1e-3] == (1, 3)
    assert fp32.lr_at_5pct_risk < 1e-3 < fp32.lr_at_50pct < 1e-2
    lo, hi = fp32.lr_at_5pct_risk_interval
    assert lo <= fp32.lr_at_5pct_risk <= hi and not fp32.single_seed
    assert fp32.largest_safe_lr == pytest.approx(0.5 * fp32.lr_at_5pct_risk)  # the edge: the 5%-risk lr
    assert fp32.recommended_lr is None or fp32.recommended_lr <= fp32.largest_safe_lr
    # bf16 had no replicates: its one seed an lr is said to be so
    assert bf16.replicates == 0 and bf16.single_seed and "single-seed" in bf16.boundary_note
    md = r.to_markdown()
    assert "## The boundary as a probability" in md and "single-seed estimate: one run an lr" in md
    assert "the lr at 5% risk of failing" in fp32_rule(r)
    saved = {g["key"]["training.precision"]: g for g in json.loads(json.dumps(r.to_dict()))["groups"]}
    assert saved["fp32"]["lr_at_50pct"] == fp32.lr_at_50pct and saved["fp32"]["replicate_flops"] == 6e9


def fp32_rule(r):
    from stablesweep.analysis.answer import rule_line

    return rule_line(next(a for a in r.answers() if a.params["training.precision"] == "fp32"), r.replicates)
