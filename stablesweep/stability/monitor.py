"""The divergence monitor: per-step flags kept on the device, one host read per report interval.

Per step (`update`, device ops only, no branch on the host): counts of non-finite losses and
gradients, the first bad step and its kind, the max finite loss and gradient norm, an
exponentially smoothed loss (bias-corrected) and its best value, and the first step at which the
smoothed loss exceeded `explosion_factor` x its best (the fastai/Lightning lr-finder rule), and the
initial loss (the trainer sets it to the mean loss of the first `initial_batches` batches at the
initial weights, before any update; else it is the first step's).

The whole state is one fp64 vector and the update is one pure function of it, so on CUDA it is
compiled (torch.compile) into a kernel or two: the guard costs a few launches a step, not dozens.
The config's numbers (smoothing, explosion factor, min_steps, the thresholds) go in as one more
fp64 vector, not as Python constants: one compiled graph serves every config a process trains (a
Ray actor reused across trials), and a call's guards are a few tensor checks.

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
  `history_steps` steps' finite norms (the ring already holds them), from step `min_steps` on;
- `max_logit`: the largest |logit| of the model's raw output (the incident's 50-logit clip acts there);
- `logsumexp`: the largest |logsumexp| of a sample's raw logits (what z-loss pulls to 0);
- `scale_drops`: fp16 loss-scale drops (overflow steps) after the first `min_steps` steps;
- `update_ratio`: |w_after - w_before| / |w_before| of one optimizer step. It needs a copy of
  every weight, so it is sampled, not per step: on the step before each report (the value the
  report shows is fresh), with foreach ops (`copy_weights`, then `record_update`: a handful of
  multi-tensor kernels, not one clone per parameter) and the recording compiled like `update`.
A run whose signal crossed its threshold is `at_risk` (the first such signal and its step): a flag
next to the verdict, not a verdict.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from stablesweep.config import MonitorConfig
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


# the fields of the state vector, in order: the verdict's, then each signal's value and warning step
FIELDS = ("steps", "loss_bad", "grad_bad", "overflow", "first_bad", "first_kind", "max_loss",
          "max_gnorm", "ema", "ema_n", "best", "first_explosion", "initial_loss", "last_loss",
          "last_gnorm") + tuple(f"{kind}_{name}" for name in SIGNALS for kind in ("value", "warn"))
_I = {name: i for i, name in enumerate(FIELDS)}
_INITIAL = {"first_bad": -1.0, "max_loss": -math.inf, "max_gnorm": -math.inf, "best": math.inf,
            "first_explosion": -1.0, "initial_loss": math.nan, "last_loss": math.nan, "last_gnorm": math.nan,
            **{f"value_{name}": (0.0 if name == "scale_drops" else -math.inf) for name in SIGNALS},
            **{f"warn_{name}": -1.0 for name in SIGNALS}}


def thresholds(cfg: MonitorConfig) -> dict[str, float]:
    """Each signal's warning threshold (inf when its `monitor.warn_*` is null: never warns)."""
    return {name: math.inf if (x := getattr(cfg, f"warn_{name}")) is None else float(x) for name in SIGNALS}


# the config's numbers as the update reads them: one fp64 vector (see the module's docstring)
CONSTANTS = ("beta", "factor", "min_steps") + tuple(f"threshold_{name}" for name in SIGNALS)
_C = {name: i for i, name in enumerate(CONSTANTS)}


def constants(cfg: MonitorConfig) -> list[float]:
    warn = thresholds(cfg)
    return [cfg.smoothing, cfg.explosion_factor, float(cfg.min_steps), *(warn[name] for name in SIGNALS)]


