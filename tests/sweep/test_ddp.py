"""Data-parallel trials: the monitor's reduction and the batch split (no processes), and real
2-worker trials (Ray Train's TorchTrainer in Tune, gloo, CPU) on the session's Ray: the verdict and
first bad step of a one-process run, a NaN on one rank stops both, a failed trial resumes from its
checkpoint."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch

from stablesweep.config import load_config
from stablesweep.data.mixing import MixingBatchSampler
from stablesweep.ddp import reduce_monitor, spread_nonfinite
from stablesweep.stability.monitor import FIELDS
from stablesweep.train import run_training
from tests.conftest import DEMO
from tests.sweep.ddp_models import CRASH_MARKER, POISON_STEP

FIXED = ["training.report_interval=5", "training.warmup_steps=0", "training.schedule=constant",
         "datasets.skip_evaluation=true", "training.steps=10", "monitor.initial_batches=1"]
POISONED = FIXED + ["model.factory=tests.sweep.ddp_models:poisoned"]
I = {name: i for i, name in enumerate(FIELDS)}


def row(**values) -> torch.Tensor:
    v = torch.zeros(len(FIELDS), dtype=torch.float64)
    for name in ("first_bad", "first_explosion", "warn_max_logit", "warn_logsumexp"):
        v[I[name]] = -1
    for name, x in values.items():
        v[I[name]] = x
    return v


def test_the_monitor_state_is_reduced_field_by_field():
    # rank 1's loss went bad at step 3 (kind 1), which rank 0 saw as a bad gradient (kind 2); rank 0's
    # loss went bad at step 6, seen by rank 1 as a bad gradient: 2 skipped steps, both bad losses
    a = row(steps=8, loss_bad=1, grad_bad=1, first_bad=3, first_kind=2, ema=2.0, max_loss=5.0, first_explosion=-1,
            warn_max_logit=4, overflow=2)
    b = row(steps=8, loss_bad=1, grad_bad=1, first_bad=3, first_kind=1, ema=4.0, max_loss=7.0, first_explosion=6,
            warn_max_logit=-1, overflow=1)
    out = reduce_monitor(torch.stack([a, b]))
    assert out[I["steps"]] == 8 and out[I["first_bad"]] == 3 and out[I["first_kind"]] == 1
    assert out[I["loss_bad"]] + out[I["grad_bad"]] == 2
    assert out[I["ema"]] == 3.0 and out[I["max_loss"]] == 7.0
    assert out[I["first_explosion"]] == 6 and out[I["warn_max_logit"]] == 4  # the earliest step any rank set
    assert out[I["overflow"]] == 1
    assert reduce_monitor(torch.stack([row(), row()]))[I["first_bad"]] == -1  # none set: none


def test_a_non_finite_loss_makes_the_gradients_non_finite_and_a_finite_one_leaves_them_exact():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    logits = torch.stack([w * 3, w]).masked_fill(torch.tensor([[True, False], [False, False]]), -torch.inf)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]))  # a masked target: inf, finite grads
    loss.backward(retain_graph=True)
    assert math.isinf(loss.item()) and torch.isfinite(w.grad).all()
    w.grad = None
    spread_nonfinite(loss).backward()
    assert torch.isnan(w.grad).all()
    w.grad = None
    finite = (w ** 2).sum()
    spread_nonfinite(finite).backward()
    assert torch.equal(w.grad, 2 * w.detach())


def test_the_ranks_split_every_global_batch():
    def batches(shard):
        it = iter(MixingBatchSampler([40, 24], 8, seed=1, start_step=5, shard=shard))
        return [next(it) for _ in range(12)]
    whole, r0, r1 = batches((0, 1)), batches((0, 2)), batches((1, 2))
    assert all(len(a) == len(b) == 4 and sorted(a + b) == sorted(w) for w, a, b in zip(whole, r0, r1))


# ---- 2-worker trials on Ray --------------------------------------------------------------------

def fit(tmp_path: Path, name: str, overrides: list[str], max_failures: int = 0):

    from stablesweep.sweep.options import RunOptions
    from stablesweep.sweep.session import make_tuner, trial_trainable

    cfg = load_config(DEMO, overrides)
    trainable = trial_trainable(cfg, RunOptions(config=str(DEMO), workers_per_trial=2, cpus_per_trial=0.5))
    tuner = make_tuner(trainable, name=name, storage=str(tmp_path), search_alg=None, num_samples=1,
                       max_concurrent=1, max_failures=max_failures)
    result = tuner.fit()[0]
    assert result.error is None, result.error
    assert cpus_freed(), "the trial's workers still hold CPUs"  # a leaked placement group holds them till Ray ends
    reports = [json.loads(line) for line in (Path(result.path) / "result.json").open()]
    return result, reports


def cpus_freed(within: float = 30.0) -> bool:
    """Whether every CPU of the session's Ray is free again within `within` seconds."""
    import ray

    deadline = time.monotonic() + within
    while ray.available_resources().get("CPU", 0) < ray.cluster_resources()["CPU"]:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_a_nan_on_one_rank_stops_both_with_the_one_process_verdict_and_step(ray_cluster, tmp_path):
    one = run_training(load_config(DEMO, POISONED), device="cpu")
    assert (one.verdict, one.reason, one.first_bad_step) == ("diverged", "nonfinite_loss", POISON_STEP)
    result, reports = fit(tmp_path, "poisoned", POISONED)
    last = result.metrics
    assert (last["verdict"], last["reason"], last["first_bad_step"]) == (one.verdict, one.reason, one.first_bad_step)
    assert [r["step"] for r in reports] == [5] and last["nonfinite_steps"] == 1  # stopped at the first report
    assert last["device"] == "cpu" and last["finished"]


@pytest.mark.faults
def test_a_failed_data_parallel_trial_resumes_from_its_checkpoint(ray_cluster, tmp_path):
    CRASH_MARKER.touch()
    try:
        result, reports = fit(tmp_path, "crash", FIXED + ["model.factory=tests.sweep.ddp_models:crash_once"],
                              max_failures=1)
        assert not CRASH_MARKER.exists()  # rank 1 crashed at its step 7
    finally:
        CRASH_MARKER.unlink(missing_ok=True)
    # the retry went on from the step-5 checkpoint (a restart would report step 5 again)
    assert [r["step"] for r in reports] == [5, 10]
    assert result.metrics["finished"] and result.metrics["budget_steps"] == 10
    assert result.checkpoint is not None
