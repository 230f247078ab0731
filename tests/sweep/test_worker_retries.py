"""A trial's Ray worker killed under a sweep and a ramp (one machine, the defaults): retried once
from its last checkpoint, then, killed again, an error trial. Real Ray (the session's), Optuna,
MLflow sqlite and training on the demo config."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

from tests.conftest import DEMO
from tests.sweep.test_runner import INTERVAL


class WorkerKiller:
    """Kills trial workers from outside, as a lost process would be: a trial's worker (the pid in
    its Tune result.json) is SIGKILLed once it has written a checkpoint, `kills[i]` times for the
    i-th trial to start (each time in a new worker: Tune's retry)."""

    def __init__(self, exp_dir: Path, kills: list[int]):
        self.exp_dir, self.kills = exp_dir, kills
        self.order: list[str] = []
        self.killed: dict[str, list[int]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=10)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:  # the trial directories, oldest first; the checkpoint ring deletes as we look: look again
                trials = sorted(self.exp_dir.glob("**/trial_*"), key=lambda p: p.stat().st_mtime)
            except OSError:
                trials = []
            for d in trials:
                if d.name not in self.order:
                    self.order.append(d.name)
                i, done = self.order.index(d.name), self.killed.setdefault(d.name, [])
                if i >= len(self.kills) or len(done) >= self.kills[i] or not list(d.glob("checkpoint_*")):
                    continue
                try:
                    last = json.loads((d / "result.json").read_text().splitlines()[-1])
                except (OSError, ValueError, IndexError):
                    continue
                if last.get("pid") not in done and not last.get("finished"):
                    try:
                        os.kill(last["pid"], signal.SIGKILL)
                        done.append(last["pid"])
                    except ProcessLookupError:
                        pass
            time.sleep(0.02)


def test_a_killed_trial_worker_is_retried_once_from_its_checkpoint_then_the_sweep_exits_1(ray_cluster, tmp_path,
                                                                                         mlflow_uri, capsys):
    """On one machine, by default: the first trial's worker is killed twice (retried once from its
    checkpoint, then it ends in error), the second's once (retried from its checkpoint, it ends
    stable). `stablesweep sweep` exits 1 and lists the error trial."""
    from stablesweep.cli import main

    space = tmp_path / "two.yaml"
    space.write_text("training.lr: {grid: [1.0e-3, 1.0e-2]}\n")
    out = tmp_path / "out"
    with WorkerKiller(out / "w", kills=[2, 1]) as killer:
        code = main(["sweep", str(DEMO), "--space", str(space), "--sampler", "grid", "--steps", "100", "--set",
                     f"training.report_interval={INTERVAL}", "--no-asha", "--max-concurrent", "1", "--out", str(out),
                     "--name", "w", "--mlflow", mlflow_uri])
    printed = capsys.readouterr()
    assert [len(killer.killed[t]) for t in killer.order] == [2, 1], (killer.killed, printed.out[-3000:])
    assert code == 1, printed.out[-3000:] + printed.err[-3000:]
    first, second = (t.removeprefix("trial_") for t in killer.order)
    assert printed.out.count("[retry]") == 2 and "from its checkpoint at step" in printed.out
    assert "1 trial(s) ended in error" in printed.err and f"trial {first}" in printed.err
    table = __import__("pandas").read_csv(out / "w" / "trials.csv")
    verdicts = dict(zip(table["trial_id"], table["verdict"]))
    assert verdicts == {first: "error", second: "stable"}
    # the retry went on from the checkpoint: its reports do not start again at the first step
    steps = [json.loads(ln)["step"] for ln in (out / "w" / killer.order[1] / "result.json").open()]
    assert steps[-1] == 100 and steps.count(INTERVAL) == 1


def test_a_killed_probe_worker_is_retried_once_from_its_checkpoint_in_a_ramp(ray_cluster, tmp_path, mlflow_uri):
    """The ramp, on one machine, by default: the first probe's worker is killed once; the probe
    goes on from its checkpoint and ends with its own verdict, and the ramp goes on to its end."""
    from stablesweep.sweep.options import RampOptions
    from stablesweep.sweep.ramp import NEVER_DIVERGED
    from stablesweep.sweep.ramp_runner import run_ramp

    opts = RampOptions(config=str(DEMO), lr_start=0.005, lr_stop=0.01, ladder="x2", steps=100, target_steps=100, parallel=1, samples=0,
                       overrides=[f"training.report_interval={INTERVAL}", "datasets.skip_evaluation=true"],
                       out=str(tmp_path / "out"), name="rk", mlflow=mlflow_uri)
    lines: list[str] = []
    with WorkerKiller(tmp_path / "out" / "rk" / "tune", kills=[1]) as killer:
        res = run_ramp(opts, echo=lines.append)
    assert [len(killer.killed[t]) for t in killer.order[:1]] == [1], lines
    s = res.settings[0]
    assert [(p.lr, p.verdict, p.steps) for p in s.probes] == [(0.005, "stable", 100), (0.01, "stable", 100)], lines
    assert s.status == NEVER_DIVERGED
    retried = tmp_path / "out" / "rk" / "tune" / killer.order[0]
    steps = [json.loads(ln)["step"] for ln in (retried / "result.json").open()]
    assert steps[-1] == 100 and steps.count(INTERVAL) == 1  # from its checkpoint, not from the start
