"""The training loop end to end on CPU, on the demo config (synthetic, small CNN)."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stablesweep.config import load_config
from stablesweep.stability.monitor import SIGNALS
from stablesweep.train import run_training
from tests.conftest import DEMO, ROOT


@pytest.fixture(scope="module")
def demo_result():
    cfg = load_config(DEMO)
    reports = []
    res = run_training(cfg, report=lambda m, c: reports.append(m), device="cpu")
    return cfg, res, reports


def test_default_demo_is_stable_and_learns(demo_result):
    cfg, res, reports = demo_result
    assert res.verdict == "stable" and res.reason is None and res.first_bad_step == -1
    assert res.steps == cfg.training.steps
    # chance is 1/num_classes within each dataset (masking restricts the prediction to it)
    margins = {name: d["accuracy"] - 1 / cfg.datasets.dataset_configs[name].num_classes
               for name, d in res.datasets.items()}
    mean_acc = sum(d["accuracy"] for d in res.datasets.values()) / len(res.datasets)
    chance = sum(1 / cfg.datasets.dataset_configs[n].num_classes for n in res.datasets) / len(res.datasets)
    assert mean_acc > chance + 0.4, (mean_acc, chance, margins)
    assert res.train_flops > 0 and res.train_flops == pytest.approx(res.flops_per_step * res.steps)
    # one report per interval plus the end; each carries a finite objective and the verdict fields
    assert [m["step"] for m in reports] == list(range(20, 121, 20))
    assert all(math.isfinite(m["objective"]) and m["verdict"] == "stable" for m in reports)
    assert reports[-1]["done"] and not reports[0]["done"]


def test_on_the_cpu_a_diverged_run_ends_at_its_first_bad_step_with_the_verdict_of_every_report():
    """Read each step where it costs no device sync, a divergence ends the run at once, with a report
    there: the same verdict, reason and first bad step as a run that reports every step."""
    over = ["training.lr=30", "training.warmup_steps=0"]
    every = []
    ref = run_training(load_config(DEMO, over + ["training.report_interval=1"]), report=lambda m, c: every.append(m),
                       device="cpu")
    reports = []
    res = run_training(load_config(DEMO, over), report=lambda m, c: reports.append(m), device="cpu")
    assert ref.verdict == res.verdict == "diverged"
    assert (res.reason, res.first_bad_step) == (ref.reason, ref.first_bad_step)
    assert res.first_bad_step < res.steps == ref.steps < load_config(DEMO).training.report_interval
    assert [m["step"] for m in reports] == [res.steps] and reports[-1]["done"]
    assert res.train_flops == pytest.approx(res.flops_per_step * res.steps)


def test_huge_lr_diverges_with_reason_and_step_and_stops_within_an_interval():
    cfg = load_config(DEMO, ["training.lr=1e3", "training.warmup_steps=0", "training.max_grad_norm=null"])
    reports = []
    res = run_training(cfg, report=lambda m, c: reports.append(m), device="cpu")
    assert res.verdict == "diverged"
    assert res.reason in ("nonfinite_loss", "nonfinite_grad", "loss_explosion")
    assert 0 <= res.first_bad_step < res.steps
    interval = cfg.training.report_interval
    assert res.steps - res.first_bad_step <= interval  # stopped at the first report after it
    assert res.steps < cfg.training.steps
    assert reports[-1]["done"] and reports[-1]["verdict"] == "diverged"
    assert math.isfinite(reports[-1]["objective"])


def test_resume_continues_exactly(tmp_path):
    over = ["training.steps=40", "training.report_interval=10"]
    full_cfg = load_config(DEMO, over)
    full = []
    run_training(full_cfg, report=lambda m, c: full.append(m), device="cpu")

    first = []
    ck = {}
    cfg = load_config(DEMO, over)
    # run the first 20 steps only (same schedule: the budget stays 40), keep the checkpoint at 20
    class Stop(Exception):
        pass

    def report(m, c):
        first.append(m)
        if m["step"] == 20:
            ck["dir"] = c
            raise Stop

    with pytest.raises(Stop):
        run_training(cfg, report=report, device="cpu", checkpoint_dir=tmp_path / "ck")
    resumed = []
    run_training(cfg, report=lambda m, c: resumed.append(m), device="cpu", resume_from=ck["dir"])
    assert [m["step"] for m in resumed] == [30, 40]
    for a, b in zip(full[2:], resumed):
        assert a["last_loss"] == b["last_loss"] and a["loss"] == b["loss"], (a["step"], a["last_loss"], b["last_loss"])
    assert full[-1]["objective"] == resumed[-1]["objective"]


def test_cli_train_writes_result_json_and_exit_status(tmp_path, cli, monkeypatch):
    from stablesweep.commands.train import machine_cpus

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "stablesweep", "train", str(DEMO), "--set", "training.steps=20",
           "--set", "training.report_interval=10", "--device", "cpu", "--out", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "verdict: stable" in p.stdout and "Eval food101: Loss:" in p.stdout
    assert ", 1 threads," in p.stdout.splitlines()[0]  # the OMP_NUM_THREADS=1 this suite exports
    res = json.loads((out / "result.json").read_text())
    for key in ("verdict", "reason", "first_bad_step", "steps", "train_flops", "datasets"):
        assert key in res
    assert set(res["datasets"]) == {"food101", "food172", "foodx251", "food2k", "fru92", "veg200"}
    assert {"loss", "accuracy"} <= set(res["datasets"]["food101"])
    monkeypatch.delenv("OMP_NUM_THREADS")  # none exported: every CPU this process may use
    p = cli(*cmd[3:-2], "--out", tmp_path / "d", "--set", "training.lr=1e3", "--set", "training.max_grad_norm=null")
    assert p.returncode == 1 and "verdict: diverged" in p.stdout  # in this process: the run above was the subprocess
    assert f", {machine_cpus()} threads," in p.stdout.splitlines()[0]


@pytest.mark.parametrize("args, expect", [
    (["--set", "training.lrr=1"], "unknown key 'training.lrr'; did you mean 'training.lr'"),
    (["--set", "loss.masking=neginf"], "did you mean 'neg_inf'"),
    (["--set", "training.lr=-1"], "training.lr: must be a positive number"),
    (["--device", "cuda"], "no CUDA device"),
])
def test_cli_bad_input_is_a_clear_error_and_exit_2(tmp_path, cli, args, expect):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "never"
    p = cli("train", DEMO, "--out", out, *args)
    assert p.returncode == 2, p.stderr
    assert expect in p.stderr and "Traceback" not in p.stderr
    assert not out.exists()  # nothing written


def test_training_core_imports_neither_ray_nor_mlflow():
    code = ("import sys, stablesweep.train, stablesweep.commands.train; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('ray', 'mlflow', 'optuna')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_warm_start_continues_the_step_counter_at_a_new_lr(tmp_path):
    cfg = load_config(DEMO, ["training.steps=20", "training.report_interval=10", "training.warmup_steps=0",
                             "training.schedule=constant"])
    ck = []
    run_training(cfg, report=lambda m, c: ck.append(c), device="cpu", checkpoint_dir=tmp_path / "a")
    more = load_config(DEMO, ["training.steps=40", "training.report_interval=10", "training.warmup_steps=0",
                              "training.schedule=constant", "training.lr=6e-3"])
    seen = []
    res = run_training(more, report=lambda m, c: seen.append(m), device="cpu", resume_from=ck[-1], warm_start=True)
    assert [m["step"] for m in seen] == [30, 40] and res.steps == 40
    assert all(m["lr"] == pytest.approx(6e-3) for m in seen)


def test_exponential_schedule_is_an_lr_range_test():
    cfg = load_config(DEMO, ["training.steps=30", "training.report_interval=10", "training.warmup_steps=0",
                             "training.schedule=exponential", "training.lr=1e-3", "training.lr_final=1e3",
                             "monitor.stop_on_divergence=false"])
    seen = []
    run_training(cfg, report=lambda m, c: seen.append(m), device="cpu")
    # lr after step s is lr * ratio ** (s / (total - 1)); the last report is past the end of the ramp
    assert seen[0]["lr"] == pytest.approx(1e-3 * 1e6 ** (10 / 29))
    assert seen[-1]["lr"] == pytest.approx(1e3)
    assert seen[-1]["verdict"] == "diverged"


def test_checkpoint_ring_keeps_the_last_k_and_signals_reach_reports_and_result(tmp_path):
    cfg = load_config(DEMO, ["data.image_size=16", "training.steps=50", "training.report_interval=10",
                             "training.keep_checkpoints=3"])
    seen = []
    res = run_training(cfg, report=lambda m, c: seen.append((m, c)), device="cpu", checkpoint_dir=tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [f"checkpoint_{s:08d}" for s in (30, 40, 50)]
    assert [Path(c).name for _, c in seen] == [f"checkpoint_{s:08d}" for s in (10, 20, 30, 40, 50)]
    for m, _ in seen:
        assert m["at_risk"] is False and m["at_risk_step"] == -1
        assert {f"signal/{n}" for n in SIGNALS} <= set(m) and {f"warn_step/{n}" for n in SIGNALS} <= set(m)
    last = seen[-1][0]
    assert 0 < last["signal/max_logit"] < 30 and 0 < last["signal/update_ratio"] < 0.05
    assert res.signals == {n: last[f"signal/{n}"] for n in SIGNALS}
    assert res.warnings == {n: -1 for n in SIGNALS} and res.at_risk is False
    assert json.loads(json.dumps(res.to_dict()))["signals"]["grad_spike"] == last["signal/grad_spike"]


def test_a_run_over_a_threshold_is_flagged_at_risk_with_the_signal_and_step():
    cfg = load_config(DEMO, ["data.image_size=16", "training.steps=20", "training.report_interval=10",
                             "monitor.warn_max_logit=3"])
    res = run_training(cfg, device="cpu")
    assert res.verdict == "stable" and res.at_risk and res.at_risk_signal == "max_logit"
    assert 0 <= res.at_risk_step == res.warnings["max_logit"] < 20


HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


def test_the_guarded_step_adds_no_host_sync(monkeypatch):
    """Reads of a tensor's value on the host by the training core (the data loader's index lists
    are host data, not reads of the device), counted over a 10-step and a 30-step run with one
    report each: the same count, so no step reads anything. Apart: on the CPU, where a read is no
    device sync, the loop asks the monitor each step whether the run diverged
    (`DivergenceMonitor.diverged_now`; `Trainer.run` asks only on the CPU)."""
    from stablesweep.stability.monitor import DivergenceMonitor

    pkg = str(ROOT / "stablesweep")
    data = str(ROOT / "stablesweep" / "data")
    calls, asked = [], []
    for name in HOST_READS:
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, _name=name, **k):
            frame = sys._getframe(1)
            where = frame.f_code.co_filename
            if where.startswith(pkg) and not where.startswith(data) and frame.f_code.co_name != "diverged_now":
                calls.append((_name, where, frame.f_lineno))
            return _real(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    real_ask = DivergenceMonitor.diverged_now
    monkeypatch.setattr(DivergenceMonitor, "diverged_now", lambda self: asked.append(1) or real_ask(self))

    counts = {}
    for steps in (10, 30):
        calls.clear()
        cfg = load_config(DEMO, ["data.image_size=16", f"training.steps={steps}", f"training.report_interval={steps}"])
        run_training(cfg, device="cpu")
        counts[steps] = list(calls)
    assert counts[10], "the counter must see the report's read"
    assert len(counts[30]) == len(counts[10]), sorted(set(counts[30]) - set(counts[10]))
    assert len(asked) == 9 + 29  # each step but the one of the report, in both runs


@pytest.mark.parametrize("seed", range(5))
def test_the_demo_is_stable_and_never_at_risk(seed, demo_result):
    """The demo as it is (120 steps, 32 px), five seeds: the warning thresholds raise no false alarm.
    Seed 0 is the demo's own: its run is demo_result's."""
    cfg, res, _ = demo_result
    assert cfg.training.seed == 0
    if seed != 0:
        res = run_training(load_config(DEMO, [f"training.seed={seed}"]), device="cpu")
    assert res.verdict == "stable"
    assert not res.at_risk, (res.at_risk_signal, res.at_risk_step, res.signals)


def test_the_early_warning_line_says_what_crossed_what_and_that_it_is_no_verdict():
    cfg = load_config(DEMO, ["training.steps=5", "training.report_interval=5", "monitor.warn_max_logit=0.001"])
    lines: list[str] = []
    r = run_training(cfg, device="cpu", log=lines.append)
    assert r.at_risk_signal == "max_logit" and r.at_risk_step == 0
    head = [ln for ln in lines if ln.startswith("step ")][-1]
    assert "warning, not a verdict: max_logit " in head
    assert "crossed monitor.warn_max_logit=0.001 at step 0" in head and "at risk:" not in head
    assert f"{r.signals['max_logit']:.3g} (largest so far)" in head
