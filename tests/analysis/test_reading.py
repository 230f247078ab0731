"""Reading sweeps back: `sweep_from_runs` on plain run records, and `read_sweeps` on a real
embedded MLflow store that `Tracker` wrote as the sweep and ramp runners do (no Ray)."""
from __future__ import annotations

import math

import pytest

from stablesweep.analysis.reading import parse_param, read_sweeps, sweep_from_runs
from stablesweep.tracking import KIND_TAG, SWEEP_TAG, TRIAL_TAG, RunRecord, Tracker
from stablesweep.vocab import InputError

SPACE = "training.lr: {loguniform: [1.0e-5, 1.0e-1]}\nloss.masking: {choice: [slice, neg_inf]}\n" \
        "training.max_grad_norm: {uniform: [0.1, 2.0]}\n"
CONFIG = "training:\n  lr: 0.001\n  steps: 100\nloss:\n  masking: slice\n"


def test_params_parse_back_from_mlflow_strings():
    assert [parse_param(s) for s in ("none", "null", "None", "", "true", "false", "3", "-2", "0.001", "1e-05",
                                     "1.0e-05", "1000.0", "slice", " 7 ")] == \
        [None, None, None, None, True, False, 3, -2, 0.001, 1e-05, 1e-05, 1000.0, "slice", 7]
    assert math.isinf(parse_param("inf"))
    assert parse_param(0.5) == 0.5  # not a string: as it is


def record(run_id, name, params=None, tags=None, metrics=None, start=0, status="FINISHED") -> RunRecord:
    return RunRecord(run_id=run_id, name=name, status=status, start_time=start, params=params or {},
                     tags=tags or {}, metrics=metrics or {})


def test_a_sweep_from_plain_run_records():
    parent = record("p1", "run-name", params={"space_keys": "training.lr,loss.masking", "budget_steps": "100",
                                              "sampler": "tpe", "asha": "false", "config_file": "/c/demo.yaml"},
                    tags={SWEEP_TAG: "s1", KIND_TAG: "sweep"}, status="KILLED", start=5,
                    metrics={"best_objective": 0.5, "max_stable_lr.masking-slice": 0.001,
                             "min_failed_lr.masking-slice": 1.0, "recommended_lr.masking-slice": 0.001})
    kids = [record("c1", "lr=1.0e-03 slice", params={"training.lr": "0.001", "loss.masking": "slice"},
                   tags={TRIAL_TAG: "t1", "verdict": "stable", "reason": "", "first_bad_step": "-1"},
                   metrics={"objective": 0.5, "initial_loss": 2.0, "loss": 0.4, "steps": 100.0}),
            record("c2", "lr=1.0e+00 neg_inf", params={"training.lr": "1.0", "loss.masking": "neg_inf"},
                   tags={TRIAL_TAG: "t2", "verdict": "diverged", "reason": "nonfinite_loss", "first_bad_step": "7",
                         "budget_steps": "50"},
                   metrics={"objective": 2.0, "final_loss": 9.0}),
            record("c3abcdefgh", "running", params={"training.lr": "0.01", "loss.masking": "slice"})]
    d = sweep_from_runs(parent, kids, config_text=CONFIG, space_text=SPACE)
    assert (d.name, d.label, d.run_id, d.kind, d.status, d.start_time) == ("s1", "s1", "p1", "sweep", "KILLED", 5)
    assert d.axes == ["training.lr", "loss.masking"]  # space_keys first
    assert d.categorical == ["loss.masking"]  # choice and grid name a setting; lr and uniform do not
    assert d.config == {"training.lr": 0.001, "training.steps": 100, "loss.masking": "slice"}
    assert d.params["budget_steps"] == 100 and d.params["asha"] is False and d.params["sampler"] == "tpe"
    assert d.budget_steps == 100
    # each setting's answer as the parent holds it, for compare's answers by config
    assert d.config_file == "/c/demo.yaml"
    assert d.setting_answers == {"masking-slice": {"max_stable_lr": 0.001, "min_failed_lr": 1.0,
                                                   "recommended_lr": 0.001}}
    t = d.trials.set_index("trial_id")
    assert list(t.index) == ["t1", "t2", "c3abcdef"]  # no trial tag: the run id's first 8 characters
    assert t.loc["t1", "training.lr"] == 0.001 and t.loc["t2", "loss.masking"] == "neg_inf"
    assert list(t["verdict"]) == ["stable", "diverged", "unfinished"]
    assert t["reason"].isna().tolist() == [True, False, True] and t.loc["t2", "reason"] == "nonfinite_loss"
    assert list(t["first_bad_step"]) == [-1, 7, -1]
    assert list(t["budget_steps"]) == [100, 50, 100]  # its own tag, else the parent's param
    assert t.loc["t1", "final_loss"] == 0.4 and t.loc["t2", "final_loss"] == 9.0  # final_loss, else loss
    assert math.isnan(t.loc["t2", "steps"])


