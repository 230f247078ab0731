"""The Python API: `stablesweep.train`, `sweep`, `ramp` and `diagnose`, each returning a typed answer.

They run what the commands run (`run_training`, `run_sweep(SweepOptions)`, `run_ramp(RampOptions)`,
the diagnosis) and write the same files. `config` is a path to a YAML config or a dict of the same
shape (its relative paths resolve against the current directory). Config overrides are keyword
arguments whose name holds a double underscore, `training__lr=0.01` for `--set training.lr=0.01`;
any other keyword argument is an option of the command of the same name (`samples=4` for
`--samples 4`). Bad input raises the commands' errors (`stablesweep.vocab.InputError` and its
subclasses: ConfigError, DataError, SpaceError), each naming the file, line or key.

    import stablesweep

    run = stablesweep.train("configs/demo.yaml", training__steps=40)
    run.verdict                      # 'stable'
    stablesweep.train("configs/demo.yaml", training__lr=1e3).first_bad_step   # where it diverged

    found = stablesweep.sweep("configs/demo.yaml", "search_spaces/quick.yaml", samples=8, steps=40)
    found.recommended                # the best stable setting as a config dict (recommended.yaml)
    edge = stablesweep.ramp("configs/demo.yaml", lr_start=1e-3, lr_stop=30, steps=30)
    edge.settings[0]["max_stable_lr"], edge.recommended["config"]["training"]["lr"]
    stablesweep.diagnose("my.yaml").findings

`sweep` and `ramp` start a local Ray (or join `address=`); like the commands they keep the
libraries' warnings and INFO lines off the terminal unless `verbose=True`.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import yaml

from stablesweep.api_inputs import config_file, split_kwargs, unknown

Log = Callable[[str], None] | None

__all__ = ["Diagnosed", "Ramped", "Swept", "Trained", "diagnose", "ramp", "sweep", "train"]


# ---- answers ------------------------------------------------------------------------------------

@dataclass(frozen=True, repr=False)
class Trained:
    """One run's verdict (stable | stalled | diverged), with the reason and first bad step of a
    divergence, the steps run, the objective and progress, the config as run (a dict), the --out
    folder it was written to (None: nothing written), and the full `TrainResult` (`result`)."""

    verdict: str
    reason: str | None
    first_bad_step: int
    steps: int
    objective: float
    progress: float
    config: dict
    out: Path | None
    result: Any = None  # stablesweep.train.TrainResult

    def __repr__(self) -> str:
        how = f" ({self.reason}" + (f" at step {self.first_bad_step}" if self.first_bad_step >= 0 else "") + ")" \
            if self.reason else ""
        return (f"Trained({self.verdict}{how}, {self.steps} steps, objective {self.objective:.4g}, "
                f"progress {self.progress:.2f}" + (f", out={self.out}" if self.out else "") + ")")


@dataclass(frozen=True, repr=False)
class Swept:
    """A sweep's answer: verdict counts, per combination of the categorical axes (`settings`) the
    stable band, the smallest failed lr and the recommended lr, the recommended config as a dict
    and its file, and where everything is (the sweep folder, the MLflow store and parent run).
    `holds_for` is the budget the answer holds for; with a target longer than the trials'
    (`target_steps`), `at_target` holds each combination's answer there (its lr at 5% risk,
    recommended lr, what it holds for and its confirmation), and `recommended` is the target's.
    `region` (analysis.region.Region) and `table` (trials.csv as a DataFrame) hold the rest."""

    name: str
    dir: Path
    counts: dict[str, int]
    settings: list[dict]
    recommended: dict | None
    recommended_path: Path | None
    tracking_uri: str
    parent_run_id: str
    files: dict[str, Path] = field(default_factory=dict)
    region: Any = None
    table: Any = None
    holds_for: str | None = None
    at_target: list[dict] = field(default_factory=list)

    def __repr__(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.counts.items() if v)
        lr = (self.recommended or {}).get("training", {}).get("lr")
        return (f"Swept({self.name}: {counts}; {len(self.settings)} setting(s)"
                + (f"; recommended lr {lr:.3g}" if lr is not None else "; nothing stable")
                + (f" for {self.holds_for}" if self.holds_for else "") + f"; dir={self.dir})")


@dataclass(frozen=True, repr=False)
class Ramped:
    """A ramp's answer: per setting (`settings`, ramp.json's rows) its status, largest stable and
    smallest failed lr and recommended lr, lr at 5% risk, what the answer holds for (`holds_for`:
    the target budget, or "extrapolated from N steps") and its `confirmation`; `recommended` maps
    each setting with a stable lr to its recommended config as a dict, `recommended_paths` to its
    file; the ramp folder and MLflow run."""

    name: str
    dir: Path
    settings: list[dict]
    recommended: dict[str, dict]
    recommended_paths: dict[str, Path]
    tracking_uri: str
    parent_run_id: str
    files: dict[str, Path] = field(default_factory=dict)

    def __repr__(self) -> str:
        rows = "; ".join(f"{x['setting']}: max stable {_lr(x['max_stable_lr'])}, recommended {_lr(x['recommended_lr'])}"
                         for x in self.settings[:4])
        more = f"; +{len(self.settings) - 4} more" if len(self.settings) > 4 else ""
        return f"Ramped({self.name}: {rows}{more}; dir={self.dir})"


def _lr(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


# ---- the four calls -----------------------------------------------------------------------------

def train(config: str | Path | dict, *, out: str | Path | None = None, force: bool = False,
          device: str = "auto", resume: str | Path | None = None, log: Log = print, **kwargs) -> Trained:
    """Train once with the guarded loss and return the verdict, as `stablesweep train` does.

    `out`: write result.json, config.yaml and checkpoints there (an --out that holds an earlier run
    is refused unless `force`); None writes nothing. `log` hears the progress lines (None: silent).
    Config overrides: `training__lr=1e3`, `training__steps=40`.

    >>> train("configs/demo.yaml", training__steps=40, log=None)  # doctest: +SKIP
    Trained(stable, 40 steps, objective 0.9, progress 0.61)
    """
    from stablesweep.commands.train import precision_warning, prepare_out
    from stablesweep.config import load_config
    from stablesweep.train import resolve_device, run_training

    overrides, rest = split_kwargs(kwargs)
    unknown("train", set(rest), set())
    with config_file(config) as path:
        cfg = load_config(path, overrides)
    out = Path(out) if out is not None else None
    if out is not None:
        prepare_out(out, explicit=True, force=force, resuming=resume is not None)
    warning = precision_warning(resolve_device(device).type, cfg.training.precision)
    if warning and log is not None:
        log(warning)
    result = run_training(cfg, device=device, checkpoint_dir=out / "checkpoints" if out else None,
                          resume_from=resume, log=log)
    if out is not None:
        import json

        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(cfg.to_yaml())
        (out / "result.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return Trained(verdict=result.verdict, reason=result.reason, first_bad_step=result.first_bad_step,
                   steps=result.steps, objective=result.objective, progress=result.progress,
                   config=cfg.to_dict(), out=out, result=result)


def sweep(config: str | Path | dict, space: str | Path | dict, *, log: Log = print, verbose: bool = False,
          **kwargs) -> Swept:
    """A stability sweep with Ray Tune + Optuna, as `stablesweep sweep CONFIG --space SPACE` runs it.

    Options are `stablesweep sweep`'s flags by their field names in `SweepOptions`: `samples`,
    `sampler` ('tpe', 'qmc', 'random', 'grid'), `steps`, `out` (default runs/sweeps, MLflow in
    runs/mlflow.db), `name`, `resume`, `asha`, `replicates`, `seed`, `num_cpus` (of the local
    Ray), `max_concurrent`, `cpus_per_trial`, `gpus_per_trial`, `address`, `mlflow`, ... A dict
    `space` is the search space YAML's mapping. Config overrides: `training__report_interval=5`.
    """
    from stablesweep.quiet import quiet
    from stablesweep.sweep.options import SweepOptions
    from stablesweep.sweep.runner import run_sweep

    overrides, opts = split_kwargs(kwargs)
    unknown("sweep", set(opts), _option_names(SweepOptions) - {"config", "space", "overrides"})
    quiet(verbose)
    with config_file(config) as path, config_file(space, "space") as space_path:
        res = run_sweep(SweepOptions(config=str(path), space=str(space_path), overrides=overrides, **opts),
                        echo=log or (lambda s: None))
    return swept(res)


def swept(res) -> Swept:
    """A `sweep.runner` result as the API's `Swept`: the answer as stable_region.json says it."""
    import json

    rec = res.files.get("recommended")
    region_file = json.loads(res.files["json"].read_text())
    settings = [{"setting": g.label, "params": g.key, "counts": g.counts, "min_stable_lr": g.min_stable_lr,
                 "max_stable_lr": g.max_stable_lr, "min_diverged_lr": g.min_diverged_lr,
                 "min_failed_lr": g.min_failed_lr, "recommended_lr": g.recommended_lr,
                 "best_objective": g.best_objective} for g in res.region.groups]
    return Swept(name=res.name, dir=res.sweep_dir, counts=dict(res.counts), settings=settings,
                 recommended=_read_yaml(rec), recommended_path=rec, tracking_uri=res.tracking_uri,
                 parent_run_id=res.parent_run_id, files=dict(res.files), region=res.region, table=res.table,
                 holds_for=region_file.get("holds_for"),
                 at_target=[_row(x) for x in region_file.get("at_target") or []])


