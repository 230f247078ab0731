"""A sweep's plan: every check of the config, the space and the options before Ray starts, and the
names and paths decided (`plan_sweep` -> `SweepPlan`); for --resume, the sweep found in --out and
checked to be the same. Writes nothing. The sweep's layout and its run: runner.py.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from stablesweep.cluster.storage import storage_paths
from stablesweep.config import Config, load_config, total_steps
from stablesweep.sweep.budgets import Budgets, check_budget_flags, check_budgets, confirm_of
from stablesweep.sweep.options import SweepOptions
from stablesweep.sweep.placement import check_run_options, ephemeral_path_notes
from stablesweep.sweep.space import SearchSpace, load_space
from stablesweep.vocab import LR_KEY, SAMPLERS, SEED_KEY, InputError

DEFAULT_SAMPLES = 16
STATE_FILE = "sweep.json"
REPLICATE_SAMPLERS = ("grid", "qmc")  # samplers whose trials map the region evenly, whatever they find


@dataclass
class SweepPlan:
    opts: SweepOptions
    name: str
    out: Path
    sweep_dir: Path
    cfg: Config
    base: dict
    space: SearchSpace
    sampler: str
    samples: int
    seed: int
    asha: bool
    asha_grace: int | None
    asha_rf: float
    n_reports: int | None
    tracking_uri: str
    resume: bool
    state: dict
    notes: list[str] = field(default_factory=list)
    storage: str = ""  # Tune's storage_path: str(out), or the --out URI
    replicates: int = 0  # K seeds around each bracket (0: none)
    budgets: Budgets | None = None  # the trials' budget (`probe`) and the target; rungs where the target is longer
    confirm: int = 0  # seeds at the target for each combination's recommended lr (0: not confirmed)

    @property
    def rungs(self) -> bool:
        """Whether the answer is for a target longer than the trials: the rungs run after them."""
        return self.budgets is not None and self.budgets.target > self.budgets.probe

    @property
    def experiment_path(self) -> str:
        """Tune's experiment: a local directory (the sweep dir) or STORAGE_URI/NAME."""
        return str(self.sweep_dir) if self.storage == str(self.out) else f"{self.storage}/{self.name}"

    @property
    def study_url(self) -> str:
        return f"sqlite:///{self.sweep_dir / 'optuna.db'}"


def plan_sweep(opts: SweepOptions) -> SweepPlan:
    """Check the config, the space and the options; decide names and paths. Writes nothing."""
    if opts.sampler is not None and opts.sampler not in SAMPLERS:
        raise InputError(f"--sampler {opts.sampler!r}: expected one of {', '.join(SAMPLERS)}")
    if opts.replicates is not None and opts.replicates < 0:
        raise InputError(f"--replicates {opts.replicates}: must be at least 0 (0: no replicates)")
    if opts.replicates and not opts.resume and (opts.sampler or "tpe") not in REPLICATE_SAMPLERS:
        raise InputError(f"--replicates with --sampler {opts.sampler or 'tpe'}: replicates need --sampler grid or "
                         "qmc, whose trials map each combination's lrs evenly whatever they find; tpe crowds its "
                         "trials where the loss is best and random leaves gaps, so the bracket they leave is no "
                         "place to measure the boundary. Use `stablesweep ramp --replicates K` to measure it "
                         "for a config")
    for flag, v, ok in (("--samples", opts.samples, lambda x: x >= 1), ("--steps", opts.steps, lambda x: x >= 1),
                        ("--asha-grace", opts.asha_grace, lambda x: x >= 1),
                        ("--asha-rf", opts.asha_rf, lambda x: x > 1)):
        if v is not None and not ok(v):
            raise InputError(f"{flag} {v}: out of range")
    check_budget_flags(opts)
    check_run_options(opts)

    cfg = load_config(opts.config, opts.config_overrides())
    own_steps = load_config(opts.config, list(opts.overrides)).training.steps if opts.steps else None
    space = load_space(opts.space)
    space.validate(cfg)
    if opts.replicates and LR_KEY not in space.keys:
        raise InputError(f"--replicates: {opts.space} has no {LR_KEY} axis: there is no lr boundary to replicate")
    if opts.replicates and SEED_KEY in space.keys:
        raise InputError(f"--replicates: {opts.space} sweeps {SEED_KEY}; the replicates vary it themselves")
    base = cfg.to_dict()
    out, storage = storage_paths(opts.out, opts.local_dir, opts.DEFAULT_DIR)

    if opts.resume:
        sweep_dir = _find_sweep(out, opts.name)
        state = json.loads((sweep_dir / STATE_FILE).read_text())
        _check_same(state, base, space, opts, sweep_dir)
        if state.get("storage", storage) != storage:
            raise InputError(f"--resume: sweep {sweep_dir.name} keeps Tune's experiment in {state['storage']}, "
                             f"not {storage}; resume with --out {state['storage']}")
        name = state["name"]
        sampler, samples, seed = state["sampler"], int(state["samples"]), int(state["seed"])
        asha, grace, rf = bool(state["asha"]), state.get("asha_grace"), float(state.get("asha_rf", 2.0))
        replicates = int(state.get("replicates", 0))
        target, max_steps, confirm = state.get("target_steps"), state.get("max_steps"), state.get("confirm")
    else:
        name = opts.run_name(Path(opts.space).stem)
        sweep_dir = out / name
        if (sweep_dir / STATE_FILE).exists():
            raise InputError(f"--name {name}: a sweep already exists at {sweep_dir}; pass --resume to continue it, "
                             "or choose another --name")
        sampler = opts.sampler or "tpe"
        seed = 0 if opts.seed is None else int(opts.seed)
        asha = True if opts.asha is None else bool(opts.asha)
        grace, rf = opts.asha_grace, float(opts.asha_rf or 2.0)
        samples = opts.samples or DEFAULT_SAMPLES
        replicates = opts.replicates or 0
        target, max_steps, confirm = opts.target_steps, opts.max_steps, opts.confirm
        state = {}
    notes = []
    if sampler == "grid" and not opts.resume:  # a resumed sweep keeps the samples it began with
        size = space.grid_size()  # refuses continuous axes
        if opts.samples is None:
            samples = size
        elif opts.samples > size:
            notes.append(f"--samples {opts.samples} is more than the {size} grid points: running {size}")
            samples = size
    t = cfg.training
    if t.steps:  # the budgets checked before the data where the trials' budget is known without it
        budgets, confirm = _budgets(opts, space, t.steps, target, max_steps, confirm, notes, own_steps)
    from stablesweep.data.check import preflight

    train_size = preflight(cfg)  # train's data check, without torch: a data problem named here, not in every trial
    if not t.steps:  # epochs x steps an epoch, as train counts them
        budgets, confirm = _budgets(opts, space, total_steps(cfg, train_size), target, max_steps, confirm, notes)
    n_reports = math.ceil(t.steps / t.report_interval) if t.steps else None
    uri = opts.mlflow or (state.get("tracking_uri") if opts.resume else None) or opts.default_tracking_uri(out)
    notes += ephemeral_path_notes(opts)
    return SweepPlan(opts=opts, name=name, out=out, sweep_dir=sweep_dir, cfg=cfg, base=base, space=space,
                     sampler=sampler, samples=samples, seed=seed, asha=asha, asha_grace=grace, asha_rf=rf,
                     n_reports=n_reports, tracking_uri=uri, resume=opts.resume, state=state, notes=notes,
                     storage=storage, replicates=replicates, budgets=budgets, confirm=confirm)


