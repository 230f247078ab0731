"""The lr against a measured stability boundary (--region), or a pointer to measure one."""
from __future__ import annotations

import math
from pathlib import Path

from stablesweep.config import total_steps
from stablesweep.vocab import LR_KEY, SAFETY, format_value

from ..findings import Finding
from ..keys import config_value
from .context import Context


def check_lr(ctx: Context) -> list[Finding]:
    cfg, measured = ctx.cfg, ctx.region
    lr = cfg.training.lr
    setting = (f"precision {cfg.training.precision}, masking {cfg.masking}, clip "
               f"{format_value(cfg.training.max_grad_norm)}, loss {cfg.loss.type}")
    if measured is None:
        return [Finding("lr.unmeasured", "info",
                        f"lr {lr:.3g} is not checked against a measured stability boundary",
                        [f"training.lr: {lr:g} ({setting}); no --region given"],
                        f"run `stablesweep ramp {ctx.config_path}` (or a sweep) and pass its ramp.json "
                        "(or stable_region.json) with --region", LR_KEY)]
    train = sum(s.count for s in ctx.report.splits if s.split == "train")
    run_steps = total_steps(cfg, max(train, 1))
    s = measured.setting_for(cfg)
    name = Path(measured.path).name
    if s is None:
        known = "; ".join(x.label for x in measured.settings[:8]) or "none"
        keys = sorted({k for x in measured.settings for k in x.key})
        mine = ", ".join(f"{k}={format_value(config_value(cfg, k)[1])}" for k in keys)
        return [Finding("lr.setting_unmeasured", "info",
                        f"{name} has no measurement for this config's setting ({mine or setting})",
                        [f"measured settings: {known}"],
                        f"run `stablesweep ramp {ctx.config_path}` with this setting in the space", LR_KEY)]
    budget = s.budget_steps or measured.budget_steps
    bud = f"{budget} steps" if budget else "an unknown step budget"
    ev = [f"{name} ({measured.kind}), setting {s.label}: max stable lr "
          f"{format_value(s.max_stable_lr)}, min diverged lr {format_value(s.min_diverged_lr)}, measured over {bud}",
          f"training.lr: {lr:g}"]
    if budget and run_steps > budget:
        ev.append(f"this config trains {run_steps} steps, longer than the {budget} measured: a run stable for "
                  f"{budget} steps may still diverge later")
    M = s.max_stable_lr
    D = s.min_failed_lr if s.min_failed_lr is not None else s.min_diverged_lr  # the edge: diverged or stalled above
    if s.min_failed_lr is not None:
        ev[0] += f", smallest lr that diverged or stalled above the stable band {format_value(s.min_failed_lr)}"
    if s.cause:
        return [Finding("lr.cause", "error", f"with this setting ({s.label}) training failed at every lr tried in "
                        f"{name}: not an lr boundary", [*ev, s.cause],
                        "change the value named as the cause; no lr fixes it", LR_KEY)]
    if M is None:
        return [Finding("lr.no_stable", "error",
                        f"no lr was stable with this setting ({s.label}) in {name}", ev,
                        "change the setting (precision, masking, clipping) to one with a measured stable lr, or "
                        f"ramp lower than {format_value(D)}", LR_KEY)]
    # the largest safe lr: the margin below the edge (older files: SAFETY x the edge, else the largest stable lr)
    safe = s.largest_safe_lr if s.largest_safe_lr is not None else SAFETY * D if D is not None else M
    if s.recommended_lr is not None:
        rec, why = s.recommended_lr, f"the recommended lr: the best-training lr measured safe, at most {safe:.3g}"
    else:
        rec = min(M, safe)
        why = (f"the largest safe lr: {SAFETY} x {D:.3g}" if D is not None and rec < M else "the largest stable lr") \
            + ("" if rec == M else ", not measured itself")
    if s.largest_safe_lr is not None or D is not None:
        ev[0] += f", largest safe lr {format_value(safe)}"
    if D is not None and lr >= D:
        return [Finding("lr.above_boundary", "error",
                        f"lr {lr:.3g} is at or above the smallest lr that diverged or stalled above the stable "
                        f"band ({D:.3g}) with this setting",
                        ev, f"training.lr: {rec:.3g} ({why})", LR_KEY, {LR_KEY: float(f"{rec:.3g}")})]
    if lr > M:
        return [Finding("lr.above_max_stable", "warning",
                        f"lr {lr:.3g} is {lr / M:.3g}x the largest lr measured stable ({M:.3g}) with this setting",
                        ev,
                        f"training.lr: {rec:.3g} ({why}), or measure up to {lr:g} with "
                        f"`stablesweep ramp`", LR_KEY, {LR_KEY: float(f"{rec:.3g}")})]
    stalls = [x for x in s.stalled_below or [] if x >= lr]
    if stalls:
        return [Finding("lr.too_small", "warning",
                        f"lr {lr:.3g} is at or below an lr that stalled ({max(stalls):.3g}): the loss did not fall "
                        "enough in the measured budget", ev,
                        f"training.lr: {rec:.3g} ({why})", LR_KEY,
                        {LR_KEY: float(f"{rec:.3g}")})]
    return [Finding("lr.within", "info",
                    f"lr {lr:.3g} is within the measured stable range (max stable {M:.3g}; {lr / M:.2g}x of it)",
                    ev, "nothing to change" + (f"; above the largest safe lr {safe:.3g}" if lr > safe else "")
                    + (f"; recommended {rec:.3g} ({why})" if not math.isclose(lr, rec, rel_tol=1e-3) else ""),
                    LR_KEY)]
