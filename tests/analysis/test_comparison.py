"""The comparison on hand-built sweeps: plain tables in, a Comparison out (no MLflow, no Ray)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from stablesweep.analysis.comparison import SettingState, SweepData, compare
from stablesweep.vocab import InputError
from tests.analysis.tables import BASE, sweep, two_sweeps

AXES = ["training.lr", "loss.masking"]


def test_unswept_keys_come_from_each_config_and_verdict_changes_are_named():
    a, b = two_sweeps()
    cmp = compare([a, b])
    assert cmp.setting_keys == ["loss.masking", "training.max_grad_norm"]
    assert cmp.param_keys == ["training.lr", "loss.masking", "training.max_grad_norm"]
    (tr,) = cmp.transitions
    change = {c.label: c.change for c in tr.settings}
    assert change == {"masking=slice clip=1.0": "became unstable", "masking=neg_inf clip=1.0": "only in a",
                      "masking=slice clip=none": "only in b"}
    assert tr.config_diff == {"training.steps": (100, 200)}
    assert cmp.config_keys == ["training.steps"]
    assert tr.summary() == "a -> b: became unstable: masking=slice clip=1.0"
    rows = cmp.configs
    assert rows.loc[rows["sweep"] == "a", "training.max_grad_norm"].eq(1.0).all()  # filled from a's config
    assert rows.loc[rows["sweep"] == "b", "loss.masking"].eq("slice").all()  # filled from b's config
    a_neg = rows[(rows["sweep"] == "a") & (rows["loss.masking"] == "neg_inf") & (rows["training.lr"] == 1e-3)]
    assert a_neg["margin"].iloc[0] == pytest.approx(0.1)


def test_ranking_margin_and_what_differs_from_the_best():
    a, b = two_sweeps()
    cmp = compare([a, b])
    t = cmp.configs
    assert list(t["rank"]) == list(range(1, 8))
    assert list(t["verdict"]) == ["stable"] * 4 + ["diverged"] * 3  # stable first
    assert list(t["objective"][:4]) == sorted(t["objective"][:4])  # then by objective
    # margin: lr over the smallest diverged lr of the trial's setting in its own sweep
    a_div = t[(t["sweep"] == "a") & (t["verdict"] == "diverged")]
    assert a_div["margin"].tolist() == pytest.approx([1.0])
    # clip=1.0 fails at every lr b tried: that value is the cause, not an lr boundary, so no margin
    b_div = t[(t["sweep"] == "b") & (t["verdict"] == "diverged")]
    assert len(b_div) == 2 and b_div["margin"].isna().all()
    a_slice = t[(t["sweep"] == "a") & (t["loss.masking"] == "slice")]
    assert a_slice["margin"].isna().all()  # nothing diverged with slice in a: unknown
    best = t.iloc[0]
    assert best["differs_from_best"] == []
    for _, r in t.iterrows():
        assert set(r["differs_from_best"]) == {k for k in ("training.lr", "loss.masking", "training.max_grad_norm",
                                                           "training.steps") if str(r[k]) != str(best[k])}
    assert set(cmp.varying) == {"training.lr", "loss.masking", "training.max_grad_norm", "training.steps"}
    assert cmp.configs_csv()["differs_from_best"].tolist()[1:3] == ["loss.masking",
                                                                    "training.max_grad_norm;training.steps"]


def test_only_top_and_by_margin():
    a, b = two_sweeps()
    stable = compare([a, b], only="stable").configs
    assert len(stable) == 4 and (stable["verdict"] == "stable").all()
    assert compare([a, b], only="pruned").configs.empty
    top = compare([a, b], top=2).configs
    assert list(top["rank"]) == [1, 2]
    by_margin = compare([a, b], by="margin").configs
    # within a verdict, the smallest margin (most headroom) first, unknown margins last
    assert list(by_margin["margin"][:4].isna()) == [False, True, True, True]
    assert list(by_margin["margin"].iloc[4:].isna()) == [False, True, True]  # b's clip=1.0: a cause, no margin
    assert by_margin["margin"].iloc[4] == pytest.approx(1.0)
    first = compare([a, b], only="diverged", by="margin", top=1).configs
    assert len(first) == 1 and first["sweep"].iloc[0] == "a" and first["margin"].iloc[0] == pytest.approx(1.0)


@pytest.mark.parametrize("kw, message", [
    ({"by": "loss"}, "--by loss: expected one of objective, margin"),
    ({"only": "fine"}, "--only fine: expected one of stable, stalled, diverged, pruned, error"),
    ({"top": 0}, "--top 0: expected 1 or more"),
])
def test_bad_options_are_input_errors(kw, message):
    with pytest.raises(InputError) as e:
        compare(list(two_sweeps()), **kw)
    assert str(e.value) == message


def test_the_same_sweep_twice_is_an_input_error():
    a, _ = two_sweeps()
    with pytest.raises(InputError, match="^the same sweep twice: a, a$"):
        compare([a, a])


def test_setting_status_and_its_words():
    def state(stable=0, diverged=0, pruned=0, max_stable=None, min_diverged=None):
        return SettingState(sweep="s", counts={"stable": stable, "diverged": diverged, "pruned": pruned},
                            max_stable_lr=max_stable, min_diverged_lr=min_diverged, lr_range=None,
                            lr_sensitivity=None, best_objective=None)

    assert state(2, 1, max_stable=1e-3, min_diverged=1e-2).describe() == \
        "mixed (2 stable, 1 diverged), boundary in (1.00e-03, 1.00e-02]"
    assert state(2, max_stable=1e-3).describe() == "stable (2 stable), stable up to lr 1.00e-03"
    assert state(diverged=3, min_diverged=1e-4).describe() == "unstable (3 diverged), diverged from lr 1.00e-04"
    assert state(pruned=1).describe() == "unknown (1 pruned)"
    assert state().describe() == "unknown (no trials)"


def test_a_change_that_only_reflects_the_lr_range_says_so():
    old = sweep("old", [(1e-3, "stable", "slice"), (1e-2, "diverged", "slice"), (1e-3, "stable", "neg_inf"),
                        (1e-2, "stable", "neg_inf"), (1e-3, "pruned", "off")], BASE, AXES, ["loss.masking"])
    low = sweep("low", [(1e-4, "stable", "slice"), (1e-2, "diverged", "neg_inf"), (1e-1, "diverged", "neg_inf"),
                        (1e-3, "error", "off")], BASE, AXES, ["loss.masking"])
    (tr,) = compare([old, low]).transitions
    got = {c.label: (c.change, c.note) for c in tr.settings}
    assert got["masking=slice"][0] == "became stable"
    assert got["masking=slice"][1] == ("low tried lrs up to 1.00e-04 only, below 1.00e-02, the smallest that "
                                       "diverged in old: the lr range changed, not necessarily the stability")
    assert got["masking=neg_inf"] == ("became unstable", "")  # low tried 1e-2 too, where old was stable
    assert got["masking=off"] == ("same", "")  # pruned, then errored: unknown both times
    (back,) = compare([low, old]).transitions
    got = {c.label: (c.change, c.note) for c in back.settings}
    assert got["masking=slice"][0] == "less stable"  # stable -> mixed
    assert got["masking=slice"][1].startswith("old tried lrs from 1.00e-03 only, above 1.00e-04, the largest "
                                              "stable in low")
    assert got["masking=neg_inf"] == ("became stable", "")


def test_unfinished_trials_are_counted_and_ranked_last_but_judge_nothing():
    s = sweep("s", [(1e-3, "stable", "slice"), (1e-2, "unfinished", "slice"), (1e-1, "diverged", "slice")],
              BASE, AXES, ["loss.masking"])
    cmp = compare([s])
    assert cmp.sweeps[0].counts == {"stable": 1, "stalled": 0, "diverged": 1, "pruned": 0, "error": 0, "unfinished": 1}
    assert list(cmp.configs["verdict"]) == ["stable", "diverged", "unfinished"]
    (g,) = cmp.sweeps[0].region.groups
    assert sum(g.counts.values()) == 2
    assert cmp.transitions == []
    assert compare([s], only="unfinished").configs["verdict"].tolist() == ["unfinished"]


def test_per_sweep_and_per_setting_tables_and_the_json():
    a, b = two_sweeps()
    cmp = compare([a, b], source="sqlite:///x.db (experiment e)")
    sweeps = cmp.sweeps_table()
    assert sweeps[["sweep", "trials", "stable", "diverged", "budget_steps"]].values.tolist() == [
        ["a", 4, 3, 1, 100], ["b", 3, 1, 2, 200]]
    settings = cmp.settings_table()
    row = settings[(settings["sweep"] == "a") & (settings["loss.masking"] == "neg_inf")].iloc[0]
    assert (row["max_stable_lr"], row["min_diverged_lr"], row["stable"], row["diverged"]) == (1e-3, 1e-2, 1, 1)
    changes = cmp.changes_table()
    assert changes.loc[changes["change"] == "became unstable", "status_before"].tolist() == ["stable"]
    data = json.loads(json.dumps(cmp.to_dict()))  # plain JSON: no NaN, no numpy
    assert data["kind"] == "compare" and data["source"] == "sqlite:///x.db (experiment e)"
    assert [s["label"] for s in data["sweeps"]] == ["a", "b"] and data["sweeps"][0]["region"]["groups"]
    assert len(data["configs"]) == 7 and data["configs"][0]["margin"] is None
    assert data["transitions"][0]["config_diff"] == {"training.steps": [100, 200]}


def test_sweep_data_defaults():
    trials = pd.DataFrame([{"training.lr": 1e-3, "loss.masking": "slice", "eval_loss/x": 1.0, "verdict": "stable",
                            "budget_steps": 50}])
    d = SweepData(name="s", run_id="r", trials=trials)
    assert d.label == "s" and d.axes == ["training.lr", "loss.masking"] and d.lr_key == "training.lr"
    assert d.categorical_axes() == ["loss.masking"]  # inferred: lr excluded
    assert d.budget_steps == 50  # no param, no config: the trials' budget
    assert SweepData(name="s", run_id="r", trials=trials, config={"training.steps": 80}).budget_steps == 80
    assert SweepData(name="s", run_id="r", trials=trials, params={"budget_steps": 20},
                     config={"training.steps": 80}).budget_steps == 20
    no_lr = SweepData(name="s", run_id="r", trials=trials.drop(columns=["training.lr"]))
    assert no_lr.lr_key is None


def test_stalled_configs_are_never_listed_as_stable():
    """A stall with the lowest loss of all still ranks after every stable config, and a setting
    with only stalls is not `stable`."""
    s = sweep("s", [(1e-6, "stalled", "slice"), (1e-3, "stable", "slice"), (1e-6, "stalled", "neg_inf")],
              BASE, ["training.lr", "loss.masking"], ["loss.masking"])
    s.trials.loc[0, "objective"] = 0.01
    cmp = compare([s])
    assert list(cmp.configs["verdict"]) == ["stable", "stalled", "stalled"]
    assert SettingState("s", {"stalled": 1}, None, None, None, None, None).status == "unknown"
    assert compare([s], only="stable").configs["verdict"].tolist() == ["stable"]


def test_the_settings_table_says_each_parents_recorded_answer_and_falls_back_only_for_old_parents():
    # a replicate (seed 1) ran stable at 0.0316, where the sweep's own trial diverged: the parent's
    # answer (no replicate in the bracket) says max stable 0.02; recomputing over every child run
    # would say 0.0316
    rows = [(0.02, "stable", "slice"), (0.0316, "diverged", "slice"), (0.0316, "stable", "slice"),
            (1e3, "diverged", "slice")]
    recorded = {"slice": {"max_stable_lr": 0.02, "min_diverged_lr": 0.0316, "min_failed_lr": 0.0316,
                                  "largest_safe_lr": 0.0158, "recommended_lr": 0.01, "lr_at_5pct_risk": 0.0316}}
    new = sweep("new", rows, BASE, AXES, ["loss.masking"], setting_answers=recorded)
    new.trials["phase"] = [None, None, "replicate", None]
    new.trials["setting"] = "slice"
    cmp = compare([new])
    (row,) = cmp.settings_table().to_dict(orient="records")
    assert {k: row[k] for k in recorded["slice"] if k != "lr_at_5pct_risk"} == \
        {k: v for k, v in recorded["slice"].items() if k != "lr_at_5pct_risk"}
    assert (row["answer_from"], row["setting"], row["stable"], row["diverged"]) == ("parent", "slice", 1, 2)
    assert cmp.recomputed() == []
    # an old parent (no per-setting metrics, no setting tags): recomputed from the child runs, said so
    old = sweep("old", rows, BASE, AXES, ["loss.masking"])
    old.trials["phase"] = [None, None, "replicate", None]
    cmp = compare([old])
    (row,) = cmp.settings_table().to_dict(orient="records")
    assert (row["answer_from"], row["setting"]) == ("child runs", "slice")
    assert (row["max_stable_lr"], row["min_diverged_lr"], row["stable"]) == (0.02, 0.0316, 1)  # replicate left out
    assert cmp.recomputed() == ["old"]
    # a setting the parent records nothing for (nothing stable or diverged) is blank, not recomputed
    odd = sweep("odd", [(1e-3, "pruned", "neg_inf"), *rows], BASE, AXES, ["loss.masking"], setting_answers=recorded)
    got = {r["loss.masking"]: r for r in compare([odd]).settings_table().to_dict(orient="records")}
    assert got["neg_inf"]["answer_from"] == "parent" and pd.isna(got["neg_inf"]["max_stable_lr"])
    assert got["slice"]["max_stable_lr"] == 0.02
