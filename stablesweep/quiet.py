"""Only stablesweep's own lines on the terminal, unless `--verbose`.

The libraries a sweep drives each talk on their own: Ray warns about token authentication at every
local start and that Tune's `process_trial_result` "took 0.5 s" (on a busy 2-core machine, every
few trials); MLflow logs "Creating initial MLflow database tables..." and alembic its migrations at
INFO; tensorboardX (Tune's default TBX logger) warns "NaN or Inf found in input tensor." for every
non-finite metric of a diverged trial. None of it needs an answer from the user, and our own
output already says what happened. `quiet()` raises those loggers' levels (it changes no security
setting: Ray's token mode is whatever the environment says) and hides the warnings; `quiet(True)`
(`--verbose`) leaves every logger as the libraries set it.

Loggers are addressed by their full module names and given explicit levels, so a library that
configures its root logger on import (`mlflow` and `ray` do) leaves them as set here.
"""
from __future__ import annotations

import logging
import warnings

# logger name -> the lowest level that still reaches the terminal by default
QUIET_LEVELS = {
    "ray._private.authentication": logging.ERROR,  # "Token authentication is disabled/enabled ..."
    "ray.tune": logging.ERROR,  # warn_if_slow's "process_trial_result took 0.5 s", Tune's INFO chatter
    "ray.train": logging.ERROR,
    "ray.air": logging.ERROR,
    "mlflow.store.db.utils": logging.WARNING,  # "Creating initial MLflow database tables..."
    "mlflow.tracking": logging.WARNING,
    "alembic": logging.WARNING,  # "Context impl SQLiteImpl.", "Running upgrade ..."
    "tensorboardX": logging.ERROR,  # "NaN or Inf found in input tensor." (a diverged trial's metrics)
    "optuna": logging.WARNING,
    "stablesweep.data.manifests": logging.WARNING,  # "images not checked one by one" per split
}
# warnings.warn messages hidden by default (regular expressions matched at the message's start)
QUIET_WARNINGS = (r"NaN or Inf found in input tensor",)

_applied: dict[str, int] = {}


def quiet(verbose: bool = False) -> None:
    """Hide the libraries' warnings and INFO lines (`verbose=False`), or show them again
    (`verbose=True`: the loggers' earlier levels restored; the hidden `warnings` stay hidden).

    >>> import logging
    >>> quiet()
    >>> logging.getLogger("tensorboardX").isEnabledFor(logging.WARNING)
    False
    >>> quiet(verbose=True)
    >>> logging.getLogger("tensorboardX").isEnabledFor(logging.WARNING)
    True
    """
    if verbose:
        for name, level in _applied.items():
            logging.getLogger(name).setLevel(level)
        _applied.clear()
        return
    for name, level in QUIET_LEVELS.items():
        logger = logging.getLogger(name)
        _applied.setdefault(name, logger.level)
        logger.setLevel(level)
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
