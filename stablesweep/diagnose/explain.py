"""Why did a run diverge? Replay its last steps under controlled changes (`stablesweep explain`).

A run directory of `stablesweep train --out` holds result.json (the verdict and its first bad
step), config.yaml and the ring of its last checkpoints (`training.keep_checkpoints`). A sweep's
trial is found through its MLflow run (`read_trial`): the run's verdict tags, its Tune trial
directory (the parent run's `tune_experiment` tag and the trial id), whose result.json (one Tune
result a line) names each kept checkpoint with its step and holds the last steps' history, and
whose checkpoints hold the config as run. From the
last checkpoint at or before the first bad step (or from the run's initial state, rebuilt from its
seed, when there is none), the steps up to the bad step and `extra_steps` more are re-run with the
run's own Trainer: once as they were, then once under each change that applies:
- masking `slice` instead of a mask value (the cause it points to: masking),
- fp32 instead of bf16/fp16 (precision),
- the lr times `lr_factor` (learning_rate),
- another data order: the batches of seed + 1, the model and optimizer state unchanged (data).
If the replay as run does not diverge, the answer is `not_reproduced`. Otherwise the cause is the
first change, in the order above, that removes the divergence; every change that does is listed.
Learning rate comes before data: near the boundary another order also avoids a divergence that a
lower lr avoids, so data is named only when the lower lr does not help. `undetermined`: no change
removed it. For data, the samples of the batch at the first bad step are named (dataset, manifest
line or file, label).
"""
from __future__ import annotations

import bisect
import json
import math
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from stablesweep.config import Config, config_from_dict
from stablesweep.stability.loss import VALUE_MASKS
from stablesweep.train import CHECKPOINT_FILE, Trainer
from stablesweep.vocab import DIVERGED, FIRST_BAD_STEP, HISTORY, REASON, STEP, VERDICT, InputError, jsonable

MASKING, PRECISION, LEARNING_RATE, DATA = "masking", "precision", "learning_rate", "data"
CAUSES = (MASKING, PRECISION, LEARNING_RATE, DATA)  # in the order a fix is attributed
NOT_REPRODUCED, UNDETERMINED = "not_reproduced", "undetermined"
AS_RUN = "as run"


class ExplainError(InputError):
    """A run directory that cannot be explained: the message names the file and what was expected."""


def bad_step(step) -> int | None:
    """A first bad step as explain keeps it: the step, or None where there is none (the monitor's
    and older files' -1, Tune's None, a missing tag)."""
    try:
        n = int(step)
    except (TypeError, ValueError):
        return None
    return n if n >= 0 else None


def step_text(step: int | None) -> str:
    return "none" if step is None else str(step)


@dataclass
class Replay:
    change: str  # "as run", "masking slice", "fp32", "lr x0.1", "data order"
    cause: str | None  # what removing the divergence by this change points to (None: as run)
    overrides: list[str]
    verdict: str | None = None
    reason: str | None = None
    first_bad_step: int | None = None  # None: no step went bad (null in explain.json, "none" in text)
    steps: int = 0
    error: str | None = None  # the replay itself failed (an exception): not a fix

    @property
    def diverged(self) -> bool:
        return self.verdict == DIVERGED

    @property
    def removes(self) -> bool:
        return self.error is None and self.verdict is not None and not self.diverged

    def line(self, width: int) -> str:
        if self.error:
            what = f"failed: {self.error}"
        elif self.diverged:
            what = f"diverged: {self.reason} at step {step_text(self.first_bad_step)}"
        else:
            what = f"{self.verdict} through step {self.steps - 1}: removes the divergence"
        return f"  {self.change:<{width}}  {what}"


@dataclass
class Attempt:
    """The replays from one starting point."""

    start: str  # a checkpoint's name, or "initial state"
    start_step: int
    replays: list[Replay] = field(default_factory=list)
    same_losses: str = ""  # the replay as run against the run's own history: is it deterministic?


@dataclass
class RunSource:
    """What explain needs of a diverged run, wherever it was read from."""

    name: str  # the run directory, or the MLflow run id and its trial directory
    result: dict  # verdict, reason, first_bad_step, history
    raw: dict  # the config as run
    source: str  # where that config was read (named in its errors)
    base_dir: str  # where its relative paths resolve
    checkpoints: list[tuple[Path, int]]  # kept checkpoint directories and the steps done at each
    out: Path  # where explain.json goes

    def at_or_before(self, step: int) -> list[tuple[Path, int]]:
        """The kept checkpoints written at or before `step` (steps done <= step), latest first."""
        return sorted(((d, s) for d, s in self.checkpoints if s <= step), key=lambda x: -x[1])


