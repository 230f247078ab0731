"""The divergence monitor: per-step flags kept on the device, one host read per report interval.

Per step (`update`, device ops only, no branch on the host): counts of non-finite losses and
gradients, the first bad step and its kind, the max finite loss and gradient norm, an
exponentially smoothed loss (bias-corrected) and its best value, the initial loss (the trainer
sets it to the mean loss of the first `initial_batches` batches at the initial weights, before any
update; else it is the first step's), and the loss explosion: the smoothed loss over
`explosion_factor` x its best (the fastai/Lightning lr-finder rule, from `min_steps` on, when the
early best is no longer noise) or over `explosion_factor` x the initial loss (from step 0: a mean
of batches at the initial weights is no noisy best, and while the best is at most the initial loss
this rule holds only where the best rule would). A divergence begins where the raw loss first
crossed the rule's line (`explosion_factor` x the reference) in the run of steps that led to the
explosion (kept as the start of the current run of crossings, in the same vector), not where the
smoothed loss got there.

The whole state is one fp64 vector (with a ring of the last steps and the per-dataset sums beside
it), and a step's bookkeeping is one pure function of it, written back in place. On CUDA that
function is captured once as a CUDA graph and replayed each step: the host issues one copy of the
step's inputs and one graph launch, not a launch an op (on a small, host-bound step the guard's
cost is its launches; a torch.compile'd call still pays its guards and wrappers on the host every
step, and its compilation at each trial's start). The config's numbers (smoothing, explosion
factor, min_steps, the thresholds) are read from an fp64 vector, not baked in as constants.

Per report (`read`, one sync): the vector comes to the host and `judge` gives the verdict:
`stable` so far, or `diverged` with a reason (`nonfinite_loss`, `nonfinite_grad`,
`loss_explosion`) and the step where it began. At the end of the budget (`final=True`) a run that
did not diverge is `stable` only if it trained: its progress, 1 - smoothed / initial loss, is at
least `min_progress`; else it is `stalled` (reason `no_progress`); `min_progress: 0` turns the
rule off (any finite run is stable). Every verdict holds for the
steps run so far.

Early-warning signals, kept in the same vector by the same function (no extra sync), each with the
largest value so far and the first step it crossed its threshold (`monitor.warn_*`):
- `grad_spike`: the gradient norm (before clipping) over the median of the previous
  `history_steps` steps' finite norms (the ring already holds them), from step `min_steps` on; the
  median no lower than `grad_spike_floor` x the largest median so far (kept as `gnorm_scale`), so
  the tiny norms of a converged run do not turn one harder batch into a spike;
- `max_logit`: the largest |logit| of the model's raw output (the incident's 50-logit clip acts there);
- `logsumexp`: the largest |logsumexp| of a sample's raw logits (what z-loss pulls to 0);
- `scale_drops`: fp16 loss-scale drops (overflow steps) after the first `min_steps` steps;
- `update_ratio`: |w_after - w_before| / |w_before| of one optimizer step. It needs a copy of
  every weight, so it is sampled, not per step: on the step before each report (the value the
  report shows is fresh), with foreach ops (`keep_weights` into a buffer kept for the run, then
  `record_update`: a handful of multi-tensor kernels, not one clone per parameter), each a CUDA
  graph on CUDA like the step.
A run whose signal crossed its threshold is `at_risk` (the first such signal and its step): a flag
next to the verdict, not a verdict.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch

from stablesweep.config import MonitorConfig
from stablesweep.stability.graphs import GraphedCall
from stablesweep.vocab import (
    AT_RISK,
    AT_RISK_SIGNAL,
    AT_RISK_STEP,
    DIVERGED,
    LOSS_EXPLOSION,
    NO_PROGRESS,
    NONFINITE_GRAD,
    NONFINITE_LOSS,
    STABLE,
    STALLED,
)

# the early-warning signals, in the order `at_risk` breaks ties; names of report metrics and
# result.json keys: signal/<name> (largest value so far), warn_step/<name> (first step over its
# threshold, -1 if none), at_risk / at_risk_signal / at_risk_step
SIGNALS = ("grad_spike", "update_ratio", "max_logit", "logsumexp", "scale_drops")


def signal_key(name: str) -> str:
    return f"signal/{name}"


def warning_key(name: str) -> str:
    return f"warn_step/{name}"


# The state vector: a slot a field, in this order, each with its value at the start and how it
# combines across data-parallel ranks (`stablesweep.ddp.reduce_monitor` reads it, and says why):
# SAME: alike on every rank (rank 0's is taken); MEAN, MAX: of the ranks' values; FIRST: the
# earliest step any rank set (-1: none); FEWEST: the value of the rank with the fewest overflow
# steps; GRAD_BAD: the most skipped steps of a rank less the run's loss_bad; KIND: the smallest
# kind of the ranks whose first bad step is the run's.
SAME, MEAN, MAX, FIRST, FEWEST, GRAD_BAD, KIND = "same", "mean", "max", "first", "fewest", "grad_bad", "kind"


class Slot(NamedTuple):
    initial: float
    across_ranks: str


_SIGNAL_RANKS = {"grad_spike": (SAME, SAME), "update_ratio": (SAME, SAME), "max_logit": (MAX, FIRST),
                 "logsumexp": (MAX, FIRST), "scale_drops": (FEWEST, FEWEST)}  # (value, warn) of each signal
LAYOUT: dict[str, Slot] = {
    "steps": Slot(0.0, SAME), "loss_bad": Slot(0.0, MAX), "grad_bad": Slot(0.0, GRAD_BAD),
    "overflow": Slot(0.0, FEWEST), "first_bad": Slot(-1.0, FIRST), "first_kind": Slot(0.0, KIND),
    "max_loss": Slot(-math.inf, MAX), "max_gnorm": Slot(-math.inf, SAME), "ema": Slot(0.0, MEAN),
    "ema_n": Slot(0.0, SAME), "best": Slot(math.inf, MEAN), "first_explosion": Slot(-1.0, FIRST),
    "initial_loss": Slot(math.nan, MEAN), "last_loss": Slot(math.nan, MEAN), "last_gnorm": Slot(math.nan, SAME),
    **{f"{kind}_{name}": Slot(initial, _SIGNAL_RANKS[name][k]) for name in SIGNALS
       for k, (kind, initial) in enumerate((("value", 0.0 if name == "scale_drops" else -math.inf), ("warn", -1.0)))},
    "crossing": Slot(-1.0, FIRST),  # the first step of the current run of raw losses over the explosion line
    "gnorm_scale": Slot(0.0, SAME),  # the largest median gradient norm of the ring from min_steps on
}
FIELDS = tuple(LAYOUT)
_I = {name: i for i, name in enumerate(FIELDS)}


def thresholds(cfg: MonitorConfig) -> dict[str, float]:
    """Each signal's warning threshold (inf when its `monitor.warn_*` is null: never warns)."""
    return {name: math.inf if (x := getattr(cfg, f"warn_{name}")) is None else float(x) for name in SIGNALS}