def logit_stats(logits: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(largest |logit|, largest |logsumexp| of a row) of raw logits, as fp64 scalars like `like`;
    NaN without logits (none given, or an empty batch)."""
    if logits is None or logits.numel() == 0:  # None and shapes are known when traced: no branch at run time
        nan = torch.full_like(like, math.nan, dtype=torch.float64)
        return nan, nan
    x = logits.float()
    return x.abs().amax().double(), torch.logsumexp(x, dim=1).abs().amax().double()


def _signal(v: torch.Tensor, c: torch.Tensor, name: str, x: torch.Tensor, step: torch.Tensor,
            armed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(largest value so far, first warning step) of one signal after a new value `x` at `step`."""
    value, warn, threshold = v[_I[f"value_{name}"]], v[_I[f"warn_{name}"]], c[_C[f"threshold_{name}"]]
    if armed is not None:
        x = torch.where(armed, x, math.nan)
    new_value = torch.where(torch.isfinite(x), torch.maximum(value, x), value)
    return new_value, torch.where((warn < 0) & (x > threshold), step, warn)


def classify(loss: torch.Tensor, grad_norm: torch.Tensor, scale: torch.Tensor):
    """(loss_bad, grad_bad, overflow) of one step.

    A non-finite gradient norm with a finite loss is `grad_bad`, except in fp16 at a loss scale
    above 1: there it is the scaler finding its range (`overflow`), an expected skip, not divergence.
    """
    loss_bad = ~torch.isfinite(loss)
    norm_bad = ~torch.isfinite(grad_norm) & ~loss_bad
    overflow = norm_bad & (scale > 1)
    return loss_bad, norm_bad & ~overflow, overflow


def _update(v: torch.Tensor, ring: torch.Tensor, slots: torch.Tensor, c: torch.Tensor, loss: torch.Tensor,
            gnorm: torch.Tensor, scale: torch.Tensor, logits: torch.Tensor | None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the new state vector, the new history ring, the skip flag as 0./1. for the fused
    optimizer's found_inf) after one step: a pure function, compiled on CUDA, the logit
    statistics included (one pass over the logits inside the same call). The ring [N, 2] keeps the
    raw loss and gradient norm of the last N steps, step s in row s % N; `c` is `constants(cfg)`."""
    beta, factor, min_steps = c[_C["beta"]], c[_C["factor"]], c[_C["min_steps"]]
    skip = (~torch.isfinite(loss + gnorm)).float()
    loss = loss.double()
    gnorm = gnorm.double()
    loss_bad, grad_bad, overflow = classify(loss, gnorm, scale)
    step = v[_I["steps"]]
    bad = loss_bad | grad_bad
    ok = ~bad & ~overflow
    first_bad = v[_I["first_bad"]]
    new_bad = bad & (first_bad < 0)
    kind = torch.where(loss_bad, 1.0, 2.0)
    ema = torch.where(ok, beta * v[_I["ema"]] + (1 - beta) * torch.nan_to_num(loss), v[_I["ema"]])
    n = v[_I["ema_n"]] + ok.double()
    smoothed = ema / (1 - beta ** torch.clamp(n, min=1.0))
    best = v[_I["best"]]
    exploded = ok & (n > min_steps) & (smoothed > factor * best)
    first_exp = v[_I["first_explosion"]]
    # the signals; the spike against the previous steps' norms, before this step enters the ring
    armed = step >= min_steps
    past = ring[:, 1]
    median = torch.nanmedian(torch.where(torch.isfinite(past), past, math.nan))
    spike = _signal(v, c, "grad_spike", gnorm / median, step, armed)
    max_logit, lse = logit_stats(logits, loss)
    logit = _signal(v, c, "max_logit", max_logit, step)
    lse = _signal(v, c, "logsumexp", lse, step)
    drops = v[_I["value_scale_drops"]] + (overflow & armed).double()
    warn_drops = v[_I["warn_scale_drops"]]
    warn_drops = torch.where((warn_drops < 0) & (drops >= c[_C["threshold_scale_drops"]]), step, warn_drops)
    row = (slots == torch.remainder(step, slots.numel())).unsqueeze(1)
    ring = torch.where(row, torch.stack([loss, gnorm]).unsqueeze(0), ring)
    return torch.stack([
        step + 1,
        v[_I["loss_bad"]] + loss_bad.double(),
        v[_I["grad_bad"]] + grad_bad.double(),
        v[_I["overflow"]] + overflow.double(),
        torch.where(new_bad, step, first_bad),
        torch.where(new_bad, kind, v[_I["first_kind"]]),
        torch.where(ok, torch.maximum(v[_I["max_loss"]], loss), v[_I["max_loss"]]),
        torch.where(torch.isfinite(gnorm), torch.maximum(v[_I["max_gnorm"]], gnorm), v[_I["max_gnorm"]]),
        ema,
        n,
        torch.where(ok, torch.minimum(best, smoothed), best),
        torch.where(exploded & (first_exp < 0), step, first_exp),
        torch.where((step == 0) & torch.isnan(v[_I["initial_loss"]]), loss, v[_I["initial_loss"]]),
        loss,
        gnorm,
        *spike,
        v[_I["value_update_ratio"]], v[_I["warn_update_ratio"]],
        *logit,
        *lse,
        drops, warn_drops,
    ]), ring, skip


def _record_update(v: torch.Tensor, c: torch.Tensor, delta_norms: torch.Tensor,
                   weight_norms: torch.Tensor) -> torch.Tensor:
    """The state vector after the last step's update-to-weight ratio: the norms of each tensor's
    update and of its weights before it (compiled on CUDA like `_update`)."""
    ratio = torch.linalg.vector_norm(delta_norms.double()) / torch.linalg.vector_norm(weight_norms.double())
    value, warn = _signal(v, c, "update_ratio", ratio, v[_I["steps"]] - 1)
    i = _I["value_update_ratio"]
    return torch.cat([v[:i], torch.stack([value, warn]), v[i + 2:]])


def copy_weights(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """A copy of the weights before an optimizer step, for `update_ratio` (one foreach op: a few
    multi-tensor kernels on CUDA, not one copy kernel a parameter)."""
    return torch._foreach_mul([p.detach() for p in params], 1.0)


def update_norms(before: list[torch.Tensor], params: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(|params - before| per tensor, |before| per tensor), on the device (`before` is overwritten)."""
    weights = torch.stack(torch._foreach_norm(before))
    torch._foreach_sub_(before, [p.detach() for p in params])
    return torch.stack(torch._foreach_norm(before)), weights


def update_ratio(before: list[torch.Tensor], params: list[torch.Tensor]) -> torch.Tensor:
    """|params - before| / |before| over all tensors, on the device (`before` is overwritten)."""
    delta, weights = update_norms(before, params)
    return torch.linalg.vector_norm(delta) / torch.linalg.vector_norm(weights)


_compiled: dict = {}


def _compile(fn):
    """`fn` compiled once per process: static shapes first, dynamic ones after a shape changes
    (another batch size or class count in the same process), so a process holds few graphs."""
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, fullgraph=True)
    return _compiled[fn]


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

    `compile`: None = compile the update on CUDA only; True/False to force.
    """

    def __init__(self, cfg: MonitorConfig, device: torch.device | str = "cpu", compile: bool | None = None):
        self.cfg = cfg
        self.device = torch.device(device)
        init = [_INITIAL.get(name, 0.0) for name in FIELDS]
        self.v = torch.tensor(init, dtype=torch.float64, device=self.device)
        n = max(1, cfg.history_steps)
        self.ring = torch.full((n, 2), math.nan, dtype=torch.float64, device=self.device)
        self._slots = torch.arange(n, dtype=torch.float64, device=self.device)
        self._one = torch.ones((), device=self.device)
        self._c = torch.tensor(constants(cfg), dtype=torch.float64, device=self.device)
        use_compile = self.device.type == "cuda" if compile is None else compile
        self._fn, self._record = (_compile(_update), _compile(_record_update)) if use_compile else \
            (_update, _record_update)

    @torch.no_grad()
    def update(self, loss: torch.Tensor, grad_norm: torch.Tensor, scale: torch.Tensor | None = None,
               logits: torch.Tensor | None = None) -> torch.Tensor:
        """Record one step (`logits`: the model's raw output, for the logit signals); returns 1. if
        its update must be skipped (non-finite loss or gradient norm), else 0., as a device tensor
        for the fused optimizer's `found_inf`."""
        scale = self._one if scale is None else scale
        logits = None if logits is None else logits.detach()
        self.v, self.ring, skip = self._fn(self.v, self.ring, self._slots, self._c, loss.detach(),
                                           grad_norm.detach(), scale, logits)
        return skip

    @torch.no_grad()
    def record_update(self, before: list[torch.Tensor], params: list[torch.Tensor]) -> None:
        """Record the update-to-weight ratio of the last step: `before` is `copy_weights(params)`
        taken before it (and is overwritten); device only, a few foreach kernels and one call."""
        self.v = self._record(self.v, self._c, *update_norms(before, params))

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
        self.v = self.v.index_copy(0, torch.tensor([_I["initial_loss"]], device=self.device),
                                   loss.detach().double().reshape(1).to(self.device))

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

    def read(self) -> tuple[Snapshot, Verdict]:
        snap = self.snapshot()
        return snap, self.judge(snap)

    def state_dict(self) -> dict:
        return {"v": self.v.detach().clone(), "ring": self.ring.detach().clone()}

    def load_state_dict(self, state: dict) -> None:
        v = state["v"].to(self.device, torch.float64)
        if v.numel() < len(FIELDS):  # a checkpoint from before the signals: they start afresh
            v = torch.cat([v, self.v[v.numel():]])
        self.v = v.clone()
        if "ring" in state and state["ring"].shape == self.ring.shape:
            self.ring = state["ring"].to(self.device, torch.float64).clone()