@dataclass
class Explanation:
    run_dir: str
    reason: str
    first_bad_step: int | None  # None: the run names none (null in explain.json, "none" in text)
    until: int  # replays run from their start to step until - 1 (or stop at a divergence)
    cause: str  # one of CAUSES, NOT_REPRODUCED or UNDETERMINED
    fixes: list[str] = field(default_factory=list)  # every change that removed the divergence
    attempts: list[Attempt] = field(default_factory=list)  # latest start first; the last one decided
    not_tried: dict[str, str] = field(default_factory=dict)  # change -> why it does not apply
    samples: list[dict] = field(default_factory=list)  # data: the batch at the first bad step

    def to_dict(self) -> dict:
        return jsonable(asdict(self))

    def format(self) -> str:
        lines = [f"{self.run_dir}: diverged ({self.reason} at step {step_text(self.first_bad_step)})"]
        for a in self.attempts:
            lines.append(f"replayed steps {a.start_step}..{self.until - 1} from {a.start}:")
            width = max(len(r.change) for r in a.replays)
            lines += [r.line(width) for r in a.replays]
            if a.same_losses:
                lines.append(f"  as run against the run: {a.same_losses}")
        for change, why in self.not_tried.items():
            lines.append(f"not tried: {change} ({why})")
        lines.append(f"cause: {self.cause.replace('_', ' ')}"
                     + (f" (also removed by: {', '.join(self.fixes[1:])})" if len(self.fixes) > 1 else ""))
        if self.samples:
            bad = sum(not s["in_range"] for s in self.samples)
            lines.append(f"  the batch at step {step_text(self.first_bad_step)}: {len(self.samples)} samples"
                         + (f", {bad} with a label outside their dataset's range" if bad else ""))
            if bad == len(self.samples):
                lines.append("  every sample was dropped for its label (loss.on_bad_label skip): an empty batch "
                             "has no loss, a NaN")
            for s in self.samples:
                note = "" if s["in_range"] else f"  <- outside [0, {s['num_classes']})"
                lines.append(f"    {s['dataset']} #{s['index']} {s['where']} label {s['label']}{note}")
        return "\n".join(lines)


