"""Stability sweeps: search spaces, the Tune trainable, the divergence-aware Optuna searcher, the
stopper and scheduler, and the runner that ties them together.

`space` needs neither Ray nor torch (a space is checked before Ray starts); the rest import Ray,
so they are loaded on first use.
"""
from stablesweep.sweep.space import SearchSpace, SpaceError, load_space, parse_space

_LAZY = {
    "run_sweep": "stablesweep.sweep.runner",
    "plan_sweep": "stablesweep.sweep.runner",
    "SweepOptions": "stablesweep.sweep.runner",
    "SweepResult": "stablesweep.sweep.runner",
    "InputError": "stablesweep.sweep.runner",
    "trials_table": "stablesweep.sweep.runner",
    "StabilitySearcher": "stablesweep.sweep.search",
    "DivergenceStopper": "stablesweep.sweep.stopper",
    "StabilityASHA": "stablesweep.sweep.stopper",
    "final_verdict": "stablesweep.sweep.stopper",
    "sweep_trial": "stablesweep.sweep.trainable",
}

__all__ = ["SearchSpace", "SpaceError", "load_space", "parse_space", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stablesweep.sweep' has no attribute {name!r}")
