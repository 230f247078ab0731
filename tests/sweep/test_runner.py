"""Sweeps end to end: real Ray (the session cluster, or a subprocess's own), real Optuna, real
MLflow sqlite, the real training loop on the demo config (synthetic data, small CNN, CPU)."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from stablesweep.analysis.recommended import setting_file_name
from stablesweep.analysis.region import recommended_group
from stablesweep.config import load_config
from stablesweep.sweep.invariant import exactly_once_problems
from stablesweep.sweep.options import SweepOptions
from stablesweep.sweep.runner import run_sweep
from stablesweep.sweep.search import study_summary
from stablesweep.tracking import Tracker, param_value
from stablesweep.vocab import InputError
from tests.conftest import DEMO, ROOT

INTERVAL = 10
STEPS = 40
# lr 1e-3 and 1e-2 train fine on the demo for 40 steps; 1e3 blows up within the first interval
GRID = "training.lr: {grid: [1.0e-3, 1.0e-2, 1.0e+3]}\ntraining.max_grad_norm: {choice: [null, 1.0]}\n"
N_GRID = 6


def grid_space(tmp_path: Path) -> Path:
    p = tmp_path / "grid.yaml"
    p.write_text(GRID)
    return p


@pytest.fixture(scope="module")
def grid_sweep(ray_cluster, tmp_path_factory, new_store):
    tmp = tmp_path_factory.mktemp("grid_sweep")
    uri = new_store(tmp / "mlflow.db")
    lines: list[str] = []
    opts = SweepOptions(config=str(DEMO), space=str(grid_space(tmp)), sampler="grid", steps=STEPS,
                        overrides=[f"training.report_interval={INTERVAL}"], asha=False, out=str(tmp / "out"),
                        name="grid", mlflow=uri, max_concurrent=2)
    t0 = time.time()
    res = run_sweep(opts, echo=lines.append)
    return res, lines, uri, time.time() - t0


def test_every_trial_has_one_verdict(grid_sweep):
    res, lines, _, _ = grid_sweep
    t = res.table
    assert len(t) == N_GRID and t["trial_id"].is_unique
    assert set(t["verdict"]) == {"stable", "diverged"}, t[["name", "verdict", "reason"]]
    assert (t.loc[t["training.lr"] == 1e3, "verdict"] == "diverged").all()
    assert (t.loc[t["training.lr"] < 1, "verdict"] == "stable").all()
    assert len([ln for ln in lines if ln.startswith("[")]) == N_GRID  # one progress line a trial
    assert not res.interrupted


def test_diverged_trials_stop_within_one_report_interval(grid_sweep):
    res, _, _, _ = grid_sweep
    div = res.table[res.table["verdict"] == "diverged"]
    assert len(div) == 2
    for _, r in div.iterrows():
        assert r["reason"] in ("nonfinite_loss", "nonfinite_grad", "loss_explosion")
        assert 0 <= r["first_bad_step"] <= r["steps"] <= r["first_bad_step"] + INTERVAL
        assert r["steps"] < STEPS and r["train_flops"] < r["flops_per_step"] * STEPS
        assert math.isfinite(r["objective"])  # the finite stand-in: Tune, ASHA and Optuna never see NaN
        # the trial's own reports (Tune's result.json) end at that step
        reports = [json.loads(ln) for ln in (res.sweep_dir / f"trial_{r['trial_id']}" / "result.json").open()]
        assert reports[-1]["step"] == r["steps"] and reports[-1]["verdict"] == "diverged"
    stable = res.table[res.table["verdict"] == "stable"]
    assert (stable["steps"] == STEPS).all() and (stable["first_bad_step"] == -1).all()


def test_optuna_records_the_verdicts(grid_sweep):
    res, _, _, _ = grid_sweep
    state = json.loads((res.sweep_dir / "sweep.json").read_text())
    rows = {r["tune_trial_id"]: r for r in study_summary(state["study_url"], state["study_name"])}
    assert len(rows) == N_GRID and not [r for r in rows.values() if r["state"] == "RUNNING"]
    seen = set()
    for _, t in res.table.iterrows():
        r = rows[t["trial_id"]]
        seen.add((r["params"]["training.lr"], r["params"]["training.max_grad_norm"]))
        assert r["verdict"] == t["verdict"]
        if t["verdict"] in ("stable", "stalled"):  # a real loss at the full budget; a stall is infeasible
            assert r["state"] == "COMPLETE" and r["value"] == pytest.approx(t["objective"])
            assert r["constraints"] == {"diverged": 0.0, "stalled": 1.0 if t["verdict"] == "stalled" else 0.0}
        else:
            assert r["state"] == "PRUNED" and r["constraints"] == {"diverged": 1.0, "stalled": 0.0}
            assert (r["reason"], r["first_bad_step"]) == (t["reason"], t["first_bad_step"])
    assert len(seen) == N_GRID  # every grid point exactly once


def test_mlflow_holds_one_parent_and_a_child_per_trial(grid_sweep):
    res, _, uri, _ = grid_sweep
    tr = Tracker(uri)
    parents = tr.sweep_runs()
    assert [p.run_id for p in parents] == [res.parent_run_id]
    parent = parents[0]
    assert parent.status == "FINISHED" and parent.params["sampler"] == "grid"
    arts = {a.path for a in tr.client.list_artifacts(res.parent_run_id)}
    assert {"stable_region.json", "stable_region.md", "recommended.yaml", "trials.csv", "config.yaml"} <= arts
    children = tr.children(res.parent_run_id)
    assert len(children) == N_GRID
    by_trial = {c.tags["stablesweep.trial_id"]: c for c in children}
    for _, t in res.table.iterrows():
        c = by_trial[t["trial_id"]]
        assert c.tags["verdict"] == t["verdict"]
        assert c.tags.get("first_bad_step") == (str(t["first_bad_step"]) if t["verdict"] == "diverged" else None)
        assert c.params["training.lr"] == param_value(t["training.lr"])
        assert c.name.startswith(t["verdict"]) and c.name.endswith(t["name"])
        assert c.status == {"stable": "FINISHED", "pruned": "KILLED"}.get(t["verdict"], "FAILED")
        assert "setting" in c.tags and c.tags["stablesweep.sweep"] == res.name
        # no sentinels: no empty, -1 or null tags; no -1 "no warning yet" in the charts
        assert not {k: v for k, v in c.tags.items() if v in ("", "-1", "nan", "None", "null")}, c.tags
        assert all(v >= 0 for k, v in c.metrics.items() if k.startswith("warn_step/") or k == "at_risk_step")
        hist = tr.client.get_metric_history(c.run_id, "loss")
        # a report every INTERVAL steps, and one where a diverged trial stopped (its first bad step, on the CPU)
        assert sorted(m.step for m in hist) == sorted({*range(INTERVAL, int(t["steps"]) + 1, INTERVAL), int(t["steps"])})
        assert "train_flops" in c.metrics
        if t["verdict"] == "diverged":
            assert "stand_in_objective" in c.metrics and "objective" not in c.metrics
            fbs = int(t["first_bad_step"])
            steps = [m.step for m in tr.client.get_metric_history(c.run_id, "step_loss")]
            assert steps and min(steps) <= fbs <= max(steps)  # the steps that led there, at their true steps
            assert c.metrics["diverged_at_step"] == fbs
    metrics = tr.client.get_run(res.parent_run_id).data.metrics
    for g in res.region.groups:
        if g.max_stable_lr is not None:
            assert any(k.startswith("max_stable_lr.") and v == g.max_stable_lr for k, v in metrics.items())


def test_region_brackets_the_boundary_and_recommends_with_a_margin(grid_sweep):
    res, _, _, _ = grid_sweep
    region = res.region
    assert region.budget_steps == STEPS
    assert len(region.groups) == 2  # clip none / 1.0
    for g in region.groups:
        assert g.max_stable_lr is not None and g.min_diverged_lr is not None
        assert g.max_stable_lr < g.min_diverged_lr and g.bracket_ok
    for key in ("json", "md", "trials", "recommended", "figure_region", "figure_objective"):
        assert res.files[key].exists(), key
    rec = res.files["recommended"]
    assert f"# budget: {STEPS} steps a run; stability may not hold for a longer run: re-check at the length " \
           "you train" in rec.read_text().splitlines()  # the header names the budget
    cfg = load_config(rec)  # a complete, valid training config
    group = recommended_group(region)
    assert cfg.training.lr == group.recommended_lr <= group.largest_safe_lr == 0.5 * group.min_failed_lr
    assert group.recommended_objective == min(o for lr, o, _ in group.stable_runs if lr <= group.largest_safe_lr)
    assert res.files[f"recommended/{setting_file_name(group.key)}"].exists()
    data = json.loads(res.files["json"].read_text())
    assert data["budget_steps"] == STEPS and data["counts"]["diverged"] == 2


def test_gpu_asked_where_there_is_none_fails_before_any_trial(ray_cluster, tmp_path, mlflow_uri):
    opts = SweepOptions(config=str(DEMO), space=str(grid_space(tmp_path)), sampler="grid", gpus_per_trial=0.25,
                        out=str(tmp_path / "out"), name="gpu", mlflow=mlflow_uri)
    with pytest.raises(InputError, match=r"--gpus-per-trial 0.25: the Ray cluster has no GPUs"):
        run_sweep(opts, echo=lambda s: None)
    assert not (tmp_path / "out").exists()  # nothing written


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def _terminated(exp_dir: Path) -> set[str]:
    """Trials that Tune's latest experiment snapshot records as TERMINATED."""
    states = sorted(exp_dir.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    try:
        data = json.loads(states[-1].read_text())["trial_data"] if states else []
    except (OSError, ValueError, KeyError):  # being written
        return set()
    trials = [json.loads(t[0]) for t in data]
    return {t["trial_id"] for t in trials if t.get("status") == "TERMINATED"}


def assert_exactly_once(sweep_dir: Path, n_grid: int = N_GRID):
    """What "every trial exactly once" means after a resume: trials.csv holds each grid point in
    exactly one trial; each of its trials has exactly one Optuna trial (with its verdict) and one
    MLflow child run; nothing is RUNNING in either; the only other Optuna trials are ones asked
    and never run (`abandoned`) or ones that Tune lost at a fault and ran again (`rerun_of`), and
    those have no child run left."""
    problems = exactly_once_problems(sweep_dir, n_grid)
    assert not problems, problems
    return pd.read_csv(sweep_dir / "trials.csv")


@pytest.mark.faults
def test_driver_killed_mid_sweep_then_resumed(ray_cluster, tmp_path):
    """SIGKILL the driver (and the local Ray it started) once some trials finished; --resume (on the
    session's Ray: no Ray started for it) ends with every grid point run exactly once: no trial lost,
    none run twice."""
    out, space = tmp_path / "out", grid_space(tmp_path)
    cmd = [sys.executable, "-m", "stablesweep", "sweep", str(DEMO), "--space", str(space), "--sampler", "grid",
           "--steps", str(STEPS), "--set", f"training.report_interval={INTERVAL}", "--no-asha",
           "--max-concurrent", "2", "--out", str(out), "--name", "k"]
    env = {**os.environ, "RAY_ADDRESS": "local"}  # a Ray of its own, never the test session's
    log1 = tmp_path / "first.log"
    first = subprocess.Popen(cmd, stdout=log1.open("w"), stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                             start_new_session=True)
    try:
        deadline = time.time() + 150
        done_before: list[str] = []
        while time.time() < deadline and first.poll() is None:
            done_before = [ln for ln in log1.read_text().splitlines() if ln.startswith("[")]
            if len(done_before) >= 2:
                break
            time.sleep(0.2)
        finished_early = {ln.rsplit("(trial ", 1)[1].rstrip(")") for ln in done_before}
        # kill once Tune's experiment snapshot has them finished (it writes one after every checkpoint
        # and every trial end; a slow machine may take a while): what the snapshot holds is what
        # --resume knows, and the test is about trials that had ended, not about the race
        while time.time() < deadline and first.poll() is None and not finished_early <= _terminated(out / "k"):
            time.sleep(0.1)
        assert first.poll() is None, log1.read_text()[-3000:]
        assert 2 <= len(done_before) < N_GRID, log1.read_text()[-3000:]
        assert finished_early <= _terminated(out / "k"), log1.read_text()[-3000:]
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        _kill_group(first)
    reports_before = {t: (out / "k" / f"trial_{t}" / "result.json").read_text() for t in finished_early}

    address = ray_cluster.get_runtime_context().gcs_address
    second = subprocess.Popen(cmd + ["--address", address, "--resume"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, cwd=ROOT, start_new_session=True)
    try:
        output, _ = second.communicate(timeout=240)
    finally:
        _kill_group(second)
    assert second.returncode == 0, output[-4000:]
    assert "resuming sweep k" in output

    sweep_dir = out / "k"
    table = assert_exactly_once(sweep_dir)
    assert set(table["verdict"]) <= {"stable", "diverged"}
    # trials finished before the kill were not run again: their reports are untouched
    assert finished_early <= set(table["trial_id"])
    for t in finished_early:
        assert (sweep_dir / f"trial_{t}" / "result.json").read_text() == reports_before[t]


def test_asha_prunes_poor_finite_trials(ray_cluster, tmp_path, mlflow_uri):
    space = tmp_path / "asha.yaml"
    space.write_text("training.lr: {grid: [3.0e-2, 1.0e-4, 1.0e-3, 1.0e-5]}\n")
    # one trial at a time; seed 5 makes the grid run 3e-2 (the best) first, so the slower lrs land
    # below the median at the rung (report 2) and ASHA stops at least one of them there
    opts = SweepOptions(config=str(DEMO), space=str(space), sampler="grid", steps=STEPS, seed=5,
                        overrides=[f"training.report_interval={INTERVAL}"], asha_grace=2, out=str(tmp_path / "out"),
                        name="asha", mlflow=mlflow_uri, max_concurrent=1)
    res = run_sweep(opts, echo=lambda s: None)
    t = res.table
    # lr 1e-5 barely moves the loss: where ASHA lets it run its budget it ends stalled, not stable
    assert {"stable", "pruned"} <= set(t["verdict"]) <= {"stable", "pruned", "stalled"}, \
        t[["name", "verdict", "steps", "objective"]]
    pruned = t[t["verdict"] == "pruned"]
    assert (pruned["steps"] < STEPS).all() and (pruned["first_bad_step"] == -1).all()
    state = json.loads((res.sweep_dir / "sweep.json").read_text())
    rows = {r["tune_trial_id"]: r for r in study_summary(state["study_url"], state["study_name"])}
    for tid in pruned["trial_id"]:
        assert (rows[tid]["state"], rows[tid]["verdict"], rows[tid]["constraints"]) == \
            ("PRUNED", "pruned", {"diverged": 0.0, "stalled": 0.0})
    children = {c.tags["stablesweep.trial_id"]: c for c in Tracker(mlflow_uri).children(res.parent_run_id)}
    assert all(children[tid].status == "KILLED" for tid in pruned["trial_id"])
    # a pruned trial is no evidence of stability at the budget
    g = res.region.groups[0]
    assert g.counts["pruned"] == len(pruned)
    assert g.max_stable_lr == t.loc[t["verdict"] == "stable", "training.lr"].max()


@pytest.mark.faults
def test_disk_full_mid_sweep_stops_with_a_message_then_resumes(ray_cluster, tmp_path, new_store):
    """The sweep's --out on a small tmpfs, filled once two trials ended: the driver says the output
    could not be written, marks its MLflow runs KILLED where it can, prints the resume command and
    exits 74 (not Optuna's StorageInternalError traceback, exit 1). With space back, --resume ends
    with every grid point exactly once in Tune's table, Optuna and MLflow, nothing RUNNING."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mnt)], check=True)
    first = None
    try:
        new_store(mnt / "out" / "mlflow.db")  # OUT's default store, there already (1 MB)
        # 2 x 2 points, one trial at a time: two end before the disk fills, the next one meets it
        space = tmp_path / "grid.yaml"
        space.write_text("training.lr: {grid: [1.0e-2, 1.0e+3]}\ntraining.max_grad_norm: {choice: [null, 1.0]}\n")
        # both runs join the session's Ray (one node, so the local defaults): no Ray started for each
        cmd = [sys.executable, "-m", "stablesweep", "sweep", str(DEMO), "--space", str(space),
               "--sampler", "grid", "--steps", "20", "--set", f"training.report_interval={INTERVAL}",
               "--no-asha", "--max-concurrent", "1", "--address", ray_cluster.get_runtime_context().gcs_address,
               "--out", str(mnt / "out"), "--name", "full"]
        log = tmp_path / "first.log"
        first = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT,
                                 start_new_session=True)
        deadline = time.time() + 200
        while time.time() < deadline and first.poll() is None:
            if len([ln for ln in log.read_text().splitlines() if ln.startswith("[")]) >= 2:
                break
            time.sleep(0.2)
        assert first.poll() is None, log.read_text()[-3000:]
        subprocess.run(["dd", "if=/dev/zero", f"of={mnt / 'filler'}", "bs=1M", "count=100"], capture_output=True)
        first.wait(timeout=300)
        text = log.read_text()
        tail = text[text.rindex("error: sweep full"):] if "error: sweep full" in text else text[-3000:]
        assert first.returncode == 74, tail
        assert "its output could not be written" in tail and "continue with  stablesweep sweep" in tail
        assert "--name full --resume" in tail and "Traceback" not in tail
        saved = Path(tail.split("(from its Optuna study) are in ", 1)[1].split(". ", 1)[0])  # off the full disk
        assert mnt not in saved.parents and len(__import__("pandas").read_csv(saved)) >= 2, tail

        (mnt / "filler").unlink()  # space is back: --resume finishes with every grid point exactly once
        second = subprocess.Popen(cmd + ["--resume"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  cwd=ROOT, start_new_session=True)
        try:
            output, _ = second.communicate(timeout=300)
        finally:
            _kill_group(second)
        assert second.returncode in (0, 1), output[-4000:]  # 1: the trial the full disk broke ended in error
        assert_exactly_once(mnt / "out" / "full", n_grid=4)
    finally:
        if first is not None:
            _kill_group(first)
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_ctrl_c_while_the_mlflow_store_is_created_leaves_no_half_made_store(tmp_path):
    """SIGINT the process that creates OUT/mlflow.db while MLflow runs its migrations: no
    mlflow.db is left (only a finished store is renamed into place), and the next sweep's
    create_store makes a usable one."""
    from stablesweep.tracking import create_store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = f"from stablesweep.tracking import create_store; create_store({uri!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not list(tmp_path.glob(".mlflow.db.*.tmp")):
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        _kill_group(proc)
    assert proc.returncode != 0  # interrupted mid-creation
    assert not (tmp_path / "mlflow.db").exists() and not list(tmp_path.glob(".mlflow.db.*"))
    create_store(uri)
    tr = Tracker(uri)
    run = tr.start_sweep("s", {}, tags={})
    assert [r.run_id for r in tr.sweep_runs()] == [run]