def ramp(config: str | Path | dict, *, log: Log = print, verbose: bool = False, **kwargs) -> Ramped:
    """The largest stable lr of each setting by a progressive ramp, as `stablesweep ramp` runs it.

    Options are `stablesweep ramp`'s flags by their field names in `RampOptions`: `lr_start`,
    `lr_stop`, `ladder`, `steps`, `space` (a path or a dict: its categorical axes give the
    settings), `parallel`, `resolution`, `mode`, `replicates`, `out` (default runs/ramps, MLflow
    in runs/mlflow.db), `name`, `resume` (continue the stopped ramp `name`), `num_cpus`, ... Config
    overrides: `training__warmup_steps=0`. A ramp stopped by Ctrl-C raises KeyboardInterrupt, its
    state saved for `resume=True`.
    """
    from stablesweep.quiet import quiet
    from stablesweep.sweep.options import RampOptions
    from stablesweep.sweep.ramp_runner import run_ramp

    overrides, opts = split_kwargs(kwargs)
    unknown("ramp", set(opts), _option_names(RampOptions) - {"config", "overrides"})
    quiet(verbose)
    space = opts.pop("space", None)
    with config_file(config) as path, (config_file(space, "space") if space is not None else nullcontext()) as sp:
        res = run_ramp(RampOptions(config=str(path), space=str(sp) if sp else None, overrides=overrides, **opts),
                       echo=log or (lambda s: None))
    if res.interrupted:
        raise KeyboardInterrupt(f"ramp {res.name} stopped; continue it with stablesweep.ramp(..., "
                                f"name={res.name!r}, resume=True)")
    # each setting's recommended file, as ramp.json names it (None where nothing is recommended)
    paths = {x["setting"]: res.ramp_dir / x["recommended_file"] for x in res.summary if x.get("recommended_file")}
    return Ramped(name=res.name, dir=res.ramp_dir, settings=[_row(x) for x in res.summary],
                  recommended={k: _read_yaml(p) for k, p in paths.items()}, recommended_paths=paths,
                  tracking_uri=res.tracking_uri, parent_run_id=res.parent_run_id, files=dict(res.files))


