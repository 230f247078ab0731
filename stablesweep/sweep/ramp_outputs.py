"""What a ramp says, across its budgets: each setting's answer at its last rung (`Setting.at_target`)
with the budget it holds for and its confirmation, the trend of its bracket and 5%-risk lr from rung
to rung (and, where the target was out of reach, that trend extrapolated to it), and the files:
ramp.json, ramp.md, recommended/<setting>.yaml, ramp.png, ramp_budgets.png; what the answer for the
target cost (`cost`: the rungs and the confirmation next to one full run at the target). A sweep
with a target (`sweep.sweep_rungs`) says its answer at the target with the same functions.

The trend's extrapolation is a power law in the budget, lr(D) = B * D^k, least squares in log-log
over the rungs measured (Bjorck et al., ICLR 2025, fit the optimal lr across token horizons so);
whether the stability edge follows such a law is what the rungs measure, so an extrapolated answer
is marked "extrapolated from N steps", never as measured.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from stablesweep.analysis.answer import (
    RAMP_MD_COLUMNS,
    RAMP_WORDS,
    SettingAnswer,
    answers_markdown,
    boundary_markdown,
)
from stablesweep.sweep.options import samples_of
from stablesweep.sweep.ramp import Budgets, Setting, boundary_runs
from stablesweep.vocab import BUDGET_STEPS, LR_KEY, TRAIN_FLOPS


@dataclass
class Answered:
    """A ramp's answers, per setting in the order of its settings."""

    answers: list[SettingAnswer]
    summary: list[dict]  # ramp.json's settings
    fits: list[tuple] | None  # with replicates: each setting's fit at its last rung
    trends: list[list[dict]]
    extrapolated: list[dict | None]


def answer_settings(settings: list[Setting], budgets: Budgets, safety: float, replicates: int, base_seed: int,
                    confirm: int) -> Answered:
    from stablesweep.analysis.boundary import fit_boundary

    answers, summary, fits, trends, extra = [], [], [], [], []
    for s in settings:
        rungs = [s, *s.longer]
        rung_fits = [fit_boundary(boundary_runs(r, base_seed)) for r in rungs] if replicates else [None] * len(rungs)
        bounds = [f[0].to_dict() if f else None for f in rung_fits]
        t, b = s.at_target, bounds[-1]
        rows = trend(s, bounds, budgets.probe)
        ex = extrapolate(rows, budgets.target) if (t.budget or budgets.probe) < budgets.target else None
        holds, confirmed = holds_for(t, budgets, ex), confirmation(t, confirm, budgets)
        own = [r.answer(safety, x) for r, x in zip(rungs, bounds)]
        confirms = [p for r in rungs for p in r.confirm_probes]
        probes = sum(a.probes for a in own) + len(confirms)
        compute = sum(a.compute_s for a in own) + sum(p.wall_s for p in confirms)
        flops = sum(a.train_flops for a in own) + sum(p.train_flops for p in confirms)
        reps = [p for r in rungs for p in r.replicates]  # every rung's, not the last one's only
        rep_flops = float(sum(p.train_flops for p in reps))
        a = replace(own[-1], holds_for=holds, confirmation=confirmed, probes=probes, compute_s=compute,
                    train_flops=flops, replicates=len(reps), replicate_flops=rep_flops)
        x = t.summary(safety, b)
        x.update({"range_test": asdict(s.range_test) if s.range_test else None,
                  "probe_list": [asdict(p) for p in s.every_probe], "probes": probes, "compute_s": compute,
                  TRAIN_FLOPS: flops, "replicates": len(reps), "replicate_flops": rep_flops,
                  "replicate_compute_s": float(sum(p.wall_s for p in reps)),
                  "total": _total(all_runs(s)), "target_steps": budgets.target, "holds_for": holds,
                  "confirmation": confirmed, "budgets": rows, "extrapolated": ex})
        answers.append(a)
        summary.append(x)
        fits.append(rung_fits[-1])
        trends.append(rows)
        extra.append(ex)
    return Answered(answers, summary, fits if replicates else None, trends, extra)


