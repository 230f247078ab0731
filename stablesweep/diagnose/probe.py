"""The probe: a few training steps of the real run on the real data, out-of-range labels kept.

Built through the Trainer (stablesweep.train), so it runs what `stablesweep train` runs: the same
model, guarded loss, precision policy, optimizer, lr schedule (lr_final included) and monitor, in
the order `train` draws the batches. On top of it: forward hooks find the first module whose
output turns non-finite, gradient hooks the first parameter whose gradient does (before clipping),
and each bad sample is explained (which loss term broke, which dataset's columns its target landed
in). A run's pre-flight refuses out-of-range labels; the probe keeps them, so it reproduces what
the user saw.
"""
from __future__ import annotations

import bisect
import dataclasses
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from stablesweep.config import Config
from stablesweep.data.mixing import (
    Batch,
    LabelSpace,
    MixingBatchSampler,
    MultiData,
    segments,
)
from stablesweep.data.problems import DataError, LabelReport
from stablesweep.stability.loss import VALUE_MASKS, GuardedLoss
from stablesweep.stability.monitor import Snapshot
from stablesweep.train import Trainer, resolve_device

from .findings import MAX_LINES, Finding


@dataclass
class BadSample:
    step: int
    dataset: str
    where: str  # file:line
    label: int
    num_classes: int
    global_label: int
    loss: float | None
    term: str  # which loss term broke
    detail: str


@dataclass
class ProbeResult:
    steps_run: int
    steps_asked: int
    device: str
    verdict: str = "stable"
    reason: str | None = None
    first_bad_step: int = -1  # the first step with a non-finite loss or gradient, or an out-of-bounds target
    first_module: str | None = None  # the first module whose output turned non-finite (e.g. features.0 (Conv2d))
    first_module_step: int = -1
    first_grad_param: str | None = None  # the first parameter whose gradient turned non-finite, with its step
    dataset_loss: dict[str, float] = field(default_factory=dict)  # per-dataset mean loss at the first bad step
    bad_samples: list[BadSample] = field(default_factory=list)
    bad_label_samples_seen: int = 0
    error: str | None = None
    dataset_loss_step: int = -1
    targeted: int = 0  # out-of-range samples examined in one extra batch after the steps (none drawn)
    losses: list[float] = field(default_factory=list)  # the train loss of each step
    lrs: list[float] = field(default_factory=list)  # the lr each step ran at (the run's schedule)
    findings: list[Finding] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class _NoSamples:
    """The train split of a dataset whose manifest or folder could not be read."""

    def __len__(self) -> int:
        return 0


def run_probe(cfg: Config, steps: int, report: LabelReport, sources: dict[tuple[str, str], Any], *,
              device: str = "auto", log: Callable[[str], None] | None = None) -> ProbeResult:
    """Train `steps` steps of the run `cfg` describes on the scanned data (`scan(cfg)`), keeping
    out-of-range labels."""
    say = log or (lambda s: None)
    t = cfg.training
    dev = resolve_device(device)
    space = LabelSpace.from_config(cfg)
    train = [sources.get((n, "train")) or _NoSamples() for n in space.names]
    unusable = [n for n, s in zip(space.names, train) if len(s) == 0]
    data = MultiData(cfg, space, train, {}, report)  # no pre-flight: out-of-range labels stay in
    res = ProbeResult(0, steps, str(dev))
    try:
        sampler = data.batch_sampler(t.batch_size, t.seed)  # the batches `train` draws, in its order
    except (DataError, ValueError) as e:
        res.error = f"no batches to train on: {e}"
        res.findings = [Finding("probe.skipped", "error", "the probe could not build a batch", [str(e)],
                                "fix the data findings first")]
        return res
    # a probe is short: let the explosion rule (smoothed loss > factor x its best) apply from step 2
    monitor = dataclasses.replace(cfg.monitor, min_steps=min(cfg.monitor.min_steps, 2))
    trainer = Trainer(dataclasses.replace(cfg, monitor=monitor), device=str(dev), data=data)
    say(f"probe: {steps} steps on {dev} ({t.precision}, masking {cfg.masking}, lr {t.lr:.2e}), "
        "out-of-range labels kept")
    snap = _Probe(trainer, train, res).run(steps, sampler)
    res.findings = probe_findings(cfg, res, snap, unusable)
    return res