@dataclass(frozen=True, repr=False)
class Diagnosed:
    """What `stablesweep.diagnose` found: `healthy` (no error or warning), the findings (each with
    severity, title, evidence, fix), the exit status `stablesweep diagnose` would give, and the
    fixed config: its changes as a dict of dotted keys, and its path when `out` was given."""

    healthy: bool
    exit_code: int
    findings: list  # of stablesweep.diagnose.Finding
    fixed: dict = field(default_factory=dict)  # dotted key -> value in <config>_fixed.yaml
    fixed_path: Path | None = None
    diagnosis: Any = None  # stablesweep.diagnose.Diagnosis

    def __repr__(self) -> str:
        counts = {s: sum(f.severity == s for f in self.findings) for s in ("error", "warning", "info")}
        found = ", ".join(f"{n} {s}{'s' if n > 1 else ''}" for s, n in counts.items() if n) or "no findings"
        codes = ", ".join(f.code for f in self.findings if f.severity in ("error", "warning"))[:120]
        return (f"Diagnosed({'healthy' if self.healthy else 'not healthy'}: {found}"
                + (f" [{codes}]" if codes else "") + (f", fixed={self.fixed_path}" if self.fixed_path else "") + ")")


def diagnose(config: str | Path | dict, *, probe_steps: int = 0, region: str | Path | None = None,
                    out: str | Path | None = None, force: bool = False, device: str = "auto",
                    log: Callable[[str], None] | None = print, **kwargs) -> Diagnosed:
    """Diagnose a config (a path or a dict) as `stablesweep diagnose` does: static checks, with
    `probe_steps` a short real run, with `region` (a stable_region.json or ramp.json) the lr
    against the measured boundary. `<config>_fixed.yaml` is written only into `out` (None: nothing
    is written; `force` replaces an earlier one). Config overrides: `training__lr=1e-3`.

    >>> d = diagnose("configs/demo.yaml", log=None)  # doctest: +SKIP
    >>> d.healthy, d.findings[0].code  # doctest: +SKIP
    """
    from stablesweep.diagnose import diagnose as run_diagnosis
    from stablesweep.diagnose.fixed import check_fixed_target, fixed_config, write_fixed

    overrides, rest = split_kwargs(kwargs)
    unknown("diagnose", set(rest), set())
    with config_file(config) as path:
        if out is not None:
            check_fixed_target(path, out, force)
        diag = run_diagnosis(path, overrides, probe_steps=probe_steps, region=region, device=device, log=log)
        made = fixed_config(diag, out)
        written = write_fixed(diag, out) if out is not None and made is not None else None
    return Diagnosed(healthy=diag.healthy, exit_code=diag.exit_code, findings=list(diag.findings),
                     fixed={k: v for f in diag.findings for k, v in f.changes.items()},
                     fixed_path=written[0] if written else None, diagnosis=diag)


# ---- helpers ------------------------------------------------------------------------------------

_ROW_KEYS = ("setting", "params", "status", "min_stable_lr", "max_stable_lr", "min_diverged_lr", "min_failed_lr",
             "recommended_lr", "lr_at_5pct_risk", "lr_at_50pct", "probes", "holds_for", "confirmation")


def _row(x: dict) -> dict:
    return {k: x[k] for k in _ROW_KEYS if k in x}


def _option_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _read_yaml(path: Path | None) -> dict | None:
    return yaml.safe_load(Path(path).read_text()) if path is not None and Path(path).exists() else None