def trend(s: Setting, bounds: list[dict | None], probe_budget: int) -> list[dict]:
    """Per rung of a setting: its budget, bracket and (with replicates) lr at 5% risk."""
    return [{BUDGET_STEPS: r.budget or probe_budget, "max_stable_lr": r.max_stable, "min_failed_lr": r.min_failed,
             "lr_at_5pct_risk": (b or {}).get("lr_at_risk"), "status": r.status, "probes": len(r.tested)}
            for r, b in zip([s, *s.longer], bounds)]


def extrapolate(rows: list[dict], target: int) -> dict[str, Any]:
    """The edge's trend across the rungs measured, as a power law of the budget, at the target:
    the lr at 5% risk where every rung has one, else the max stable lr. With one rung: no trend."""
    key = "lr_at_5pct_risk" if all(r.get("lr_at_5pct_risk") for r in rows) else "max_stable_lr"
    pts = [(math.log(r[BUDGET_STEPS]), math.log(r[key])) for r in rows if r.get(key)]
    last = rows[-1]
    out: dict[str, Any] = {"from_steps": last[BUDGET_STEPS], "of": key, "lr_from": last.get(key),
                           "exponent": None, "lr_at_target": None}
    if len({x for x, _ in pts}) < 2:
        out["note"] = "one budget measured: no trend to extrapolate"
        return out
    mx, my = sum(x for x, _ in pts) / len(pts), sum(y for _, y in pts) / len(pts)
    k = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    out.update(exponent=k, lr_at_target=math.exp(my + k * (math.log(target) - mx)))
    return out


def holds_for(t: Setting, budgets: Budgets, ex: dict | None) -> str:
    """The budget a setting's answer holds for, in words."""
    at = t.budget or budgets.probe
    if at >= budgets.target:
        return f"{budgets.target} steps (the target)"
    why = "the target is beyond --max-steps" if budgets.extrapolated and at >= budgets.reach else \
        "no bracket to promote further"
    lr = ex.get("lr_at_target") if ex else None
    return (f"extrapolated from {at} steps to {budgets.target} ({why})"
            + (f"; the trend puts the edge near lr {lr:.3g} there" if lr else ""))


def confirmation(t: Setting, confirm: int, budgets: Budgets) -> str:
    if t.confirmation is not None and t.confirmation.tried:
        return t.confirmation.words()
    if not confirm:
        return "not confirmed (--confirm 0)"
    if (t.budget or budgets.probe) < budgets.target:
        return "not confirmed (the target was not reached)"
    return "not confirmed (no recommended lr)"


def all_runs(s: Setting) -> list:
    """Every run a setting made: its range test, the probes and replicates of every rung, the confirmations."""
    return ([s.range_test] if s.range_test and s.range_test not in s.every_probe else []) + s.every_probe


def _flops_run(ps: list) -> float:
    """FLOPs of the steps the runs ran: a promoted probe that went on from a checkpoint counts its own steps."""
    return float(sum(p.train_flops * (p.steps - p.start_step) / p.steps for p in ps if p.steps))


def _total(ps: list) -> dict[str, Any]:
    return {"runs": len(ps), TRAIN_FLOPS: _flops_run(ps), "compute_s": float(sum(p.wall_s for p in ps))}