def test_without_space_keys_the_axes_come_from_the_space_or_the_probes():
    parent = record("p", "p", tags={KIND_TAG: "ramp"})
    kids = [record("c", "c", params={"phase": "climb", "loss.masking": "slice", "training.lr": "0.1",
                                     "eval_loss/food101": "1"})]
    ramp = sweep_from_runs(parent, kids)
    assert ramp.kind == "ramp" and ramp.name == "p"
    assert ramp.axes == ["training.lr", "loss.masking"]  # config keys only, lr first
    assert ramp.categorical == ["loss.masking"] and ramp.config == {}
    # a replicate probe's seed is a column, not a setting
    rep = record("c2", "c2", params={"phase": "replicate", "loss.masking": "slice", "training.lr": "0.1",
                                     "training.seed": "1"})
    ramp = sweep_from_runs(parent, [*kids, rep])
    assert ramp.axes == ["training.lr", "loss.masking", "training.seed"] and ramp.categorical == ["loss.masking"]
    assert ramp.categorical_axes() == ["loss.masking"] and ramp.trials["training.seed"].tolist()[1] == 1
    d = sweep_from_runs(parent, kids, config_text="{not yaml", space_text=SPACE)
    assert d.axes == ["training.lr", "loss.masking", "training.max_grad_norm"] and d.config == {}


# ---- read_sweeps on a real store ------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory, new_store) -> dict:
    """Oldest first: sweep `wide` (space and config as artifacts), sweep `dup`, ramp `r1`, sweep
    `dup` again; an experiment `empty` without runs."""
    uri = new_store(tmp_path_factory.mktemp("reading") / "mlflow.db")
    tr = Tracker(uri)
    ids = {}

    def parent(name, texts=None, tags=None, params=None):
        run = tr.start_sweep(name, params or {"budget_steps": 20}, tags=tags or {}, texts=texts)
        ids.setdefault(name, []).append(run)
        return run

    p = parent("wide", texts={"space.yaml": SPACE, "config.yaml": CONFIG},
               params={"budget_steps": 20, "space_keys": "training.lr,loss.masking", "sampler": "grid"})
    for i, (lr, masking, verdict) in enumerate([(1e-3, "slice", "stable"), (1e3, "slice", "diverged")]):
        run = tr.trial_run(p, f"w{i}", f"lr={lr:.1e}", {"training.lr": lr, "loss.masking": masking})
        tr.log_trial_metrics(run, {"loss": 1.0 + i, "initial_loss": 3.0}, step=10)
        tr.finish_trial(run, verdict, "nonfinite_loss" if verdict == "diverged" else None, 3 if i else -1,
                        {"objective": 1.0 + i, "steps": 20})
    tr.trial_run(p, "w2", "still running", {"training.lr": 1e-2, "loss.masking": "neg_inf"})
    tr.end_sweep(p, {}, tags={})
    parent("dup")
    r = parent("r1", tags={KIND_TAG: "ramp"})
    run = tr.trial_run(r, "r1-0", "probe", {"training.lr": 1e-3, "phase": "climb"})
    tr.finish_trial(run, "stable", None, -1, {"objective": 1.0, "steps": 20})
    parent("dup")
    Tracker(uri, "empty").experiment_id  # the experiment, no run
    return {"uri": uri, "ids": ids}


