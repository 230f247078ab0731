"""The Tune trainable: one trial is one `run_training` call on the base config + sampled keys.

Runs in a Ray worker. It adapts the training loop's `report(metrics, checkpoint_dir)` to
`ray.tune.report`, resumes from `ray.tune.get_checkpoint()`, and adds the node id. It logs to
nothing else: MLflow is written by the driver.
"""
from __future__ import annotations

import shutil
import tempfile
from typing import Any

import ray
from ray import tune

from stablesweep.sweep.space import apply_params
from stablesweep.vocab import FINISHED


def trial_device() -> str:
    """cuda when Ray gave this trial a GPU (or a fraction of one), else cpu."""
    try:
        return "cuda" if ray.get_gpu_ids() else "cpu"
    except Exception:  # outside a Ray worker
        return "cpu"


def sweep_trial(config: dict[str, Any], *, base: dict, base_dir: str = ".", source: str = "<sweep>") -> None:
    """Train one sampled configuration; every report goes to Tune with a checkpoint."""
    from stablesweep.train import run_training  # torch is imported in the worker only

    cfg = apply_params(base, config, source=source, base_dir=base_dir)
    node_id = ray.get_runtime_context().get_node_id()
    device = trial_device()

    def report(metrics: dict, checkpoint: str | None) -> None:
        m = dict(metrics)
        m[FINISHED] = bool(m.pop("done", False))  # Tune owns `done`
        m["node_id"] = node_id
        m["device"] = device
        ckpt = tune.Checkpoint.from_directory(checkpoint) if checkpoint else None
        tune.report(m, checkpoint=ckpt)

    work = tempfile.mkdtemp(prefix="stablesweep-trial-")
    try:
        resume_from = None
        restored = tune.get_checkpoint()
        if restored is not None:
            resume_from = restored.to_directory(f"{work}/restored")
        run_training(cfg, report=report, device=device, checkpoint_dir=f"{work}/checkpoints",
                     resume_from=resume_from)
    finally:
        shutil.rmtree(work, ignore_errors=True)
