"""A sweep's answer for a target budget longer than its trials' (`sweep --target-steps N`): the ramp's
rungs and confirmation, run after the sweep's trials (and its replicates) through the ramp's own
planner and Tune searcher.

Each combination of the categorical axes (as the replicate round picks them: its other params those
of its trial at the largest stable lr) becomes a ramp `Setting` whose probes at the first budget are
the combination's sweep trials and replicates (`seeded_settings`; a stable trial's last checkpoint its probe's, so that at constant lr
its promotion goes on from it). A `RampSearcher` entered at its
promote phase then does what a ramp does above its first budget: x4 rungs up to the target, each
seeded with the lrs that bound the bracket below, its climb and bisection, replicates (--replicates
K) and, at the last rung, the recommended lr confirmed with --confirm fresh seeds at the target
(`sweep.ramp_search`). The lr ladder the rungs climb is the space's lr grid (its widest step the
resolution they bisect to, as fine as the sweep measured), or 1-2-5 a decade over a continuous lr
axis (resolution 1.25, the ramp's). All of it is one Tune experiment in OUT/NAME/rungs
(`ramp_runner.run_probes`), restored by `sweep --resume` as the replicates' is: a probe that ended
never runs again.

Its probes are rows of trials.csv (their `phase`: promote, ladder, bisect, replicate, sample,
confirm; their `budget_steps`) and MLflow children of the sweep's parent run (tag `phase`); not
Optuna trials. The answer for the target (`ramp_outputs.answer_settings`: what it holds for, its
confirmation, the trend across budgets, the cost) goes into stable_region.json/.md, the
recommended configs (with training.steps the target), figures/budgets.png, the terminal and the
parent run.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from stablesweep.analysis.answer import RAMP_TEXT_COLUMNS, SettingAnswer, answers_text
from stablesweep.sweep.options import RampOptions, RunOptions
from stablesweep.sweep.plan import SweepPlan
from stablesweep.sweep.ramp import BRACKETED, NEVER_DIVERGED, NEVER_TRAINED, Probe, Setting, ladder
from stablesweep.sweep.stopper import Outcome
from stablesweep.vocab import (
    BUDGET_STEPS,
    DIVERGED,
    FIRST_BAD_STEP,
    LR_KEY,
    OBJECTIVE,
    REASON,
    REPLICATE,
    SAFETY,
    SEED_KEY,
    STABLE,
    STALLED,
    STEPS,
    TRAIN_FLOPS,
    UNFINISHED,
    VERDICT,
    py,
)

RUNGS = "rungs"  # the rungs' Tune experiment, in the sweep's
SWEEP_PHASE = "sweep"  # the phase of a sweep's own trial, as a probe of its setting
PARALLEL = 2  # probes of a setting at once at a rung (the ramp's default --parallel)


@dataclass
class Rungs:
    """The rungs and confirmation of a sweep: its settings, their probes as table rows, the answer."""

    settings: list[Setting]
    table: pd.DataFrame  # a row a probe of the rungs' experiment (its phase, seed and budget)
    outcomes: dict[str, Outcome]
    finished: bool  # False: stopped (Ctrl-C, SIGTERM) before every setting was done; --resume goes on
    budgets: Any  # sweep.budgets.Budgets
    confirm: int
    answered: Any = None  # ramp_outputs.Answered, once finished
    cost: dict | None = None

    @property
    def answers(self) -> list[SettingAnswer]:
        return self.answered.answers if self.answered else []

    def recommended(self) -> tuple[Setting, SettingAnswer] | None:
        """The combination whose recommended lr at the target trains best (recommended.yaml's)."""
        cands = [(s, a) for s, a in zip(self.settings, self.answers) if a.recommended_lr is not None]
        return min(cands, key=lambda x: (x[1].recommended_objective is None, x[1].recommended_objective or 0.0),
                   default=None)

    def lines(self) -> list[str]:
        """The answer for the target, for a terminal."""
        out = [f"the answer for {self.budgets.holds_for()}:", answers_text(self.answers, RAMP_TEXT_COLUMNS)]
        return out + [f"  {a.label}: the answer holds for {a.holds_for}; {a.confirmation}" for a in self.answers]

    def cost_line(self) -> str:
        """What the answer for the target cost (`ramp_outputs.cost_text`), in a line."""
        from stablesweep.sweep.ramp_outputs import cost_text

        return cost_text(self.cost) if self.cost else ""


def rung_options(plan: SweepPlan) -> RampOptions:
    """The ramp's options the rungs run with: the sweep's run options (where and how a trial runs),
    restart mode, the ladder and resolution of `lr_ladder`, the sweep's --replicates, no samples
    beyond the one a rung needs where nothing measured is safe (the sweep's own trials sampled the
    lrs), the default safety."""
    rungs, resolution = lr_ladder(plan)
    run = {f.name: getattr(plan.opts, f.name) for f in fields(RunOptions)}
    return RampOptions(**run, lr_start=rungs[0], lr_stop=rungs[-1], resolution=resolution, parallel=PARALLEL,
                       safety=SAFETY, replicates=plan.replicates, samples=0, evaluate=False, mode="restart",
                       target_steps=plan.budgets.target, max_steps=plan.budgets.reach, confirm=plan.confirm)


def lr_ladder(plan: SweepPlan) -> tuple[list[float], float]:
    """The lrs a rung climbs and steps down (the space's lr grid, else 1-2-5 a decade over its
    range) and the ratio its bisection stops at (the grid's widest step, else 1.25)."""
    axis = plan.space.axes[LR_KEY]
    if axis.categorical:
        values = sorted({float(v) for v in axis.values})
        ratios = [b / a for a, b in zip(values, values[1:]) if a > 0]
        return values, max(ratios, default=1.25)
    return ladder(float(axis.low), float(axis.high), "1-2-5"), 1.25


def seeded_settings(plan: SweepPlan, done: pd.DataFrame) -> list[Setting]:
    """A Setting per combination of the sweep's ended trials `done` (with a `phase` and `seed` where
    it has replicates), its probes at the first budget those trials (seed None: the config's) and
    replicates; its params those of its trial at the largest stable lr (else its first trial)."""
    from stablesweep.analysis.region import analyze, rows_of

    space = plan.space
    judged = done[done[VERDICT].isin([STABLE, STALLED, DIVERGED])]
    own = judged[judged["phase"] == SWEEP_PHASE] if "phase" in judged.columns else judged
    region = analyze(own, lr_key=LR_KEY, group_keys=space.categorical_keys, param_keys=space.keys, importance=False)
    rungs, _ = lr_ladder(plan)
    settings = []
    for i, g in enumerate(region.groups):
        mine = rows_of(judged, region.group_keys, g.key)
        top = mine[(mine[VERDICT] == STABLE) & (mine[LR_KEY] == g.max_stable_lr)]
        first = (top if len(top) else mine).iloc[0]
        s = Setting(key=f"s{i:02d}", params={k: py(first[k]) for k in space.keys if k != LR_KEY}, rungs=rungs)
        s.probes = [_probe(r, _checkpoint(plan, r)) for _, r in mine.iterrows()]
        lo, hi = s.max_stable, s.min_failed
        s.status = BRACKETED if lo and hi else NEVER_DIVERGED if lo else NEVER_TRAINED
        settings.append(s)
    return settings


def _checkpoint(plan: SweepPlan, r: pd.Series) -> str | None:
    """The last checkpoint of a stable sweep trial, from which its promoted probe goes on at constant
    lr, where Tune's experiment is on a path (a bucket's: None, the promoted probe starts afresh)."""
    if r[VERDICT] != STABLE or r.get("phase") == REPLICATE or plan.storage != str(plan.out):
        return None
    last = max((plan.sweep_dir / f"trial_{r['trial_id']}").glob("checkpoint_*"), default=None)
    return str(last) if last is not None else None


def _probe(r: pd.Series, checkpoint: str | None) -> Probe:
    """A sweep's trial (or replicate) `r` as a probe of its setting at the first budget."""
    rep = r.get("phase") == REPLICATE
    bad, objective = py(r.get(FIRST_BAD_STEP)), py(r.get(OBJECTIVE))
    return Probe(float(r[LR_KEY]), r[VERDICT], py(r.get(REASON)), -1 if bad is None else int(bad),
                 int(py(r.get(STEPS)) or 0), float(py(r.get(TRAIN_FLOPS)) or 0.0), float(py(r.get("wall_s")) or 0.0),
                 REPLICATE if rep else SWEEP_PHASE, float("nan") if objective is None else float(objective),
                 checkpoint=checkpoint, trial_id=r["trial_id"], node_id=py(r.get("node_id")),
                 seed=int(r["seed"]) if rep else None)


def run_rungs(plan: SweepPlan, table: pd.DataFrame, replicates: tuple[pd.DataFrame, dict] | None, tracker,
              parent: str, echo: Callable[[str], None], *, max_concurrent: int, max_failures: int) -> Rungs | None:
    """The rungs and confirmation (see the module docstring); None while the sweep's own trials, or
    its replicates, have not all ended (--resume runs them first)."""
    from stablesweep.sweep.ramp_runner import run_probes
    from stablesweep.sweep.ramp_search import PROMOTING, describe
    from stablesweep.sweep.records import trial_records, trials_table

    reps = replicates[0] if replicates is not None else None
    if (table[VERDICT] == UNFINISHED).any() or (reps is not None and (reps[VERDICT] == UNFINISHED).any()) \
            or (plan.replicates and reps is None):
        echo(f"rungs: not yet, the sweep's {'replicates' if plan.replicates else 'trials'} have not all ended "
             "(--resume runs them)")
        return None
    done = table if reps is None else pd.concat([table.assign(phase=SWEEP_PHASE, seed=plan.cfg.training.seed),
                                                 reps.assign(phase=REPLICATE)], ignore_index=True)
    settings = seeded_settings(plan, done)
    budgets = plan.budgets
    echo(f"rungs: the answer for {budgets.holds_for()}; {len(settings)} combination(s) promoted from "
         f"{budgets.probe} steps" + (f", the recommended lr confirmed with {plan.confirm} fresh seed(s)"
                                     if plan.confirm and not budgets.extrapolated else ", not confirmed"))
    path = f"{plan.experiment_path}/{RUNGS}"
    searcher, results = run_probes(
        rung_options(plan), plan.cfg, settings, tracker, parent, plan.name, path, echo,
        max_concurrent=max_concurrent, max_failures=max_failures, resume=plan.resume,
        folder=plan.sweep_dir, budgets=budgets, confirm=plan.confirm, entry=PROMOTING,
        keep={*done["trial_id"]}, setting_keys=plan.space.categorical_keys)
    rows, outcomes = trials_table(trial_records(results), plan.space)
    reqs = searcher.trials
    if len(rows):
        rows["phase"] = rows["trial_id"].map(lambda t: reqs[t].phase if t in reqs else None)
        rows["seed"] = rows["trial_id"].map(lambda t: reqs[t].config.get(SEED_KEY, plan.cfg.training.seed)
                                            if t in reqs else None)
        rows[BUDGET_STEPS] = rows["trial_id"].map(lambda t: reqs[t].config.get("training.steps") if t in reqs else None)
        rows["name"] = rows["trial_id"].map(lambda t: describe(reqs[t])[0] if t in reqs else t)
    out = Rungs(searcher.settings, rows, outcomes, searcher.finished, budgets, plan.confirm)
    if out.finished:
        from stablesweep.sweep.ramp_outputs import answer_settings, cost

        out.answered = answer_settings(out.settings, budgets, SAFETY, plan.replicates, plan.cfg.training.seed,
                                       plan.confirm)
        out.cost = cost(out.settings, budgets)
    return out


def write_target(r: Rungs, plan: SweepPlan, files: dict[str, Path]) -> dict[str, Path]:
    """The answer for the target in the sweep's files: stable_region.json/.md (what it holds for, each combination's answer, the trend across budgets,
    the cost), recommended.yaml and recommended/<setting>.yaml at the target (training.steps the
    target), figures/budgets.png. Returns the files written."""
    from stablesweep.analysis.plots import budget_data, plot_budgets
    from stablesweep.analysis.recommended import write_recommended_set
    from stablesweep.sweep.ramp_outputs import budgets_table, cost_text, holds_lines

    out: dict[str, Path] = {}
    b, answers = r.budgets, r.answers
    top = r.recommended()
    data = json.loads(files["json"].read_text())
    data.update({**b.to_dict(), "holds_for": b.holds_for(), "confirm": r.confirm, "cost": r.cost,
                 "recommended": {**top[0].params, LR_KEY: top[1].recommended_lr} if top else None,
                 "at_target": r.answered.summary if r.answered else []})
    files["json"].write_text(json.dumps(data, indent=2, default=str) + "\n")
    md = ["", f"## The answer for {b.holds_for()}", "",
          f"The table above holds for the trials' budget ({b.probe} steps). The lrs around each combination's "
          f"bracket were then promoted x4 a rung up to {b.reach} steps (the ramp's rungs: climbed and bisected at "
          "each rung, replicates there with --replicates), and each recommended lr run at the target with "
          f"{r.confirm} fresh seed(s) (--confirm).", "", f"```\n{answers_text(answers, RAMP_TEXT_COLUMNS)}\n```",
          "", *holds_lines(answers), "", *budgets_table(answers, r.answered.trends if r.answered else []), "",
          "## Cost", "", cost_text(r.cost) if r.cost else "-"]
    if top:
        md += ["", "## Recommended at the target (recommended.yaml)", "",
               f"{top[1].label}, lr {top[1].recommended_lr:.3g}: the best objective at the target among each "
               f"combination's recommended lr; {top[1].holds_for}; {top[1].confirmation}."]
    files["md"].write_text(files["md"].read_text().rstrip("\n") + "\n" + "\n".join(md) + "\n")
    ordered = ([top] if top else []) + [(s, a) for s, a in zip(r.settings, answers)
                                        if a.recommended_lr is not None and (not top or s is not top[0])]
    items = [(a, {**s.params, LR_KEY: a.recommended_lr, "training.steps": b.target},
              f"combination {a.label}; for {a.holds_for}; {a.confirmation}") for s, a in ordered]
    out.update(write_recommended_set(items, plan.sweep_dir, plan.base, tool="sweep",
                                     what=f"the sweep {plan.name} and its rungs up to {b.reach} steps",
                                     seeds=plan.replicates, source=plan.cfg.source, base_dir=plan.cfg.base_dir,
                                     top="recommended.yaml" if top else None))
    if r.answered:
        out["figure_budgets"] = plot_budgets(budget_data([a.label for a in answers], r.answered.trends, b.target,
                                                         r.answered.extrapolated),
                                             plan.sweep_dir / "figures" / "budgets.png")
    return out


def target_tags(r: Rungs | None, budgets) -> dict[str, str]:
    """The parent run's tags of the budget the answer holds for (and each combination's answer)."""
    tags = {"target_steps": str(budgets.target), "holds_for": budgets.holds_for()}
    if r is not None:
        tags.update({f"answer.{s.key}": f"{a.label}: for {a.holds_for}; {a.confirmation}"[:5000]
                     for s, a in zip(r.settings, r.answers)})
    return tags
