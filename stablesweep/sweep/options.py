"""The options of a sweep and of a ramp, a field a flag of `stablesweep sweep` and `stablesweep ramp`.

What both share (the base config, where trials run, where the files and MLflow go) is
`RunOptions`, which `SweepOptions` and `RampOptions` extend with their own fields; the checks of
`placement` and the Ray session of `session` read it. Plain data: no Ray, so the CLI builds them
before Ray is imported.

Default layout: sweeps in runs/sweeps/NAME, ramps in runs/ramps/NAME, one MLflow store for both
in runs/mlflow.db (an explicit --out DIR keeps its own DIR/mlflow.db).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import ClassVar, Self

from stablesweep.vocab import SAFETY, InputError


@dataclass(kw_only=True)
class RunOptions:
    """The options of a run of trials (a sweep's trials, a ramp's probes) on a local Ray or a cluster."""

    DEFAULT_DIR: ClassVar[str] = "runs/sweeps"  # the default --out, and --local-dir where --out is a URI

    config: str
    overrides: list[str] = field(default_factory=list)  # --set KEY=VALUE
    steps: int | None = None  # the step budget of every trial (sets training.steps)
    # ---- where trials run ----
    address: str | None = None  # a Ray cluster to join (default: a local Ray started here)
    num_cpus: int | None = None  # CPUs of a local Ray started here (default: all)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    workers_per_trial: int = 1  # > 1: a trial is that many DDP workers (Ray Train), of --cpus/--gpus-per-trial each
    max_concurrent: int | None = None  # default: as many trials as the cluster fits
    resources_per_trial: dict[str, float] | None = None  # custom Ray resources a trial needs
    reuse: bool = True  # a trial's worker process runs the next trial (--no-reuse: a new process a trial)
    max_failures: int | None = None  # retries of a failed trial from its checkpoint (default: 2 on
    #                                  a multi-node cluster, where a worker node may be lost; 1 on one node)
    # ---- where files go ----
    out: str = DEFAULT_DIR
    shared_storage: bool = False  # the user declares: the --out path is the same storage on every node
    local_dir: str | None = None  # the run's own files when --out is a URI (default DEFAULT_DIR)
    name: str | None = None
    mlflow: str | None = None  # tracking URI (default: `default_tracking_uri`)
    experiment: str = "stablesweep"  # MLflow experiment

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Self:
        """From a command's parsed flags: each flag sets the field of its name (the rest keep their defaults)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})

    def default_tracking_uri(self, out: Path) -> str:
        """The MLflow store when --mlflow is not given: OUT/mlflow.db, except for the default --out
        (runs/sweeps, runs/ramps; or the default --local-dir of a URI --out), whose runs share
        runs/mlflow.db: sweeps and ramps in one store, so a plain `stablesweep compare` sees both."""
        for default in (SweepOptions.DEFAULT_DIR, RampOptions.DEFAULT_DIR):
            if Path(out).resolve() == Path(default).resolve():
                out = Path(default).parent
        return f"sqlite:///{Path(out).resolve() / 'mlflow.db'}"

    def config_overrides(self) -> list[str]:
        """--set, then --steps as training.steps."""
        return list(self.overrides) + ([f"training.steps={self.steps}"] if self.steps else [])

    def run_name(self, kind: str) -> str:
        """--name, or CONFIG-KIND-TIMESTAMP: the run's directory name, so letters, digits, '.', '_' and '-'."""
        name = self.name or f"{Path(self.config).stem}-{kind}-{_dt.datetime.now():%Y%m%d-%H%M%S}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise InputError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only")
        return name


@dataclass(kw_only=True)
class SweepOptions(RunOptions):
    """The options of `stablesweep sweep` (a field a flag); where trials run and write: `RunOptions`."""

    space: str
    samples: int | None = None  # default: the grid size for --sampler grid, else 16
    sampler: str | None = None  # default tpe
    resume: bool = False
    asha: bool | None = None  # default on
    asha_grace: int | None = None  # reports before ASHA may stop a trial (default: half the budget)
    asha_rf: float | None = None  # ASHA reduction factor (default 2: the worse half stops)
    seed: int | None = None  # the sampler's seed (default 0)
    replicates: int | None = None  # K seeds around each setting's bracket, then P(fails | lr) (default 0: none)
    target_steps: int | None = None  # the budget the answer is for (default: the trials' own, training.steps
    #                                  after --steps: no rungs); longer: the ramp's rungs and confirmation after
    max_steps: int | None = None  # the longest probe the rungs may run (default: the target); below it: extrapolated
    confirm: int | None = None  # seeds the recommended config runs at the target (0: off; default 2 where the
    #                             target is longer than the trials, else 0)


@dataclass(kw_only=True)
class RampOptions(RunOptions):
    """The options of `stablesweep ramp` (a field a flag); where probes run and write: `RunOptions`."""

    DEFAULT_DIR: ClassVar[str] = "runs/ramps"

    out: str = DEFAULT_DIR
    space: str | None = None
    lr_start: float = 1e-6
    lr_stop: float = 1.0
    ladder: str = "1-2-5"
    climb: str | None = None  # gallop | step (default: gallop in restart mode, step in continue mode)
    resolution: float = 1.25
    parallel: int = 2
    safety: float = SAFETY
    mode: str = "restart"
    first_pass: str | None = None  # "range-test"
    range_steps: int | None = None  # steps of the range test (default: the probe budget)
    evaluate: bool = False  # evaluate each probe at its end (off: the verdict needs no eval)
    replicates: int = 0  # K seeds at the lrs around each bracket, then P(fails | lr) (0: none)
    samples: int | None = None  # lrs sampled below each setting's largest safe lr before it recommends one
    # (0: none; default: `samples_of`)
    target_steps: int | None = None  # the budget the answer is for (default: the config's own, before --steps)
    max_steps: int | None = None  # the longest probe the ramp may run (default: the target); below it: extrapolated
    confirm: int | None = None  # seeds the recommended config runs at the target first (0: off; default: 2 where
    # the target is longer than the probes, else 0)
    resume: bool = False  # continue the ramp --name (default: the newest) in --out where it stopped


DEFAULT_RAMP_SAMPLES = 3


def samples_of(opts: RampOptions) -> int:
    """The lrs a ramp samples below each setting's largest safe lr: --samples, else 3 rounded up to a
    whole number of batches (`batch_of`), so no probe slot waits idle for the batch's last probe: 4
    with --parallel 2 (`sample_lrs` makes up an lr it leaves out as one already run)."""
    if opts.samples is not None:
        return opts.samples
    per = batch_of(opts)
    return -(-DEFAULT_RAMP_SAMPLES // per) * per


def batch_of(opts: RampOptions) -> int:
    """The probes of one setting a ramp runs at once: --parallel, at most --max-concurrent; one in
    continue mode (each rung starts from the last stable one)."""
    return 1 if opts.mode == "continue" else max(1, min(opts.parallel, opts.max_concurrent or opts.parallel))