class _Probe:
    """The probe's loop over a Trainer, with its hooks and the explanation of bad samples."""

    def __init__(self, trainer: Trainer, train: list, res: ProbeResult):
        self.trainer = trainer
        self.cfg = trainer.cfg
        self.space = trainer.space
        self.train = train
        self.res = res
        self.step = -1
        self.module: tuple[int, str] | None = None  # (step, module) of the first non-finite output
        self.grad_param: tuple[int, str] | None = None  # (step, parameter) of the first non-finite gradient
        self.watch_grads = False  # only while the loss of the step is finite: a non-finite loss explains the rest

    # -- hooks ----------------------------------------------------------------------------------
    def _output_hook(self, name: str):
        def fn(mod, inputs, output):
            if self.module is not None or not isinstance(output, torch.Tensor):
                return
            if output.is_floating_point() and not bool(torch.isfinite(output).all()):
                self.module = (self.step, f"{name or 'model'} ({type(mod).__name__})")
        return fn

    def _grad_hook(self, name: str):
        def fn(param):
            if self.watch_grads and self.grad_param is None and not bool(torch.isfinite(param.grad).all()):
                self.grad_param = (self.step, name)
        return fn

    def _hooks(self) -> list:
        model = self.trainer.model
        return ([m.register_forward_hook(self._output_hook(n)) for n, m in model.named_modules()]
                + [p.register_post_accumulate_grad_hook(self._grad_hook(n))
                   for n, p in model.named_parameters() if p.requires_grad])

    # -- the loop -------------------------------------------------------------------------------
    def run(self, steps: int, sampler: MixingBatchSampler) -> Snapshot:
        res, trainer, space = self.res, self.trainer, self.space
        starts = [0]
        for s in self.train:
            starts.append(starts[-1] + len(s))
        handles = self._hooks()
        it = iter(sampler)
        try:
            for step in range(steps):
                self.step = step
                items = []
                for g in next(it):
                    d = bisect.bisect_right(starts, g) - 1
                    items.append((d, g - starts[d]))
                res.bad_label_samples_seen += sum(not 0 <= self.train[d].label(i) < space.num_classes[d]
                                                  for d, i in items)
                keep = self._prepare(step, items)
                if keep:
                    batch, logits, out, per = self._forward(keep)
                    self._examine(step, keep, batch, logits, out, per)
                    loss = float(out.loss.detach())
                    res.losses.append(loss)
                    res.lrs.append(trainer.optimizer.param_groups[0]["lr"])
                    self.watch_grads = math.isfinite(loss)
                    trainer.update(out.loss)
                    self.watch_grads = False
                res.steps_run = step + 1
            # out-of-range samples the sampled steps did not draw: one more forward pass (no update) on
            # a batch of them, so the probe explains them whatever the sampling order
            targets = [(d, i) for d in range(len(self.train)) for i in self._out_of_range(d)]
            size = self.cfg.training.batch_size
            if targets and res.bad_label_samples_seen == 0:
                res.targeted = min(len(targets), size)
                self.step = res.steps_run
                keep = self._prepare(res.steps_run, targets[:size])
                if keep:
                    with torch.no_grad():
                        self._examine(res.steps_run, keep, *self._forward(keep))
        except DataError as e:
            res.error = str(e)
        finally:
            for h in handles:
                h.remove()
        snap, verdict = trainer.monitor.read()
        res.verdict, res.reason = verdict.verdict, verdict.reason
        if verdict.first_bad_step >= 0 and (res.first_bad_step < 0 or verdict.first_bad_step < res.first_bad_step):
            res.first_bad_step = verdict.first_bad_step
        if self.module is not None:
            res.first_module_step, res.first_module = self.module
        if self.grad_param is not None:
            res.first_grad_param = f"{self.grad_param[1]} (step {self.grad_param[0]})"
        if any(b.term == "target out of bounds" for b in res.bad_samples) and res.verdict == "stable":
            res.verdict, res.reason = "error", "target_out_of_bounds"  # a run would crash there
        return snap

    def _prepare(self, step: int, items: list[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
        """(dataset, index, local label, global label) of the samples a loss can take; a sample whose
        target would be out of bounds (an IndexError on CPU, a device assert on CUDA) is recorded and
        dropped, as the host can see it before any kernel runs."""
        space, masking = self.space, self.cfg.masking
        keep = []
        for d, i in sorted(items, key=lambda x: x[0]):
            lab = self.train[d].label(i)
            n, off = space.num_classes[d], space.offsets[d]
            g = off + lab
            if 0 <= lab < n or (masking != "slice" and 0 <= g < space.total):
                keep.append((d, i, lab, g))
                continue
            own = space.owner(g)
            why = (f"outside the dataset's own {n} columns (masking slice)" if masking == "slice" and own is not None
                   else f"global column {g} is outside the {space.total} columns")
            self.res.bad_samples.append(BadSample(
                step, space.names[d], self.train[d].where(i), lab, n, g, None, "target out of bounds",
                f"label {lab} with num_classes {n}: {why}: an IndexError on CPU, a device-side assert on CUDA; "
                "the probe drops the sample and goes on"))
            if self.res.first_bad_step < 0:
                self.res.first_bad_step = step
        return keep

    def _forward(self, keep):
        images = torch.stack([self.train[d].load(i) for d, i, _, _ in keep])
        ds = [d for d, _, _, _ in keep]
        batch = self.trainer.input(Batch(images, torch.tensor([g for *_, g in keep]),
                                         torch.tensor([lab for _, _, lab, _ in keep]), torch.tensor(ds), segments(ds)))
        logits, out = self.trainer.forward(batch)
        return batch, logits, out, out.per_sample.detach().float().cpu()

    def _examine(self, step, keep, batch, logits, out, per) -> None:
        """Explain the bad samples of a batch; keep the per-dataset loss of the first bad batch."""
        res, space = self.res, self.space
        bad_here = [k for k, (d, i, lab, g) in enumerate(keep)
                    if not math.isfinite(float(per[k])) or not 0 <= lab < space.num_classes[d]]
        lg = logits.detach().float().cpu() if bad_here else None
        for k in bad_here[:MAX_LINES]:
            d, i, lab, g = keep[k]
            term, detail = explain_sample(self.trainer.loss_fn, logits[k:k + 1].detach(),
                                          batch.dataset_ids[k:k + 1], lg[k], d, lab, g, space, self.cfg,
                                          float(per[k]))
            res.bad_samples.append(BadSample(step, space.names[d], self.train[d].where(i), lab, space.num_classes[d],
                                             g, float(per[k]), term, detail))
        bad = bool(bad_here) or not math.isfinite(float(out.loss.detach()))
        if bad and not res.dataset_loss:
            res.dataset_loss_step = step
            for d, s0, s1 in batch.segments:
                res.dataset_loss[space.names[d]] = float(per[s0:s1].mean())

    def _out_of_range(self, d: int) -> list[int]:
        labels = getattr(self.train[d], "labels", None)  # file sources hold their labels; synthetic ones are right
        if labels is None:
            return []
        return [int(i) for i in ((labels < 0) | (labels >= self.space.num_classes[d])).nonzero()[0]]


def explain_sample(loss_fn: GuardedLoss, logits_k: torch.Tensor, dataset_ids_k: torch.Tensor, row: torch.Tensor,
                   d: int, lab: int, g: int, space: LabelSpace, cfg: Config, loss: float) -> tuple[str, str]:
    """(the loss term that broke, the detail) for one sample whose loss is bad or label out of range."""
    name, n = space.names[d], space.num_classes[d]
    masking = cfg.masking
    if not bool(torch.isfinite(row).all()):
        bad = int((~torch.isfinite(row)).sum())
        return "model output non-finite", f"{bad} of {row.numel()} logits are not finite before any masking"
    in_range = 0 <= lab < n
    own = space.owner(g)
    if masking in VALUE_MASKS:
        x = loss_fn.masked_logits(logits_k, dataset_ids_k)[0].float().cpu()
        if not in_range and own is not None:
            return ("target logit masked",
                    f"label {lab} with num_classes {n}: global column {g} is {own[0]}'s class {own[1]}, which the "
                    f"{masking} mask sets to {float(x[g]):.3g} for {name} samples; loss {loss:.4g}")
        if bool((~torch.isfinite(x)).all()):
            return "all logits masked", f"every logit of the {name} sample is masked: cross entropy NaN"
        eps = cfg.loss.label_smoothing if cfg.loss.type == "label_smoothing" else 0.0
        logp = torch.log_softmax(x, dim=0)
        nll = float(-logp[g])
        smooth = float(-logp.mean())
        if eps > 0 and not math.isfinite(smooth):
            return ("label smoothing term",
                    f"target term {nll:.4g} is finite, the smoothing term (eps {eps:g} over all {space.total} "
                    f"classes) is {smooth:.4g}: smoothing puts mass on the {masking}-masked classes")
        if not math.isfinite(nll):
            return "target term", f"target logit {float(x[g]):.4g}: cross entropy {nll:.4g}"
    if masking == "none" and not in_range and own is not None:
        return ("target in another dataset",
                f"label {lab} with num_classes {n}: without masking global column {g} is {own[0]}'s class "
                f"{own[1]}: the loss is finite ({loss:.4g}) and the sample silently trains the wrong class")
    if cfg.loss.z_loss and not math.isfinite(loss):
        return "z-loss term", "logsumexp of the logits overflowed"
    return "cross entropy", f"loss {loss:.4g} with finite logits (max |logit| {float(row.abs().max()):.4g})"


def probe_findings(cfg: Config, res: ProbeResult, snap: Snapshot, unusable: list[str]) -> list[Finding]:
    """The probe's findings: bad labels, a broken loss term, a divergence, or stable for its steps."""
    out = []
    head = (f"probe: {res.steps_run} of {res.steps_asked} steps on {res.device} ({cfg.training.precision}, "
            f"masking {cfg.masking}, lr {cfg.training.lr:.3g})")
    ev = [head + f": verdict {res.verdict}" + (f" ({res.reason} at step {res.first_bad_step})" if res.reason else "")]
    if unusable:
        ev.append(f"no usable train samples for {', '.join(unusable)}: not in the probe")
    if res.targeted:
        ev.append(f"the {res.steps_run} steps drew none of the out-of-range samples; one extra batch of "
                  f"{res.targeted} of them after step {res.steps_run - 1} (no update):")
    if res.dataset_loss:
        at = ("in the extra batch" if res.targeted and res.dataset_loss_step == res.steps_run
              else f"at step {res.dataset_loss_step}")
        ev.append(f"per-dataset loss {at}: "
                  + ", ".join(f"{k} {v:.4g}" for k, v in res.dataset_loss.items()))
    ev.append(f"first module whose output turned non-finite: {res.first_module} at step {res.first_module_step}"
              if res.first_module else "model outputs finite at every probed step (no forward hook fired)")
    if res.first_grad_param:
        ev.append(f"first non-finite gradient: {res.first_grad_param}")
    if res.losses:
        shown = ", ".join(f"{v:.3g}" for v in res.losses[:12]) + (", ..." if len(res.losses) > 12 else "")
        ev.append(f"train loss per step: {shown}")
    if res.lrs and max(res.lrs) != min(res.lrs):
        shown = ", ".join(f"{v:.3g}" for v in res.lrs[:12]) + (", ..." if len(res.lrs) > 12 else "")
        ev.append(f"lr per step ({cfg.training.schedule} schedule, warmup {cfg.training.warmup_steps}): {shown}")
    if res.error:
        ev.append(f"stopped: {res.error}")

    def when(b: BadSample) -> str:
        return f"extra batch after step {b.step - 1}" if res.targeted and b.step == res.steps_run else f"step {b.step}"

    def listed(bad: list[BadSample]) -> list[str]:
        lines = [f"{when(b)}, {b.dataset} {b.where}: {b.term}: {b.detail}" for b in bad[:MAX_LINES]]
        if len(bad) > MAX_LINES:
            lines.append(f"... {len(bad) - MAX_LINES} more")
        lines.append("by dataset: " + ", ".join(f"{k} {v}" for k, v in Counter(b.dataset for b in bad).items()))
        return lines

    label_bad = [b for b in res.bad_samples if not 0 <= b.label < b.num_classes]
    other_bad = [b for b in res.bad_samples if 0 <= b.label < b.num_classes and b.term != "model output non-finite"]
    if label_bad:
        first = label_bad[0]
        title = (f"probe: {when(first)}, {first.dataset}: {first.term}, label {first.label} with num_classes "
                 f"{first.num_classes}")
        if cfg.masking == "slice":
            fix = ("fix the labels named by the labels.* findings (the probe keeps them; a run's pre-flight refuses "
                   "them, and with masking slice the loss would fail loudly on them)")
        else:
            fix = ("fix the labels named by the labels.* findings (the probe keeps them; a run's pre-flight refuses "
                   "them); loss.masking: slice makes such a label fail loudly instead of reading inf")
        out.append(Finding("probe.bad_labels", "error", title, ev + listed(label_bad), fix,
                           "loss.masking", dataset=first.dataset))
    if other_bad:
        first = other_bad[0]
        masked = "masked" in first.term or "smoothing" in first.term
        out.append(Finding("probe.loss_term", "error",
                           f"probe: {when(first)}, {first.dataset}: {first.term} (labels in range)",
                           ev + listed(other_bad),
                           "see the masking.* findings (loss.masking: slice)" if masked else
                           "lower training.lr (measure the boundary with `stablesweep ramp`) and keep clipping on",
                           "loss.masking" if masked else "training.lr", dataset=first.dataset))
    unexplained = res.verdict == "diverged" and not res.bad_samples
    if res.first_module or res.first_grad_param or res.reason == "loss_explosion" or unexplained or res.error:
        if res.error:
            title = f"probe: stopped at step {res.steps_run}: {res.error.splitlines()[0]}"
        else:
            where = (f"; first non-finite output: {res.first_module} at step {res.first_module_step}"
                     if res.first_module else "")
            title = f"probe: diverged at step {res.first_bad_step} ({res.reason}){where}"
        out.append(Finding("probe.diverged", "error", title, ev,
                           "lower training.lr (measure the boundary with `stablesweep ramp`), keep clipping on "
                           "(training.max_grad_norm), and see the other findings", "training.lr"))
    if not out:
        ev.append(f"max loss {snap.max_loss:.4g}, max grad norm {snap.max_grad_norm:.4g}; stable for "
                  f"{res.steps_run} steps only: a longer run may still diverge")
        out.append(Finding("probe.stable", "info", head + ": stable, every loss and gradient finite", ev,
                           "nothing to fix from the probe", None))
    return out