def cost(settings: list[Setting], budgets: Budgets) -> dict[str, Any]:
    """What the answer for the target cost, for a ramp and a sweep alike: the FLOPs and wall seconds
    of the probes at the rungs above the first budget and of the confirmation runs, next to one full
    run at the target (FLOPs a step, the median over the probes, x the target steps), and of every
    run in all (`all_runs`: the first budget's probes and every rung's replicates too). A probe counts
    the steps it ran: a promoted probe that went on from a checkpoint, not those before it."""
    flops = _flops_run
    rungs = [p for s in settings for r in s.longer for p in r.probes]
    confirms = [p for s in settings for r in (s, *s.longer) for p in r.confirm_probes]
    per_step = sorted(p.train_flops / p.steps for s in settings for p in s.every_probe if p.steps and p.train_flops)
    fps = per_step[len(per_step) // 2] if per_step else None
    full = fps * budgets.target if fps else None
    out = {"target_steps": budgets.target, "rung_probes": len(rungs), "rungs_flops": flops(rungs),
           "rungs_s": float(sum(p.wall_s for p in rungs)), "confirm_runs": len(confirms),
           "confirm_flops": flops(confirms), "confirm_s": float(sum(p.wall_s for p in confirms)),
           "flops_per_step": fps, "full_run_flops": full}
    every = [p for s in settings for p in all_runs(s)]
    out.update({"all_runs": len(every), "all_flops": flops(every), "all_s": float(sum(p.wall_s for p in every))})
    out["full_runs"] = (out["rungs_flops"] + out["confirm_flops"]) / full if full else None
    out["all_full_runs"] = out["all_flops"] / full if full else None
    return out


def cost_text(c: dict[str, Any]) -> str:
    """`cost`, in a line."""
    full = c["full_run_flops"]
    return (f"cost of the answer for {c['target_steps']} steps: rungs {c['rung_probes']} probe(s), "
            f"{c['rungs_flops']:.3g} FLOPs, {c['rungs_s']:.0f} s; confirmation {c['confirm_runs']} run(s), "
            f"{c['confirm_flops']:.3g} FLOPs, {c['confirm_s']:.0f} s; one full run at the target "
            + (f"{full:.3g} FLOPs ({c['flops_per_step']:.3g} a step x {c['target_steps']}): the rungs and the "
               f"confirmation cost {c['full_runs']:.1f} full runs" if full else "unknown (no probe recorded its FLOPs)")
            + (f"; in all {c['all_runs']} run(s), {c['all_flops']:.3g} FLOPs, {c['all_s']:.0f} s"
               + (f" ({c['all_full_runs']:.1f} full runs)" if full else "") if "all_runs" in c else ""))


def cost_metrics(c: dict[str, Any]) -> dict[str, float]:
    """`cost` as the parent MLflow run's metrics."""
    return {k: float(c[k]) for k in ("rungs_flops", "rungs_s", "confirm_flops", "confirm_s", "full_run_flops",
                                     "all_flops", "all_s")
            if c.get(k) is not None}


def holds_lines(answers: list[SettingAnswer]) -> list[str]:
    """What each setting's answer holds for, as markdown."""
    return ["## What each answer holds for", "", *[f"- {a.label}: {a.holds_for}; {a.confirmation}" for a in answers]]


def budgets_table(answers: list[SettingAnswer], trends: list[list[dict]]) -> list[str]:
    """Each setting's bracket (and 5%-risk lr) at each budget measured, as markdown."""
    md = ["## Across budgets", "", "| setting | budget (steps) | max stable lr | min failed lr | "
          "lr at 5% risk | status | probes |", "|---|---|---|---|---|---|---|"]
    fmt = lambda v: f"{v:.3g}" if v else "-"  # noqa: E731
    for a, rows in zip(answers, trends):
        md += [f"| {a.label} | {r[BUDGET_STEPS]} | {fmt(r['max_stable_lr'])} | {fmt(r['min_failed_lr'])} | "
               f"{fmt(r['lr_at_5pct_risk'])} | {r['status']} | {r['probes']} |" for r in rows]
    return md


# ---- files -------------------------------------------------------------------------------------

def write_ramp(settings: list[Setting], done: Answered, opts, base: dict, cfg, ramp_dir: Path, name: str,
               budgets: Budgets, climb: str) -> dict[str, Path]:
    """ramp.json (`done.summary`), ramp.md, recommended/<setting>.yaml, ramp.png, and with more than
    one budget ramp_budgets.png."""
    from stablesweep.analysis.plots import budget_data, plot_budgets, plot_ramp, ramp_data
    from stablesweep.analysis.recommended import write_recommended_set

    answers, summary = done.answers, done.summary
    files: dict[str, Path] = {}
    budget = cfg.training.steps
    doc = {"kind": "ramp", "name": name, "config": str(Path(opts.config).resolve()),
           "space": str(Path(opts.space).resolve()) if opts.space else None,
           "lr_start": opts.lr_start, "lr_stop": opts.lr_stop, "ladder": opts.ladder, "climb": climb,
           "resolution": opts.resolution, "safety": opts.safety, "mode": opts.mode,
           "first_pass": opts.first_pass, BUDGET_STEPS: budget, **budgets.to_dict(),
           "holds_for": budgets.holds_for(), "cost": cost(settings, budgets),
           "note": f"every verdict holds for a budget of {budget} steps a probe" if len(budgets.rungs) == 1 else
                   f"every verdict holds for its probe's budget ({budget} steps a first probe, longer at the rungs "
                   "above); each setting's answer for its last rung's (holds_for)",
           "settings": summary}
    files["ramp.json"] = ramp_dir / "ramp.json"
    files["ramp.json"].write_text(json.dumps(doc, indent=2, default=str) + "\n")
    md = [f"# lr ramp {name}", "", f"Budget: {budget} steps a probe ({opts.mode} mode); ladder {opts.ladder} "
          f"({climb} climb) from "
          f"{opts.lr_start:g} to {opts.lr_stop:g}; resolution {opts.resolution}. *largest safe lr*: {opts.safety} x "
          "the lr at 5% risk (with --replicates), else x *min failed lr*, else *max stable lr* where none failed. "
          "*recommended lr*: the lr with the best objective at the budget among the stable probes trained from "
          f"scratch at or below it ({samples_of(opts)} lr(s) sampled below it once bracketed).", "",
          f"The answer is for {budgets.holds_for()}.", "",
          ("Each bracket is P(fails | lr) fitted over replicates (below)." if opts.replicates else
           "Each bracket is a single-seed estimate: one probe an lr; --replicates K measures P(fails | lr)."), "",
          "*min failed lr*: the smallest lr that did not train, diverged or stalled above the stable band "
          "(finite, but the loss fell less than monitor.min_progress of its initial loss). The bracket lies "
          "between *max stable lr* and it. *stalled*: lrs that stalled below the band (too small) and above it.", "",
          *answers_markdown(answers, RAMP_MD_COLUMNS)]
    if answers and opts.replicates:
        md += ["", *boundary_markdown(answers, RAMP_WORDS, seeds=opts.replicates,
                                      budget=answers[0].budget_steps or budget, safety=opts.safety)]
    md += ["", *holds_lines(answers)]
    if len(budgets.rungs) > 1 or budgets.extrapolated:
        md += ["", *budgets_table(answers, done.trends), "", "## Cost", "", cost_text(doc["cost"])]
    files["ramp.md"] = ramp_dir / "ramp.md"
    files["ramp.md"].write_text("\n".join(md).rstrip("\n") + "\n")
    files.update(write_recommended_set(
        [(a, {**s.params, LR_KEY: a.recommended_lr, "training.steps": budgets.target},  # the run it is for
          f"setting {a.label}; for {a.holds_for}; {a.confirmation}")
         for s, a in zip(settings, answers) if a.recommended_lr is not None],
        ramp_dir, base, tool="ramp", what=f"the ramp {name}", seeds=opts.replicates,
        source=cfg.source, base_dir=cfg.base_dir))
    labels = [a.label for a in answers]
    probes = [[(p.lr, p.verdict, p.phase) for p in s.at_target.tested] for s in settings]
    shown = budgets.reach if len(budgets.rungs) > 1 else budget
    files["ramp.png"] = plot_ramp(ramp_data(labels, probes, summary, shown), ramp_dir / "ramp.png")
    if len(budgets.rungs) > 1 or budgets.extrapolated:
        files["ramp_budgets.png"] = plot_budgets(budget_data(labels, done.trends, budgets.target, done.extrapolated),
                                                 ramp_dir / "ramp_budgets.png")
    return files