def read_run(run_dir: str | Path) -> RunSource:
    """A run directory of `stablesweep train --out`."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ExplainError(f"{run}: no such run directory (expected the --out directory of stablesweep train, "
                           "or an MLflow run id)")
    files = {name: run / name for name in ("result.json", "config.yaml")}
    for name, path in files.items():
        if not path.is_file():
            raise ExplainError(f"{path}: missing; a run directory of stablesweep train --out has {name}")
    try:
        result = json.loads(files["result.json"].read_text())
        raw = yaml.safe_load(files["config.yaml"].read_text())
    except (ValueError, yaml.YAMLError) as e:
        raise ExplainError(f"{run}: cannot read result.json / config.yaml: {e}") from None
    if not isinstance(result, dict) or not isinstance(raw, dict):
        raise ExplainError(f"{run}: result.json and config.yaml must each hold a mapping")
    _check_diverged(result.get(VERDICT), files["result.json"])
    found = []
    for d in (run / "checkpoints").glob("checkpoint_*"):
        try:
            step = int(d.name.split("_", 1)[1])
        except ValueError:
            continue
        if (d / CHECKPOINT_FILE).is_file():
            found.append((d, step))
    return RunSource(str(run), result, raw, str(files["config.yaml"]), result.get("base_dir") or str(run), found,
                     run / "explain.json")


def _check_diverged(verdict: str | None, where: str | Path) -> None:
    if verdict != DIVERGED:
        raise ExplainError(f"{where}: verdict is {verdict!r}: only a diverged run can be explained")


def read_trial(uri: str, run_id: str) -> RunSource:
    """A sweep trial, by its MLflow run id: its Tune trial directory, its last Tune result, the
    checkpoints Tune kept (each with its step), the config stored in them."""
    import torch

    from stablesweep.tracking import PARENT_TAG, TRIAL_TAG, TrackerReader, probe_store

    why = probe_store(uri)
    if why:
        raise ExplainError(f"MLflow run {run_id}: {why}")
    reader = TrackerReader(uri)
    run = reader.get_run(run_id)
    if run is None:
        raise ExplainError(f"MLflow run {run_id}: not found in {uri}")
    parent = reader.get_run(run.tags.get(PARENT_TAG, "")) if PARENT_TAG in run.tags else None
    experiment = parent.tags.get("tune_experiment") if parent else None
    if TRIAL_TAG not in run.tags or not experiment:
        raise ExplainError(f"MLflow run {run_id}: not a sweep trial (no {TRIAL_TAG} tag, or its parent has no "
                           "tune_experiment tag); give a run directory of stablesweep train --out instead")
    _check_diverged(run.tags.get(VERDICT), f"MLflow run {run_id}")
    trial = Path(experiment) / f"trial_{run.tags[TRIAL_TAG]}"
    results = trial / "result.json"
    if not results.is_file():
        raise ExplainError(f"MLflow run {run_id}: no Tune results at {results} (is the sweep's storage on this "
                           "machine?)")
    try:
        lines = [json.loads(x) for x in results.read_text().splitlines() if x.strip()]
    except ValueError as e:
        raise ExplainError(f"{results}: cannot read it: {e}") from None
    found = [(trial / r["checkpoint_dir_name"], int(r[STEP])) for r in lines
             if r.get("checkpoint_dir_name") and (trial / r["checkpoint_dir_name"] / CHECKPOINT_FILE).is_file()]
    if not found or not lines:
        raise ExplainError(f"MLflow run {run_id}: no checkpoints kept in {trial} (a sweep keeps the last "
                           "training.keep_checkpoints of each trial; this one wrote none, or they were removed)")
    last = lines[-1]
    result = {VERDICT: run.tags[VERDICT], REASON: run.tags.get(REASON),
              FIRST_BAD_STEP: run.tags.get(FIRST_BAD_STEP, last.get(FIRST_BAD_STEP)),  # Tune's rows: None, no -1
              HISTORY: last.get(HISTORY) or []}
    latest = max(found, key=lambda x: x[1])[0] / CHECKPOINT_FILE
    raw = torch.load(latest, map_location="cpu", weights_only=True)["config"]
    base_dir = str(trial)
    sweep = Path(parent.tags.get("sweep_dir", "")) / "sweep.json"
    if sweep.is_file():
        base_dir = json.loads(sweep.read_text()).get("base_dir") or base_dir
    return RunSource(f"MLflow run {run_id} ({trial})", result, raw, f"{latest} (config)", base_dir, found,
                     trial / "explain.json")


def changes(cfg: Config, lr_factor: float) -> tuple[list[Replay], dict[str, str]]:
    """The replays to run (as run first) and the changes that do not apply, with why."""
    t = cfg.training
    out, skipped = [Replay(AS_RUN, None, [])], {}
    if cfg.masking in VALUE_MASKS:  # what `slice` replaces
        out.append(Replay("masking slice", MASKING, ["loss.masking=slice"]))
    else:
        skipped["masking slice"] = f"masking is {cfg.masking}: no mask value"
    if t.precision != "fp32":
        out.append(Replay("fp32", PRECISION, ["training.precision=fp32"]))
    else:
        skipped["fp32"] = "the run was fp32"
    lr = [f"training.lr={t.lr * lr_factor:.6g}"]
    if t.lr_final is not None:
        lr.append(f"training.lr_final={t.lr_final * lr_factor:.6g}")
    out.append(Replay(f"lr x{lr_factor:g}", LEARNING_RATE, lr))
    out.append(Replay("data order", DATA, [f"training.seed={t.seed + 1}"]))
    return out, skipped


def batch_samples(trainer: Trainer, step: int) -> list[dict]:
    """The samples of train batch `step` in the run's own order: dataset, index, where, label."""
    t, data, space = trainer.cfg.training, trainer.data, trainer.space
    flat = next(iter(data.batch_sampler(t.batch_size, t.seed, start_step=step)))
    starts = [0]
    for n in space.names:
        starts.append(starts[-1] + data.train_sizes[n])
    mixed = data.train_set  # the concatenated train splits: where() names a manifest line or file
    out = []
    for g in flat:
        d = bisect.bisect_right(starts, g) - 1
        i = g - starts[d]
        src = mixed.sources[d]
        label = src.label(i)
        out.append({"dataset": space.names[d], "index": i, "where": src.where(i), "label": label,
                    "num_classes": space.num_classes[d], "in_range": 0 <= label < space.num_classes[d]})
    return out


