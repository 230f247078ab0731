"""`stablesweep explain` on runs with planted causes: each is named by experiment (CPU, small)."""
import json
import re
from pathlib import Path

import pytest
import torch

from stablesweep.cli import main
from stablesweep.config import load_config
from stablesweep.data import build_data, write_synthetic
from tests.conftest import DEMO

SMALL = ["data.image_size=16", "training.report_interval=10", "--device", "cpu"]


def train(config: Path, out: Path, overrides: list[str]) -> dict:
    args = ["train", str(config), "--out", str(out), "--quiet"]
    for o in overrides:
        args += ["--set", o] if "=" in o else [o]
    main(args)
    torch.set_num_threads(1)  # `train` took the machine's CPUs; explain's replays after it run on one, as the suite
    return json.loads((out / "result.json").read_text())


def explain(run: Path, *extra: str) -> tuple[int, dict]:
    code = main(["explain", str(run), "--quiet", *extra])
    return code, json.loads((run / "explain.json").read_text())


def test_a_too_high_lr_is_named(tmp_path, capsys):
    run = tmp_path / "hot"
    # lr 1: its loss is 4x the initial at step 1 (an explosion from step 0); at lr x0.1 the run trains
    res = train(DEMO, run, SMALL + ["training.lr=1", "training.max_grad_norm=null", "training.warmup_steps=0",
                                    "training.schedule=constant", "training.steps=30"])
    assert res["verdict"] == "diverged"
    # the explosion (against the initial loss from step 0) stops the run where it is seen (on the CPU,
    # read each step), before the first report: one checkpoint, there
    assert res["first_bad_step"] < res["steps"] < 10
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [f"checkpoint_{res['steps']:08d}"]
    code, expl = explain(run)
    assert code == 0 and expl["cause"] == "learning_rate"
    text = capsys.readouterr().out
    assert "cause: learning rate" in text and not re.search(r"(?<![\w/-])-1(?!\d)", text)  # no -1 step
    last = expl["attempts"][-1]["replays"]
    assert last[0]["change"] == "as run" and last[0]["verdict"] == "diverged"
    assert {r["change"]: r["verdict"] for r in last[1:]} == {"lr x0.1": "stable", "data order": "diverged"}
    # a replay with no first bad step says none: null in explain.json, never the monitor's -1
    steps = {r["change"]: r["first_bad_step"] for r in last}
    assert steps["lr x0.1"] is None and steps["as run"] == res["first_bad_step"] and steps["data order"] >= 0
    assert "deterministic" in expl["attempts"][0]["same_losses"]
    assert expl["samples"] == []


PLANTED_STEP = 13
PLANTED = ["loss.on_bad_label=skip", "training.batch_size=4", "training.steps=30", "training.report_interval=10",
           "training.warmup_steps=0"]


def plant_bad_batch(tmp_path: Path) -> tuple[Path, set]:
    """Two small datasets whose batch of step 13 holds only samples given label 3 in 3-class
    datasets (the incident's label 101 of 101): with on_bad_label skip they are all dropped and
    that batch's loss is NaN. The config file and the planted (dataset, index) pairs."""
    config = write_synthetic(tmp_path / "data", names_classes={"food": 3, "veg": 3}, per_class=8, image_size=16)
    cfg = load_config(config, PLANTED)
    data = build_data(cfg)
    flat = next(iter(data.batch_sampler(4, cfg.training.seed, start_step=PLANTED_STEP)))
    sizes = list(data.train_sizes.values())
    planted = set()
    for g in flat:
        d = 0 if g < sizes[0] else 1
        planted.add((data.label_space.names[d], g - (0 if d == 0 else sizes[0])))
    for name in ("food", "veg"):
        manifest = tmp_path / "data" / f"{name}_train.jsonl"
        rows = [json.loads(x) for x in manifest.read_text().splitlines()]
        for i, row in enumerate(rows):
            if (name, i) in planted:
                row["label"] = 3
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return config, planted


