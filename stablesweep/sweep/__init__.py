"""Stability sweeps and lr ramps: search spaces, the Tune trial function, the divergence-aware
Optuna searcher, the stopper and scheduler, and the runners that tie them together.

By concern: `space` (search spaces), `options` (what sweeps and ramps share), `placement` (a
trial's resources and the run options checked against the cluster, stablesweep.cluster),
`session` (Ray and the Tuner), `trainable` (the one trial function), `ddp_trial` (a data-parallel
trial), `search` (the Optuna searcher), `stopper` (when a trial stops and its verdict), `records`
(the trial table), `callbacks` (MLflow and progress), `plan` (a sweep's checks and plan before
Ray starts), `recovery` (resume and disk faults), `runner` (the sweep), `ramp` (the ramp's
planner) and `ramp_runner` (the ramp).

`space` needs neither Ray nor torch (a space is checked before Ray starts); the rest import Ray,
so they are loaded on first use.
"""
from stablesweep.sweep.space import SearchSpace, SpaceError, load_space, parse_space

_LAZY = {
    "run_sweep": "stablesweep.sweep.runner",
    "plan_sweep": "stablesweep.sweep.plan",
    "SweepOptions": "stablesweep.sweep.options",
    "SweepResult": "stablesweep.sweep.runner",
    "run_ramp": "stablesweep.sweep.ramp_runner",
    "RampOptions": "stablesweep.sweep.ramp_runner",
    "RampResult": "stablesweep.sweep.ramp_runner",
    "RunOptions": "stablesweep.sweep.options",
    "InputError": "stablesweep.vocab",
    "trials_table": "stablesweep.sweep.records",
    "StabilitySearcher": "stablesweep.sweep.search",
    "DivergenceStopper": "stablesweep.sweep.stopper",
    "StabilityASHA": "stablesweep.sweep.stopper",
    "final_verdict": "stablesweep.sweep.stopper",
    "run_trial": "stablesweep.sweep.trainable",
}

__all__ = ["SearchSpace", "SpaceError", "load_space", "parse_space", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stablesweep.sweep' has no attribute {name!r}")
