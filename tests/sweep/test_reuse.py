"""A trial's worker reused for the next trial (Tune's reuse_actors, as `make_tuner` sets it) trains
bit for bit as a fresh worker: config A, then B, then A again with the same seed in one worker give
the same reports for both A's, and the same as A in a worker of its own (--no-reuse); torch's
threads are the trial's CPUs. Real Tune runs on the session's Ray, the demo config on CPU."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from stablesweep.config import load_config
from stablesweep.sweep.options import RunOptions
from stablesweep.sweep.session import ListedSearcher, make_tuner, trial_trainable
from stablesweep.sweep.trainable import THREADS
from stablesweep.vocab import LR_KEY
from tests.conftest import DEMO

FIXED = ["training.report_interval=5", "training.steps=10", "datasets.skip_evaluation=true"]
A = {LR_KEY: 0.01, "loss.masking": "slice"}
B = {LR_KEY: 0.05, "loss.masking": "large_negative", "training.seed": 7}
# what a report says about training (not when or where it ran)
TRAINING_KEYS = ("step", "loss", "last_loss", "grad_norm", "max_grad_norm_seen", "objective", "initial_loss",
                 "train_flops", "lr", "verdict")


def run(tmp_path: Path, name: str, configs: list[dict], *, reuse: bool, cpus: float = 1.0) -> list[list[dict]]:
    """The reports of each trial of `configs`, run one at a time in the order given."""
    cfg = load_config(DEMO, FIXED)
    trainable = trial_trainable(cfg, RunOptions(config=str(DEMO), cpus_per_trial=cpus, reuse=reuse))
    tuner = make_tuner(trainable, name=name, storage=str(tmp_path), search_alg=ListedSearcher(configs),
                       num_samples=len(configs), max_concurrent=1, max_failures=0)
    grid = tuner.fit()
    results = sorted(grid, key=lambda r: Path(r.path).stat().st_mtime)  # in the order they ran
    assert all(r.error is None for r in results), [r.error for r in results]
    return [[json.loads(line) for line in (Path(r.path) / "result.json").open()] for r in results]


def training(reports: list[dict]) -> list[tuple]:
    return [tuple(r[k] for k in TRAINING_KEYS) for r in reports]


@pytest.fixture(scope="module")
def not_reused(ray_cluster, tmp_path_factory) -> list[list[dict]]:
    """A, then A again, each in a worker of its own (--no-reuse)."""
    return run(tmp_path_factory.mktemp("not_reused"), "own", [A, A], reuse=False)


def test_a_reused_worker_trains_bit_for_bit_as_a_fresh_one(ray_cluster, tmp_path, not_reused):
    a1, b, a2 = run(tmp_path, "reused", [A, B, A], reuse=True)
    assert len({r["pid"] for trial in (a1, b, a2) for r in trial}) == 1  # one worker ran all three
    assert [r["config"] for r in (a1[0], b[0], a2[0])] == [A, B, A]
    assert training(a1) == training(a2)  # exact: floats compared as JSON wrote them
    assert training(a1) != training(b)
    fresh = not_reused[0]
    assert fresh[0]["pid"] != a1[0]["pid"]
    assert training(fresh) == training(a1)
    assert {r[THREADS] for r in a1 + b + a2 + fresh} == {1}


def test_without_reuse_every_trial_has_a_worker_of_its_own(not_reused):
    assert len({t[0]["pid"] for t in not_reused}) == 2
    assert training(not_reused[0]) == training(not_reused[1])


def test_torch_threads_are_the_trials_cpus(ray_cluster, tmp_path):
    [two] = run(tmp_path, "two", [A], reuse=True, cpus=2)
    [half] = run(tmp_path, "half", [A], reuse=True, cpus=0.5)
    assert {r[THREADS] for r in two} == {2}
    assert {r[THREADS] for r in half} == {1}  # at least one


def test_use_cpus_sets_torchs_threads_whatever_they_were():
    """What a trial's worker does first: OMP_NUM_THREADS exported where Ray started, or an earlier
    trial's threads, do not decide a trial's threads."""
    import torch

    from stablesweep.sweep.trainable import use_cpus

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert use_cpus(2) == 2 and torch.get_num_threads() == 2
        assert use_cpus(0.25) == 1 and torch.get_num_threads() == 1
        assert use_cpus(1.99) == 1 and torch.get_num_threads() == 1  # whole CPUs only
    finally:
        torch.set_num_threads(before)


def test_a_ramps_probes_keep_their_workers_batch_after_batch(ray_cluster, tmp_path, new_store):
    """Two probes at a time, batch after batch: Tune keeps one idle worker, so a batch whose last
    probe ended before its next batch was planned ended its other worker, and the next batch imported
    torch again in a new one (8 workers for the demo ramp's 24 probes). The ramp's searcher reads a
    probe's verdict in its last report, diverged ones included, and hands out the next batch before
    Tune ends it: every probe runs in one of the two workers of the first batch."""
    from stablesweep.sweep.options import RampOptions
    from stablesweep.sweep.ramp_runner import run_ramp

    new_store(tmp_path / "mlflow.db")
    # the demo's own schedule at 30 steps: stable to 0.8 (0.4 stalls), diverged at 1.6 and 3.2, stalled between
    opts = RampOptions(config=str(DEMO), lr_start=0.1, lr_stop=30.0, ladder="x2", climb="step", steps=30,
                       target_steps=30, overrides=["datasets.skip_evaluation=true"], out=str(tmp_path), name="w",
                       parallel=2, max_concurrent=2, samples=0, confirm=0)
    res = run_ramp(opts, echo=lambda _: None)
    rows = [json.loads(line.splitlines()[0]) for line in
            (p.read_text() for p in (res.ramp_dir / "tune").rglob("trial_*/result.json"))]
    verdicts = {p.verdict for p in res.settings[0].probes}
    assert len(rows) == len(res.settings[0].probes) >= 6 and {"stable", "diverged"} <= verdicts
    assert len({r["pid"] for r in rows}) == 2