# the config's numbers as the update reads them: one fp64 vector (see the module's docstring)
CONSTANTS = ("beta", "factor", "min_steps") + tuple(f"threshold_{name}" for name in SIGNALS) + ("spike_floor",)
_C = {name: i for i, name in enumerate(CONSTANTS)}


def constants(cfg: MonitorConfig) -> list[float]:
    warn = thresholds(cfg)
    return [cfg.smoothing, cfg.explosion_factor, float(cfg.min_steps), *(warn[name] for name in SIGNALS),
            cfg.grad_spike_floor]


def logit_stats(logits: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(largest |logit|, largest |logsumexp| of a row) of raw logits, as fp64 scalars like `like`;
    NaN without logits (none given, or an empty batch)."""
    if logits is None or logits.numel() == 0:  # None and shapes are known when traced: no branch at run time
        nan = torch.full_like(like, math.nan, dtype=torch.float64)
        return nan, nan
    x = logits.float()
    stats = torch.stack([x.abs().amax(), torch.logsumexp(x, dim=1).abs().amax()]).double()
    return stats[0], stats[1]


def _finite(x: torch.Tensor) -> torch.Tensor:
    """torch.isfinite in two kernels: x - x is 0 exactly when x is finite (inf - inf and NaN give
    NaN). torch's own is four (x == x, |x|, != inf, their product); in a graph of ~100 tiny
    kernels each one is GPU time."""
    return (x - x) == 0


def _signal(value: torch.Tensor, warn: torch.Tensor, threshold: torch.Tensor, x: torch.Tensor,
            step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(largest value so far, first warning step) of signals after new values `x` at `step`
    (scalars, or vectors of several signals: elementwise); a NaN `x` leaves a signal as it is."""
    return torch.where(_finite(x), torch.maximum(value, x), value), torch.where((warn < 0) & (x > threshold), step, warn)


def _flags(finite: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss_bad, grad_bad, overflow) of one step from `finite`, whether its (loss, gradient norm)
    are finite.

    A non-finite gradient norm with a finite loss is `grad_bad`, except in fp16 at a loss scale
    above 1: there it is the scaler finding its range (`overflow`), an expected skip, not divergence.
    """
    loss_bad = ~finite[0]
    norm_bad = ~finite[1] & finite[0]
    overflow = norm_bad & (scale > 1)
    return loss_bad, norm_bad & ~overflow, overflow


def classify(loss: torch.Tensor, grad_norm: torch.Tensor, scale: torch.Tensor):
    """(loss_bad, grad_bad, overflow) of one step: see `_flags`."""
    return _flags(_finite(torch.stack([loss, grad_norm])), scale)


# the signals `_update` takes every step, vectorized: their (value, warn) pairs are consecutive in
# the state vector from `_FIRST` on, in SIGNALS order; `update_ratio` is among them (its new value
# is NaN here: left as it is) and `scale_drops` (a count, not a maximum) comes last, apart
_FIRST = _I[f"value_{SIGNALS[0]}"]
assert SIGNALS[-1] == "scale_drops" and all(
    _I[f"value_{n}"] == _FIRST + 2 * i and _I[f"warn_{n}"] == _FIRST + 2 * i + 1 for i, n in enumerate(SIGNALS))
assert all(_C[f"threshold_{n}"] == _C[f"threshold_{SIGNALS[0]}"] + i for i, n in enumerate(SIGNALS))


def _update(v: torch.Tensor, ring: torch.Tensor, slots: torch.Tensor, c: torch.Tensor, loss: torch.Tensor,
            gnorm: torch.Tensor, scale: torch.Tensor, logits: torch.Tensor | None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the new state vector, the new history ring, the skip flag as 0./1. for the fused
    optimizer's found_inf) after one step: a pure function (a CUDA graph on CUDA), the logit
    statistics included (one pass over the logits inside the same call). The ring [N, 2] keeps the
    raw loss and gradient norm of the last N steps, step s in row s % N; `c` is `constants(cfg)`.

    Written for few kernels (each is GPU time in the graph): fields that change alike are updated
    as one vector (the counters, the first bad step and its kind, the maxima, the signals)."""
    beta, factor, min_steps = c[_C["beta"]], c[_C["factor"]], c[_C["min_steps"]]
    now = torch.stack([loss, gnorm]).double()  # this step's loss and gradient norm, fp64
    loss, gnorm = now[0], now[1]
    fin = _finite(now)
    ok = fin.all()  # both finite: neither bad nor an overflow
    skip = (~ok).float()
    loss_bad, grad_bad, overflow = _flags(fin, scale)
    flags = torch.stack([loss_bad, grad_bad, overflow])
    step = v[_I["steps"]]
    new_bad = (loss_bad | grad_bad) & (v[_I["first_bad"]] < 0)
    first_bad = torch.where(new_bad, torch.stack([step, 2.0 - loss_bad.double()]),  # kind: 1 loss, 2 gradient
                            v[_I["first_bad"]:_I["first_kind"] + 1])
    ema = torch.where(ok, beta * v[_I["ema"]] + (1 - beta) * loss, v[_I["ema"]])
    n = v[_I["ema_n"]] + ok.double()
    smoothed = ema / (1 - beta ** torch.clamp(n, min=1.0))
    best = v[_I["best"]]
    initial = torch.where((step == 0) & torch.isnan(v[_I["initial_loss"]]), loss, v[_I["initial_loss"]])
    line = factor * torch.fmin(initial, torch.where(n > min_steps, best, math.inf))  # fmin: a NaN initial is none
    exploded = ok & (smoothed > line)
    crossing = torch.where(~ok | (loss > line), torch.where(v[_I["crossing"]] < 0, step, v[_I["crossing"]]), -1.0)
    first_exp = v[_I["first_explosion"]]
    maxima = v[_I["max_loss"]:_I["max_gnorm"] + 1]  # the loss's only when both are finite
    maxima = torch.where(torch.stack([ok, fin[1]]), torch.maximum(maxima, now), maxima)
    # the signals; the spike against the previous steps' norms, before this step enters the ring
    armed = step >= min_steps
    past = ring[:, 1]
    median = torch.nanmedian(torch.where(_finite(past), past, math.nan))
    max_logit, lse = logit_stats(logits, loss)
    scale = torch.fmax(v[_I["gnorm_scale"]], torch.where(armed, median, math.nan))  # fmax: NaN is none
    spike = torch.where(armed, gnorm / torch.maximum(median, c[_C["spike_floor"]] * scale), math.nan)
    x = torch.stack([spike, median * math.nan, max_logit, lse])  # per SIGNALS but scale_drops
    sig = v[_FIRST:_FIRST + 2 * len(x)].view(len(x), 2)
    threshold = c[_C[f"threshold_{SIGNALS[0]}"]:][:len(x)]
    sig = torch.stack(_signal(sig[:, 0], sig[:, 1], threshold, x, step), dim=1).flatten()
    drops = v[_I["value_scale_drops"]] + (overflow & armed).double()
    warn_drops = v[_I["warn_scale_drops"]]
    warn_drops = torch.where((warn_drops < 0) & (drops >= c[_C["threshold_scale_drops"]]), step, warn_drops)
    row = (slots == torch.remainder(step, slots.numel())).unsqueeze(1)
    ring = torch.where(row, now.unsqueeze(0), ring)
    return torch.cat([
        (step + 1).view(1),
        v[_I["loss_bad"]:_I["overflow"] + 1] + flags.double(),
        first_bad,
        maxima,
        torch.stack([ema, n,
                     torch.where(ok, torch.minimum(best, smoothed), best),
                     torch.where(exploded & (first_exp < 0), torch.where(crossing >= 0, crossing, step), first_exp),
                     initial]),
        now,
        sig,
        torch.stack([drops, warn_drops, crossing, scale]),
    ]), ring, skip


def _record_update(v: torch.Tensor, c: torch.Tensor, before: list[torch.Tensor],
                   params: list[torch.Tensor]) -> torch.Tensor:
    """The state vector after the last step's update-to-weight ratio, |params - before| / |before|
    over all tensors (a few foreach kernels; pure: `before` is left as it is)."""
    delta = torch.stack(torch._foreach_norm(torch._foreach_sub(before, params)))
    weights = torch.stack(torch._foreach_norm(before))
    ratio = torch.linalg.vector_norm(delta.double()) / torch.linalg.vector_norm(weights.double())
    i = _I["value_update_ratio"]
    value, warn = _signal(v[i], v[i + 1], c[_C["threshold_update_ratio"]], ratio, v[_I["steps"]] - 1)
    return torch.cat([v[:i], torch.stack([value, warn]), v[i + 2:]])


def accumulate(acc: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, dataset_ids: torch.Tensor,
               per_sample: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """acc [D, 3] plus this batch's per-dataset sums of loss, count and correct predictions."""
    x = logits if allowed is None else torch.where(allowed[dataset_ids], logits.float(), float("-inf"))
    correct = (x.argmax(dim=1) == labels).double()
    return acc.index_add(0, dataset_ids, torch.stack([per_sample.double(), torch.ones_like(correct), correct], dim=1))


def _step(v: torch.Tensor, ring: torch.Tensor, acc: torch.Tensor, slots: torch.Tensor, c: torch.Tensor,
          loss: torch.Tensor, gnorm: torch.Tensor, scale: torch.Tensor, logits: torch.Tensor | None,
          labels: torch.Tensor | None, dataset_ids: torch.Tensor | None, per_sample: torch.Tensor | None,
          allowed: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """One step's whole bookkeeping, pure: `_update`, then the batch's per-dataset sums (with labels)."""
    logits = None if logits is None else logits.float()  # once, for the signals and the sums
    v, ring, skip = _update(v, ring, slots, c, loss, gnorm, scale, logits)
    if labels is not None:
        acc = accumulate(acc, logits, labels, dataset_ids, per_sample, allowed)
    return v, ring, acc, skip


def _shape(x: torch.Tensor | None):
    return None if x is None else (x.shape, x.dtype)


def progress(snap: Snapshot) -> float:
    """How far the loss fell: 1 - smoothed loss / initial loss (NaN when either is unknown)."""
    if not (math.isfinite(snap.initial_loss) and math.isfinite(snap.smoothed_loss)) or snap.initial_loss <= 0:
        return math.nan
    return 1.0 - snap.smoothed_loss / snap.initial_loss


@dataclass
class Verdict:
    verdict: str
    reason: str | None = None
    first_bad_step: int = -1

    @property
    def diverged(self) -> bool:
        return self.verdict == DIVERGED

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Snapshot:
    steps: int
    nonfinite_loss_steps: int
    nonfinite_grad_steps: int
    overflow_steps: int
    first_bad_step: int
    first_bad_kind: int
    max_loss: float
    max_grad_norm: float
    smoothed_loss: float
    best_smoothed_loss: float
    first_explosion_step: int
    initial_loss: float
    last_loss: float
    last_grad_norm: float
    signals: dict[str, float] = field(default_factory=dict)  # each signal's largest value so far
    warnings: dict[str, int] = field(default_factory=dict)  # each signal's first step over its threshold, or -1

    @property
    def at_risk(self) -> tuple[str, int] | None:
        """(signal, step) of the first warning, or None: a flag next to the verdict."""
        fired = [(step, SIGNALS.index(name), name) for name, step in self.warnings.items() if step >= 0]
        if not fired:
            return None
        step, _, name = min(fired)
        return name, step

    def signal_metrics(self) -> dict:
        """The signals and warnings as report metrics (Tune's result, MLflow, result.json)."""
        risk = self.at_risk
        m = {AT_RISK: risk is not None, AT_RISK_SIGNAL: risk[0] if risk else None, AT_RISK_STEP: risk[1] if risk else -1}
        for name in SIGNALS:
            m[signal_key(name)] = self.signals[name]
            m[warning_key(name)] = self.warnings[name]
        return m


class DivergenceMonitor:
    """`update` every step (device only), `read` once per report (one sync), `judge` the snapshot.

    The state (the vector `v`, the history ring, the per-dataset sums `acc` [datasets, 3]: loss sum,
    count, correct) lives in tensors that are only ever written in place. On CUDA each step's
    bookkeeping is replayed as a CUDA graph (`graph`: None = on CUDA when `cfg.cuda_graphs`;
    False to run op by op).
    """

    def __init__(self, cfg: MonitorConfig, device: torch.device | str = "cpu", datasets: int = 1,
                 graph: bool | None = None):
        self.cfg = cfg
        self.device = torch.device(device)
        init = [slot.initial for slot in LAYOUT.values()]
        self.v = torch.tensor(init, dtype=torch.float64, device=self.device)
        n = max(1, cfg.history_steps)
        self.ring = torch.full((n, 2), math.nan, dtype=torch.float64, device=self.device)
        self.acc = torch.zeros(datasets, 3, dtype=torch.float64, device=self.device)
        self._slots = torch.arange(n, dtype=torch.float64, device=self.device)
        self._one = torch.ones((), device=self.device)
        self._c = torch.tensor(constants(cfg), dtype=torch.float64, device=self.device)
        self._graph = (self.device.type == "cuda" and cfg.cuda_graphs) if graph is None else graph
        self._steps = GraphedCall(self._pure_step, self._commit_step)
        self._before: list[torch.Tensor] | None = None  # the weights before a measured step
        self._keep = GraphedCall(lambda _: None, self._copy_weights)
        self._record = GraphedCall(self._pure_record, self._commit_record)
        self._params: list[torch.Tensor] = []

    @property
    def cuda_graphs(self) -> int:
        """How many CUDA graphs this monitor has captured (0 off CUDA or with `graph=False`)."""
        return len(self._steps.graphs) + len(self._keep.graphs) + len(self._record.graphs)

    # -- a step: _step's pure part, then its results written into the state in place --------
    def _pure_step(self, x: list) -> tuple[torch.Tensor, ...]:
        return _step(self.v, self.ring, self.acc, self._slots, self._c, *x)

    def _commit_step(self, out: tuple[torch.Tensor, ...]) -> torch.Tensor:
        v, ring, acc, skip = out
        self.v.copy_(v)
        self.ring.copy_(ring)
        self.acc.copy_(acc)
        return skip

    @torch.no_grad()
    def update(self, loss: torch.Tensor, grad_norm: torch.Tensor, scale: torch.Tensor | None = None,
               logits: torch.Tensor | None = None, batch: tuple | None = None, inline: bool = False) -> torch.Tensor:
        """Record one step (`logits`: the model's raw output, for the logit signals; `batch`:
        (labels, dataset_ids, per-sample loss, allowed-classes mask or None), for the per-dataset
        sums); returns 1. if its update must be skipped (non-finite loss or gradient norm), else
        0., as a device tensor for the fused optimizer's `found_inf` (valid until the next step).
        `inline`: op by op even on CUDA (inside the caller's own CUDA graph capture)."""
        scale = self._one if scale is None else scale
        labels, ids, per_sample, allowed = batch if batch is not None else (None, None, None, None)
        x = [loss, grad_norm, scale, logits, labels, ids, per_sample, allowed]  # no grad here: no detach needed
        if inline or not self._graph:
            return self._commit_step(self._pure_step(x))
        # the loss scale outside fp16 (this monitor's own 1) and the class mask never change
        fixed = (2, 7) if scale is self._one else (7,)
        return self._steps(tuple(_shape(t) for t in x), x, fixed)

    # -- the update-to-weight ratio, on the step before a report ----------------------------
    def _copy_weights(self, _) -> None:
        torch._foreach_copy_(self._before, [p.detach() for p in self._params])

    def _pure_record(self, _) -> torch.Tensor:
        return _record_update(self.v, self._c, self._before, [p.detach() for p in self._params])

    def _commit_record(self, v: torch.Tensor) -> None:
        self.v.copy_(v)

    @torch.no_grad()
    def keep_weights(self, params: list[torch.Tensor]) -> None:
        """Copy the weights before an optimizer step (into a buffer kept for the run), for
        `record_update` after it."""
        if self._before is None or len(self._before) != len(params) or \
                any(b.shape != p.shape for b, p in zip(self._before, params)):
            self._before = [torch.empty_like(p, memory_format=torch.preserve_format) for p in params]
            self._keep.graphs.clear()
            self._record.graphs.clear()
        self._params = params
        if self._graph:
            self._keep(tuple(p.data_ptr() for p in params), [])
        else:
            self._copy_weights(None)

    @torch.no_grad()
    def record_update(self, params: list[torch.Tensor]) -> None:
        """Record the update-to-weight ratio of the step since `keep_weights(params)`; device only."""
        self._params = params
        if self._graph:
            self._record(tuple(p.data_ptr() for p in params), [])
        else:
            self._commit_record(self._pure_record(None))

    def history(self) -> list[tuple[int, float, float]]:
        """(step, loss, gradient norm) of the last `monitor.history_steps` steps, raw (inf and NaN
        as they were), oldest first: what led to a divergence. One host sync: call it once, at
        the end of a run, not per step."""
        steps = int(self.v[_I["steps"]].item())
        rows = self.ring.tolist()
        n = len(rows)
        return [(s, *rows[s % n]) for s in range(max(0, steps - n), steps)]

    def set_initial_loss(self, loss: torch.Tensor) -> None:
        """The loss before any update, measured by the caller over a few batches (one batch's loss
        is noisy: on the demo the first batch's ranges 2.7..3.2 over seeds); no sync."""
        self.v[_I["initial_loss"]] = loss.detach().double().to(self.device)

    def state_vector(self) -> torch.Tensor:
        """All flags as one fp64 vector: read it together with other stats in a single sync."""
        return self.v

    def snapshot(self, values: list[float] | None = None) -> Snapshot:
        v = dict(zip(FIELDS, values if values is not None else self.v.tolist()))
        n = int(v["ema_n"])
        smoothed = v["ema"] / (1 - self.cfg.smoothing ** n) if n else math.nan
        return Snapshot(
            steps=int(v["steps"]), nonfinite_loss_steps=int(v["loss_bad"]),
            nonfinite_grad_steps=int(v["grad_bad"]), overflow_steps=int(v["overflow"]),
            first_bad_step=int(v["first_bad"]), first_bad_kind=int(v["first_kind"]),
            max_loss=v["max_loss"], max_grad_norm=v["max_gnorm"], smoothed_loss=smoothed,
            best_smoothed_loss=v["best"], first_explosion_step=int(v["first_explosion"]),
            initial_loss=v["initial_loss"], last_loss=v["last_loss"], last_grad_norm=v["last_gnorm"],
            signals={name: v[f"value_{name}"] if math.isfinite(v[f"value_{name}"]) else math.nan for name in SIGNALS},
            warnings={name: int(v[f"warn_{name}"]) for name in SIGNALS},
        )

    def judge(self, snap: Snapshot, final: bool = False) -> Verdict:
        """stable so far, or diverged with the reason and step of whatever broke first; with
        `final` (the budget is spent), stalled if the loss did not fall enough."""
        found: list[tuple[int, str]] = []
        if snap.nonfinite_loss_steps + snap.nonfinite_grad_steps > self.cfg.max_skipped_steps:
            kind = NONFINITE_LOSS if snap.first_bad_kind == 1 else NONFINITE_GRAD
            found.append((snap.first_bad_step, kind))
        if snap.first_explosion_step >= 0:
            found.append((snap.first_explosion_step, LOSS_EXPLOSION))
        if not found:
            p = progress(snap)
            if final and self.cfg.min_progress > 0 and not (math.isfinite(p) and p >= self.cfg.min_progress):
                return Verdict(STALLED, NO_PROGRESS)
            return Verdict(STABLE)
        step, reason = min(found)
        return Verdict(DIVERGED, reason, step)

    def diverged_now(self) -> bool:
        """`judge`'s divergence on the state as it stands: a host read (on a GPU, a sync; the training
        loop asks each step only where the state is in host memory)."""
        return self.judge(self.snapshot(self.v.tolist())).diverged

    def read(self) -> tuple[Snapshot, Verdict]:
        snap = self.snapshot()
        return snap, self.judge(snap)

    def state_dict(self) -> dict:
        return {"v": self.v.detach().clone(), "ring": self.ring.detach().clone()}

    def load_state_dict(self, state: dict) -> None:
        v = state["v"].to(self.device, torch.float64)
        self.v[:v.numel()] = v  # a checkpoint from before the signals has fewer fields: they start afresh
        if "ring" in state and state["ring"].shape == self.ring.shape:
            self.ring.copy_(state["ring"])