def _budgets(opts: SweepOptions, space: SearchSpace, probe: int, target: int | None, max_steps: int | None,
             confirm: int | None, notes: list[str], own_steps: int | None = None) -> tuple[Budgets, int]:
    """The sweep's budgets (its trials' budget `probe`, the target: --target-steps, default `probe`)
    and its --confirm, checked as the ramp's (`budgets.check_budgets`)."""
    given = replace(opts, target_steps=target, max_steps=max_steps, confirm=confirm)  # a resumed sweep's own
    target = target or probe
    check_budgets(given, probe, target)
    budgets = Budgets(probe, target, min(target, max_steps or target))
    if own_steps and own_steps > probe and not given.target_steps:
        notes.append(f"the answer holds for the trials' {probe} steps (--steps); the config trains {own_steps}: "
                     f"add --target-steps {own_steps} for the answer at that budget (rungs and a confirmation)")
    if target > probe:
        if LR_KEY not in space.keys:
            raise InputError(f"--target-steps {target}: {opts.space} has no {LR_KEY} axis: the rungs promote the lrs "
                             "around each combination's bracket, and there is none")
        if SEED_KEY in space.keys:
            raise InputError(f"--target-steps {target}: {opts.space} sweeps {SEED_KEY}; the confirmation at the "
                             "target runs fresh seeds itself")
        if budgets.extrapolated:
            notes.append(f"the target ({target} steps) is beyond --max-steps {max_steps}: the answer is measured up "
                         f"to {budgets.reach} steps and extrapolated from there")
    return budgets, confirm_of(given, budgets)



def _find_sweep(out: Path, name: str | None) -> Path:
    if name:
        d = out / name
        if not (d / STATE_FILE).exists():
            raise InputError(f"--resume --name {name}: no sweep at {d} (no {STATE_FILE})")
        return d
    found = sorted(out.glob(f"*/{STATE_FILE}"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise InputError(f"--resume: no sweep in {out}; pass --out and --name of the sweep to continue")
    return found[-1].parent


def _check_same(state: dict, base: dict, space: SearchSpace, opts: SweepOptions, sweep_dir: Path) -> None:
    def norm(x: Any) -> str:
        return json.dumps(x, sort_keys=True, default=str)

    if norm(state["config"]) != norm(base):
        raise InputError(f"--resume: the config (with --set/--steps) differs from the one sweep {sweep_dir.name} "
                         f"started with ({sweep_dir / 'config.yaml'}); resume with the same, or start a new sweep")
    spec = {k: a.spec() for k, a in space.axes.items()}
    if norm(state["space"]) != norm(spec):
        raise InputError(f"--resume: the search space {opts.space} differs from the one sweep {sweep_dir.name} "
                         f"started with ({sweep_dir / 'space.yaml'})")
    for flag, mine, theirs in (("--sampler", opts.sampler, state["sampler"]), ("--samples", opts.samples, state["samples"]),
                               ("--seed", opts.seed, state["seed"]), ("--no-asha", opts.asha, state["asha"]),
                               ("--replicates", opts.replicates, state.get("replicates", 0)),
                               ("--target-steps", opts.target_steps, state.get("target_steps")),
                               ("--max-steps", opts.max_steps, state.get("max_steps")),
                               ("--confirm", opts.confirm, state.get("confirm"))):
        if mine is not None and mine != theirs:
            raise InputError(f"--resume: {flag} differs from the sweep's own ({theirs}); leave it out to resume")