def assert_data_named(expl: dict, planted: set) -> None:
    assert expl["cause"] == "data"
    named = {(s["dataset"], s["index"]) for s in expl["samples"]}
    assert named == planted and not any(s["in_range"] for s in expl["samples"])
    assert all(s["where"].startswith(f"{s['dataset']}_train.jsonl:") for s in expl["samples"])


def test_a_planted_bad_batch_is_named_with_its_samples(tmp_path, capsys):
    """Another data order removes the divergence of the planted batch, a lower lr does not."""
    config, planted = plant_bad_batch(tmp_path)
    run = tmp_path / "bad"
    res = train(config, run, PLANTED + ["--device", "cpu"])
    assert (res["verdict"], res["reason"], res["first_bad_step"]) == ("diverged", "nonfinite_loss", PLANTED_STEP)
    code, expl = explain(run)
    assert code == 0 and expl["attempts"][0]["start"] == "checkpoint_00000010"
    assert_data_named(expl, planted)
    out = capsys.readouterr().out
    assert "cause: data" in out and "4 with a label outside their dataset's range" in out


def test_a_sweep_trial_is_explained_from_its_mlflow_run(ray_cluster, tmp_path, capsys, new_store):
    """One real (CPU) sweep of the planted bad batch: Tune keeps the trial's ring of checkpoints
    (training.keep_checkpoints), and explain, given the trial's MLflow run id, finds its trial
    directory and names the data; the run also carries the at_risk flag as a metric."""
    from stablesweep.sweep.options import SweepOptions
    from stablesweep.sweep.runner import run_sweep
    from stablesweep.tracking import TrackerReader

    config, planted = plant_bad_batch(tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text(f"training.lr: {{grid: [{load_config(config).training.lr}]}}\n")
    uri = new_store(tmp_path / "out" / "mlflow.db")
    res = run_sweep(SweepOptions(config=str(config), space=str(space), sampler="grid", overrides=PLANTED,
                                 asha=False, out=str(tmp_path / "out"), name="planted", mlflow=uri),
                    echo=lambda s: None)
    (trial,) = TrackerReader(uri).child_runs(res.parent_run_id)
    assert trial.tags["verdict"] == "diverged" and trial.tags["first_bad_step"] == str(PLANTED_STEP)
    assert trial.metrics["at_risk"] in (0.0, 1.0)
    trial_dir = res.sweep_dir / f"trial_{trial.tags['stablesweep.trial_id']}"
    assert len(list(trial_dir.glob("checkpoint_*"))) == 2  # steps 10 and 20: both kept (the ring holds 3)
    code = main(["explain", f"runs:/{trial.run_id}", "--mlflow", uri, "--quiet"])
    expl = json.loads((trial_dir / "explain.json").read_text())
    assert code == 0 and expl["attempts"][0]["start_step"] == 10
    assert_data_named(expl, planted)
    assert "cause: data" in capsys.readouterr().out


@pytest.mark.parametrize("what, expect", [
    ("0123456789abcdef0123456789abcdef", "MLflow run 0123456789abcdef0123456789abcdef: not found in"),
    ("runs:/feedfeedfeedfeedfeedfeedfeedfeed", "MLflow run feedfeedfeedfeedfeedfeedfeedfeed: not found in"),
])
def test_an_unknown_mlflow_run_is_an_error_that_names_it(mlflow_uri, capsys, what, expect):
    from stablesweep.tracking import Tracker

    uri = mlflow_uri
    Tracker(uri).start_sweep("s", {}, tags={})  # a real store with one run, not this one
    assert main(["explain", what, "--mlflow", uri, "--quiet"]) == 2
    assert expect in capsys.readouterr().err


def test_a_trial_without_checkpoints_is_an_error_that_names_it(tmp_path, mlflow_uri, capsys):
    from stablesweep.tracking import Tracker

    uri = mlflow_uri
    tr = Tracker(uri)
    exp = tmp_path / "exp"
    parent = tr.start_sweep("s", {}, tags={"tune_experiment": str(exp), "sweep_dir": str(tmp_path)})
    run = tr.trial_run(parent, "abc", "lr=1", {"training.lr": 1.0})
    tr.finish_trial(run, "diverged", "nonfinite_loss", 3, {"steps": 10})
    (exp / "trial_abc").mkdir(parents=True)
    (exp / "trial_abc" / "result.json").write_text(json.dumps({"step": 10, "checkpoint_dir_name": None}) + "\n")
    assert main(["explain", run, "--mlflow", uri, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"MLflow run {run}: no checkpoints kept in" in err


def test_a_mask_value_in_fp16_is_named_masking_or_precision(tmp_path):
    """-1e9 in fp16 is -inf; label smoothing over -inf masked classes makes the loss inf at once."""
    run = tmp_path / "fp16"
    res = train(DEMO, run, SMALL + ["training.precision=fp16", "loss.masking=large_negative",
                                    "loss.mask_in=autocast", "loss.type=label_smoothing", "training.steps=4",
                                    "training.report_interval=2"])
    assert (res["verdict"], res["reason"], res["first_bad_step"]) == ("diverged", "nonfinite_loss", 0)
    code, expl = explain(run, "--extra-steps", "2")
    assert code == 0 and expl["cause"] in ("masking", "precision")
    assert {"masking slice", "fp32"} <= set(expl["fixes"])
    assert expl["attempts"][0]["start"] == "initial state"


def test_a_divergence_the_replay_does_not_show_is_not_reproduced(tmp_path):
    run = tmp_path / "calm"
    train(DEMO, run, SMALL + ["training.steps=10", "training.report_interval=5"])
    result = json.loads((run / "result.json").read_text())
    result.update(verdict="diverged", reason="nonfinite_loss", first_bad_step=7)  # a claim the replay refutes
    (run / "result.json").write_text(json.dumps(result))
    code, expl = explain(run, "--extra-steps", "0")
    assert code == 1 and expl["cause"] == "not_reproduced"
    (as_run,) = expl["attempts"][0]["replays"]
    assert (as_run["change"], as_run["verdict"], as_run["first_bad_step"]) == ("as run", "stable", None)


@pytest.mark.parametrize("setup, expect", [
    ("missing", "no such run directory"),
    ("stable", "only a diverged run can be explained"),
    ("no_config", "config.yaml: missing"),
    ("no_step", "the result names no first bad step (first_bad_step -1): nothing to replay up to"),
])
def test_bad_input_is_an_error_that_names_the_place(tmp_path, capsys, setup, expect):
    run = tmp_path / "run"
    if setup != "missing":
        run.mkdir()
        verdict = "diverged" if setup == "no_step" else "stable"
        (run / "result.json").write_text(json.dumps({"verdict": verdict, "first_bad_step": -1}))
        if setup in ("stable", "no_step"):
            (run / "config.yaml").write_text(DEMO.read_text())
    assert main(["explain", str(run)]) == 2
    assert expect in capsys.readouterr().err
    assert not (run / "explain.json").exists()


def test_a_replay_without_a_first_bad_step_reads_none_and_null():
    from stablesweep.diagnose.explain import Attempt, Explanation, Replay

    calm = Replay("lr x0.1", "learning_rate", [], verdict="stable", steps=20)
    odd = Replay("data order", "data", [], verdict="diverged", reason="loss_explosion")  # no step named
    expl = Explanation("run", "loss_explosion", 7, 18, "learning_rate", fixes=["lr x0.1"],
                       attempts=[Attempt("initial state", 0, [calm, odd])])
    text = expl.format()
    assert "stable through step 19" in text and "diverged: loss_explosion at step none" in text
    assert not re.search(r"(?<![\w/-])-1(?!\d)", text)
    assert [r["first_bad_step"] for r in json.loads(json.dumps(expl.to_dict()))["attempts"][0]["replays"]] == \
        [None, None]