def compare_losses(run_history: list, replay_history: list, start: int) -> str:
    """How the replay's losses match the run's over the steps both ran (from `start` on)."""
    ours = {int(st): loss for st, loss, _ in replay_history if int(st) >= start}
    both = [(int(st), loss, ours[int(st)]) for st, loss, _ in run_history if int(st) in ours]
    if not both:
        return "no replayed step in the run's history to compare"

    def same(a, b) -> bool:
        a = math.nan if a is None else a  # JSON may keep NaN and inf as null
        return a == b or (not math.isfinite(a) and not math.isfinite(b))

    span = f"steps {both[0][0]}..{both[-1][0]}"
    if all(same(a, b) for _, a, b in both):
        return f"losses identical over {span}: deterministic"
    diff = max((abs(a - b) for _, a, b in both if a is not None and math.isfinite(a) and math.isfinite(b)),
               default=math.nan)
    return f"losses differ over {span} (by up to {diff:.3g}): not bit-for-bit deterministic"


def explain(run: str | Path | RunSource, *, device: str = "cpu", lr_factor: float = 0.1, extra_steps: int = 10,
            log: Callable[[str], None] | None = None) -> Explanation:
    """Replay a diverged run's last steps under each change and attribute the divergence.

    Starts from the latest kept checkpoint at or before the first bad step; when the divergence is
    reproduced there but no change removes it (the harm was done before that checkpoint, as when a
    loss explosion is only judged once `monitor.min_steps` have passed), the next earlier one, and
    last the run's initial state.
    """
    if not 0 < lr_factor < 1:
        raise ExplainError(f"--lr-factor: must be in (0, 1), got {lr_factor}")
    if extra_steps < 0:
        raise ExplainError(f"--extra-steps: must be 0 or more, got {extra_steps}")
    say = log or (lambda s: None)
    src = run if isinstance(run, RunSource) else read_run(run)
    result, raw, source, base_dir = src.result, src.raw, src.source, src.base_dir
    cfg = config_from_dict(raw, source=source, base_dir=base_dir)  # a bad config: an error before any work
    first_bad = bad_step(result.get(FIRST_BAD_STEP))
    if first_bad is None:
        raise ExplainError(f"{src.name}: the result names no first bad step (first_bad_step "
                           f"{result.get(FIRST_BAD_STEP)!r}): nothing to replay up to")
    until = first_bad + 1 + extra_steps
    _, skipped = changes(cfg, lr_factor)
    expl = Explanation(src.name, result.get(REASON) or "", first_bad, until, UNDETERMINED, not_tried=skipped)
    with tempfile.TemporaryDirectory(prefix="stablesweep-explain-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the run already said so (dropped labels); once is enough
        starts = [(d, step, d.name) for d, step in src.at_or_before(first_bad)]
        if not starts or starts[-1][1] > 0:  # the initial state, exactly as the run built it from its seed
            starts.append((Trainer(cfg, device=device).save(Path(tmp) / "initial"), 0, "initial state"))
        for start, start_step, name in starts:
            attempt = Attempt(name, start_step)
            expl.attempts.append(attempt)
            for r in changes(cfg, lr_factor)[0]:
                say(f"replay {r.change}: steps {start_step}..{until - 1} from {name}")
                try:
                    trainer = Trainer(config_from_dict(raw, r.overrides, source=source, base_dir=base_dir),
                                      device=device)
                    trainer.load(start, keep_config_lr=r.cause == LEARNING_RATE)
                    res = trainer.run(until=until)
                except Exception as e:  # noqa: BLE001 - a change the run cannot take is reported, not fatal
                    r.error = f"{type(e).__name__}: {e}"
                else:
                    r.verdict, r.reason, r.first_bad_step, r.steps = (res.verdict, res.reason,
                                                                      bad_step(res.first_bad_step), res.steps)
                    if r.cause is None:
                        attempt.same_losses = compare_losses(result.get(HISTORY) or [], res.history, start_step)
                        expl.samples = batch_samples(trainer, first_bad)
                attempt.replays.append(r)
                if r.cause is None and not r.diverged:
                    break  # not reproduced from here: no change can remove what did not happen
            as_run = attempt.replays[0]
            expl.fixes = [r.change for r in attempt.replays[1:] if r.removes]
            if not as_run.diverged:
                expl.cause = NOT_REPRODUCED if len(expl.attempts) == 1 else UNDETERMINED
                break
            if expl.fixes:
                expl.cause = next(r.cause for r in attempt.replays[1:] if r.removes)
                break
    if expl.cause != DATA:
        expl.samples = []
    return expl