def test_every_sweep_and_ramp_oldest_first(store):
    got = read_sweeps(store["uri"])
    assert [(d.name, d.kind) for d in got] == [("wide", "sweep"), ("dup", "sweep"), ("r1", "ramp"), ("dup", "sweep")]
    assert [d.label for d in got] == ["wide", f"dup@{store['ids']['dup'][0][:8]}", "r1",
                                      f"dup@{store['ids']['dup'][1][:8]}"]  # a repeated name: name@run
    wide = got[0]
    assert wide.categorical == ["loss.masking"] and wide.config["training.steps"] == 100 and wide.budget_steps == 20
    t = wide.trials.set_index("trial_id")
    assert list(t["verdict"]) == ["stable", "diverged", "unfinished"]
    assert t.loc["w1", "training.lr"] == 1e3 and t.loc["w1", "first_bad_step"] == 3
    # a diverged trial's objective column is its stand-in, as in the sweep's own table
    assert t.loc["w0", "objective"] == 1.0 and t.loc["w1", "objective"] == 2.0
    assert t.loc["w0", "initial_loss"] == 3.0 and t.loc["w0", "budget_steps"] == 20  # a tag, read as a number
    assert t.loc["w0", "final_loss"] == 1.0  # no final_loss: the last smoothed loss
    r1 = got[2]
    assert r1.axes == ["training.lr"] and r1.config == {} and list(r1.trials["verdict"]) == ["stable"]


def test_names_and_run_ids_choose(store):
    notes: list[str] = []
    got = read_sweeps(store["uri"], names=["dup", "wide", "wide"], notes=notes)
    assert [(d.label, d.run_id) for d in got] == [("dup", store["ids"]["dup"][1]), ("wide", store["ids"]["wide"][0])]
    (note,) = notes
    assert note.startswith("2 sweeps are named 'dup'; using the latest") and store["ids"]["dup"][0] in note
    first_dup = store["ids"]["dup"][0]
    assert [d.run_id for d in read_sweeps(store["uri"], names=[first_dup[:8]])] == [first_dup]
    assert [d.run_id for d in read_sweeps(store["uri"], names=[first_dup])] == [first_dup]


def test_an_unknown_sweep_names_what_is_there(store):
    uri = store["uri"]
    with pytest.raises(InputError) as e:
        read_sweeps(uri, names=["wdie"])
    assert str(e.value) == (f"unknown sweep 'wdie' in experiment 'stablesweep' at {uri}; did you mean 'wide'? "
                            "ramp/sweeps there: dup, r1, wide")
    with pytest.raises(InputError, match="unknown sweep '"):
        read_sweeps(uri, names=[store["ids"]["wide"][0][:7]])  # fewer than 8 characters: no run id


def test_an_unknown_or_empty_experiment_or_a_missing_store_is_bad_input(store, tmp_path):
    uri = store["uri"]
    with pytest.raises(InputError) as e:
        read_sweeps(uri, "emtpy")
    assert str(e.value) == (f"--experiment emtpy: no such experiment at {uri}; did you mean 'empty'? experiments "
                            "there: Default, empty, stablesweep")
    with pytest.raises(InputError, match=r"no sweeps in experiment 'empty' at .*; run `stablesweep sweep"):
        read_sweeps(uri, "empty")
    missing = tmp_path / "mlflow.db"
    with pytest.raises(InputError, match=r"^--mlflow sqlite:///.*: no MLflow store at "):
        read_sweeps(f"sqlite:///{missing}")
    assert not missing.exists()
    bad = tmp_path / "bad.db"
    bad.write_text("not a database " * 100)
    with pytest.raises(InputError, match=r"^--mlflow sqlite:///.*bad\.db: .*bad\.db is not an MLflow store "
                                         r"\(file is not a database\)"):
        read_sweeps(f"sqlite:///{bad}")
