"""A setting's answer as one plain record, and the one renderer of it.

A setting is one combination of the categorical axes (lr excluded). Its answer is what the runs of
it at several lrs say, at one step budget: the verdict counts, the stable band (the smallest and
largest lr that trained), the smallest lr that diverged, the smallest that failed (diverged, or
stalled above the band), the stalls on either side of the band, the recommended lr and the rule
that set it, and, with replicates, P(fails | lr) (`analysis.boundary`): the lr at 5% risk with its
interval, the lr at 50%, the evidence.

The sweep's region (`region.answer_of`, from a region `Group`) and the ramp (`sweep.ramp.Setting.
answer`) each build a `SettingAnswer`; everything that says an answer in words (tables for a
terminal and markdown, the P(fails | lr) lines, the header of a recommended config) renders the
record here, so both tools say the same thing the same way. `Words` holds the few nouns that
differ between them (a sweep's "combination" of trials, a ramp's "setting" of probes).

Plain data: no pandas, no Ray, no MLflow.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from stablesweep.analysis.text import lr_text, md_table, num_text, sig3_text, text_table
from stablesweep.vocab import SAFETY, SETTING_METRICS, VERDICTS, format_value, short_key

# ---- the rule that sets the recommended lr ---------------------------------------------------------

# which edge sets the largest safe lr (the cap of the recommended lr), in this order
AT_RISK = "lr_at_5pct_risk"  # the lr at 5% risk of failing, where replicates measured it
MIN_FAILED = "min_failed_lr"  # the smallest lr that diverged or stalled above the stable band
MAX_STABLE = "max_stable_lr"  # the largest stable lr: no lr failed, the edge is somewhere above
RULES = (AT_RISK, MIN_FAILED, MAX_STABLE)
RULE_TEXT = {
    AT_RISK: "the lr at 5% risk of failing",
    MIN_FAILED: "the smallest lr that diverged or stalled above the stable band",
    MAX_STABLE: "the largest stable lr (nothing failed: the edge is somewhere above)",
}


@dataclass(frozen=True)
class Recommendation:
    """What `recommend` decides for one setting."""

    lr: float | None  # a measured safe lr, the one with the best objective; None when none was measured safe
    rule: str | None  # which edge set the largest safe lr (RULES); None when nothing was stable
    largest_safe_lr: float | None  # safety x the edge (the largest stable lr itself where nothing failed)
    objective: float | None = None  # the recommended lr's objective at the budget
    note: str | None = None  # why the lr is not the best of several measured safe ones, or why there is none


def recommend(stable: Iterable[tuple[float, float | None]], *, max_stable: float | None, min_failed: float | None,
              at_risk: float | None = None, safety: float = SAFETY) -> Recommendation:
    """The recommended lr of one setting: among its measured stable runs `stable` ((lr, objective at
    the budget) pairs, runs at one budget from scratch) whose lr is at most the largest safe lr, the
    one with the best (lowest) objective. The largest safe lr is `safety` x the lr at 5% risk where
    replicates measured it, else `safety` x the smallest failed lr, else (nothing failed) the largest
    stable lr. Never an lr that was not run; None with a note when no measured lr is safe."""
    if max_stable is None:
        return Recommendation(None, None, None)
    edges = {AT_RISK: at_risk, MIN_FAILED: min_failed, MAX_STABLE: max_stable}
    rule = next(r for r in RULES if edges[r] is not None)
    cap = float(max_stable) if rule == MAX_STABLE else safety * float(edges[rule])
    safe = sorted((float(lr), obj) for lr, obj in stable if lr is not None and lr <= cap * (1 + 1e-9))
    if not safe:
        return Recommendation(None, rule, cap, note=f"no measured lr is at or below the largest safe lr "
                                                    f"{sig3_text(cap)}: none recommended")
    scored = [(obj, lr) for lr, obj in safe if obj is not None and math.isfinite(obj)]
    if not scored:
        return Recommendation(safe[-1][0], rule, cap, note="the runs cannot tell the best lr (no comparable "
                                                             "objective): the largest measured safe lr")
    obj, lr = min(scored)
    note = None if len(scored) > 1 else "one measured safe lr: it could not be compared with another"
    return Recommendation(lr, rule, cap, obj, note)


# ---- the record ------------------------------------------------------------------------------------

@dataclass
class SettingAnswer:
    """What the runs of one setting say, at one step budget."""

    params: dict[str, Any]  # the setting's categorical values, by config key (lr excluded)
    label: str  # how tables and figures name it
    budget_steps: int | None
    counts: dict[str, int]  # runs by verdict (replicates not counted)
    min_stable_lr: float | None = None  # the stable band: the lrs that trained
    max_stable_lr: float | None = None
    min_diverged_lr: float | None = None
    min_failed_lr: float | None = None  # the edge: the smallest lr that diverged or stalled above the band
    stalled_below: list[float] = field(default_factory=list)  # stalls below the band: lr too small
    stalled_above: list[float] = field(default_factory=list)  # stalls above the band: the edge
    stalled_inside: list[float] = field(default_factory=list)  # stalls inside the band, or with no band
    best_lr: float | None = None  # the stable lr with the best objective, safe or not
    recommended_lr: float | None = None  # the measured safe lr with the best objective (`recommend`)
    rule: str | None = None  # which edge set `largest_safe_lr` (RULES); None when nothing was stable
    largest_safe_lr: float | None = None  # the cap of the recommended lr: safety x the edge
    recommended_objective: float | None = None
    recommend_note: str | None = None  # why the choice is weaker than the best of several, or why none
    cause: str | None = None  # a categorical value of it fails at every lr tried: no lr boundary, that cause
    safety: float = SAFETY
    # P(fails | lr), from replicates (`analysis.boundary`)
    lr_at_5pct_risk: float | None = None
    lr_at_5pct_risk_interval: list[float] | None = None
    lr_at_50pct: float | None = None
    single_seed: bool | None = None
    evidence: list[dict] | None = None  # per lr: runs, failures
    boundary_note: str | None = None
    replicates: int = 0  # replicate runs
    replicate_flops: float | None = None
    train_flops: float | None = None  # the FLOPs of its runs other than replicates
    # what one tool knows of a setting and the other does not
    best_objective: float | None = None  # sweep: its best stable trial's
    lr_sensitivity: float | None = None  # sweep: Wortsman et al. (2023)
    status: str | None = None  # ramp: how its search ended (sweep.ramp)
    probes: int | None = None  # ramp
    compute_s: float | None = None  # ramp
    holds_for: str | None = None  # ramp: the budget the answer holds for, in words (`sweep.ramp.Budgets`)
    confirmation: str | None = None  # ramp: "confirmed: 2/2 trained at 480 steps", or "not confirmed"

    @property
    def edge_lr(self) -> float | None:
        """The lr the largest safe lr keeps its margin below: the one its rule names."""
        return getattr(self, self.rule) if self.rule else None

    def recommendation(self, rec: Recommendation) -> SettingAnswer:
        """The record with `rec` (`recommend`) as its recommended lr."""
        self.recommended_lr, self.rule, self.largest_safe_lr = rec.lr, rec.rule, rec.largest_safe_lr
        self.recommended_objective, self.recommend_note = rec.objective, rec.note
        return self

    def setting_metrics(self, names: Iterable[str] = SETTING_METRICS
                        ) -> tuple[dict[str, Any], dict[str, float | None]]:
        """(the setting's params, its numbers by name) for the parent run of its sweep or ramp
        (`Tracker.log_setting_metrics`): `names` are fields of the record."""
        return dict(self.params), {n: getattr(self, n) for n in names}


# ---- words -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Words:
    """The nouns that differ between the sweep and the ramp."""

    setting: str  # what a setting is called
    fitted_over: str  # the runs P(fails | lr) is fitted over
    own_flops: str  # the runs that are not replicates, in a sentence
    flops_column: str  # and as a column


SWEEP_WORDS = Words("combination", "its trials and replicates", "its sweep trials", "sweep FLOPs")
RAMP_WORDS = Words("setting", "every probe and replicate", "the ramp", "ramp FLOPs")


# ---- tables ----------------------------------------------------------------------------------------

Column = tuple[str, Callable[[SettingAnswer], str]]


def key_columns(keys: Iterable[str]) -> list[Column]:
    """A column per categorical axis: its value in each setting."""
    return [(short_key(k), lambda a, k=k: format_value(a.params.get(k))) for k in keys]


def _lr_col(head: str, name: str, fmt: Callable[[Any], str]) -> Column:
    return head, lambda a: fmt(getattr(a, name))


def _stalls(a: SettingAnswer) -> str:
    """`below 1e-06,2e-06; above 0.5`, or `-`."""
    parts = [f"{side} {','.join(sig3_text(v) for v in getattr(a, f'stalled_{side}'))}"
             for side in ("below", "above") if getattr(a, f"stalled_{side}")]
    return "; ".join(parts) or "-"


# the sweep's per-combination table (after its key columns): lrs as 2.00e-03
SWEEP_COLUMNS: list[Column] = [
    *[(v, lambda a, v=v: str(a.counts.get(v, 0))) for v in VERDICTS],
    _lr_col("min stable lr", "min_stable_lr", lr_text), _lr_col("max stable lr", "max_stable_lr", lr_text),
    _lr_col("min diverged lr", "min_diverged_lr", lr_text),
    ("stalled below", lambda a: str(len(a.stalled_below))), ("stalled above", lambda a: str(len(a.stalled_above))),
    ("best objective", lambda a: num_text(a.best_objective)), _lr_col("best lr", "best_lr", lr_text),
    _lr_col("largest safe lr", "largest_safe_lr", lr_text), _lr_col("recommended lr", "recommended_lr", lr_text),
    ("lr sensitivity", lambda a: num_text(a.lr_sensitivity)),
]

# how a ramp's search ended, in a sentence
STATUS_TEXT = {
    "bracketed": "bracketed",
    "never_diverged": "never diverged up to --lr-stop",
    "diverged_at_start": "diverged already at --lr-start",
    "never_trained": "no lr trained (stalled below, diverged or stalled above)",
    "error": "a probe crashed",
    "running": "unfinished",
}
_RAMP_COST: list[Column] = [("probes", lambda a: str(a.probes)), ("compute s", lambda a: f"{a.compute_s:.1f}"),
                            ("train FLOPs", lambda a: f"{a.train_flops:.3g}")]
# the ramp's table: lrs as 0.0834; for a terminal, and the fuller one of ramp.md
RAMP_TEXT_COLUMNS: list[Column] = [
    ("setting", lambda a: a.label), ("status", lambda a: str(a.status)),
    _lr_col("max stable lr", "max_stable_lr", sig3_text), _lr_col("min failed lr", "min_failed_lr", sig3_text),
    ("stalled", _stalls), _lr_col("largest safe lr", "largest_safe_lr", sig3_text),
    _lr_col("recommended lr", "recommended_lr", sig3_text), *_RAMP_COST,
]
RAMP_MD_COLUMNS: list[Column] = [
    ("setting", lambda a: a.label), ("status", lambda a: STATUS_TEXT.get(a.status, a.status)),
    _lr_col("min stable lr", "min_stable_lr", sig3_text), _lr_col("max stable lr", "max_stable_lr", sig3_text),
    _lr_col("min diverged lr", "min_diverged_lr", sig3_text), _lr_col("min failed lr", "min_failed_lr", sig3_text),
    ("stalled", _stalls), _lr_col("largest safe lr", "largest_safe_lr", sig3_text),
    _lr_col("recommended lr", "recommended_lr", sig3_text), ("recommended objective",
                                                             lambda a: num_text(a.recommended_objective)),
    *_RAMP_COST,
]


def cells(answers: Iterable[SettingAnswer], columns: list[Column]) -> tuple[list[str], list[list[str]]]:
    return [h for h, _ in columns], [[f(a) for _, f in columns] for a in answers]


def answers_text(answers: Iterable[SettingAnswer], columns: list[Column]) -> str:
    """The answers as a table for a terminal, a row each."""
    return text_table(*cells(answers, columns))


def answers_markdown(answers: Iterable[SettingAnswer], columns: list[Column]) -> list[str]:
    """The answers as a markdown table, a row each."""
    return md_table(*cells(answers, columns))


# ---- the boundary as a probability -----------------------------------------------------------------

def boundary_text(answers: Iterable[SettingAnswer], words: Words) -> str:
    """For a terminal: P(fails | lr) per setting, and what the replicates cost next to the other runs."""
    lines = [f"P(fails | lr) per {words.setting} (logistic in log lr over {words.fitted_over}):"]
    for a in answers:
        iv = a.lr_at_5pct_risk_interval
        lines.append(f"  {a.label}: lr at 5% risk {sig3_text(a.lr_at_5pct_risk)}"
                     + (f" (interval {sig3_text(iv[0])}..{sig3_text(iv[1])})" if iv else "")
                     + f", at 50% {sig3_text(a.lr_at_50pct)}; {a.replicates} replicates, "
                     f"{a.replicate_flops or 0:.3g} FLOPs ({words.own_flops}: {a.train_flops or 0:.3g})"
                     + (f"; {a.boundary_note}" if a.boundary_note else ""))
    return "\n".join(lines)


def boundary_markdown(answers: Iterable[SettingAnswer], words: Words, *, seeds: int, budget: int | None,
                      safety: float = SAFETY) -> list[str]:
    """The markdown section of P(fails | lr) per setting; `seeds`: the K of --replicates."""
    lines = ["## The boundary as a probability", "",
             f"{seeds} seed(s) at the lrs inside each {words.setting}'s bracket and at its ends, then {seeds} at the "
             f"lr at 5% risk fitted to them; P(fails | lr) fitted again in log lr over {words.fitted_over} (a "
             f"failure: diverged, or stalled from the middle of the stable band up; a run that trained above an lr "
             f"where every run failed is left out), at the budget of {budget} steps. The recommended lr is at most "
             f"{safety} x the lr at 5% risk where it was measured.", ""]
    head = [words.setting, "lr at 5% risk", "interval", "lr at 50%", "evidence (lr: failures/runs)", "replicates",
            "replicate FLOPs", words.flops_column, "note"]
    rows = []
    for a in answers:
        iv = a.lr_at_5pct_risk_interval
        ev = ", ".join(f"{sig3_text(e['lr'])}: {e['failures']}/{e['runs']}" for e in a.evidence or [])
        rows.append([a.label, sig3_text(a.lr_at_5pct_risk), f"{sig3_text(iv[0])}..{sig3_text(iv[1])}" if iv else "-",
                     sig3_text(a.lr_at_50pct), ev or "-", str(a.replicates), f"{a.replicate_flops or 0:.3g}",
                     f"{a.train_flops or 0:.3g}", a.boundary_note or "-"])
    return lines + md_table(head, rows) + [""]


# ---- the header of a recommended config ------------------------------------------------------------

def _fitted(a: SettingAnswer, seeds: int) -> str:
    return (f", fitted over {sum(e['runs'] for e in a.evidence or [])} runs with {seeds} seed(s) around the bracket"
            if a.rule == AT_RISK else "")


def safe_line(a: SettingAnswer, seeds: int = 0) -> str:
    """How the largest safe lr was made: `largest safe lr 0.05 = 0.5 x 0.1, the smallest lr that ...`."""
    if a.rule == MAX_STABLE:
        return f"largest safe lr {sig3_text(a.largest_safe_lr)} = {RULE_TEXT[a.rule]}"
    return (f"largest safe lr {sig3_text(a.largest_safe_lr)} = {a.safety} x {sig3_text(a.edge_lr)}, "
            f"{RULE_TEXT[a.rule]}{_fitted(a, seeds)}")


def rule_line(a: SettingAnswer, seeds: int = 0, *, short: bool = False) -> str:
    """The rule that set the recommended lr, from the record: `lr = 0.1: the best objective (0.53 at
    the budget) among the lrs measured safe with the setting (stable, at most the largest safe lr
    0.5 = 0.5 x 1, ...)`. `short`: without the setting's name. `seeds`: the K of --replicates."""
    who = "" if short else f" with {a.label}"
    if a.recommended_lr is None:
        return f"no lr recommended{who}: {a.recommend_note or 'nothing was stable'}; {safe_line(a, seeds)}."
    chose = (f"the best objective ({a.recommended_objective:.4g} at the budget)"
             if a.recommended_objective is not None else "the largest")
    return (f"lr = {sig3_text(a.recommended_lr)}: {chose} among the lrs measured safe{who} (stable, and at most "
            f"the {safe_line(a, seeds)})" + (f"; {a.recommend_note}" if a.recommend_note else "") + ".")


def evidence_lines(a: SettingAnswer, seeds: int = 0) -> list[str]:
    """The evidence behind a setting's answer, for a recommended config's header: the bracket, the
    risk where replicates measured it, the budget."""
    lines = [f"bracket: largest stable lr {sig3_text(a.max_stable_lr)}, smallest failed lr "
             f"{sig3_text(a.min_failed_lr)} (smallest diverged {sig3_text(a.min_diverged_lr)}); "
             f"{', '.join(f'{v} {n}' for v, n in a.counts.items() if n)} run(s)"]
    if a.lr_at_5pct_risk is not None:
        iv = a.lr_at_5pct_risk_interval
        lines.append(f"risk: P(fails | lr) = 5% at lr {sig3_text(a.lr_at_5pct_risk)}"
                     + (f" (interval {sig3_text(iv[0])}..{sig3_text(iv[1])})" if iv else "")
                     + f", 50% at {sig3_text(a.lr_at_50pct)}, over {seeds} seed(s)")
    else:
        lines.append("risk: not measured (one seed an lr: the bracket is a single-seed estimate)")
    lines.append(f"budget: {a.budget_steps} steps a run; stability may not hold for a longer run: "
                 "re-check at the length you train")
    return lines


def recommended_header(lines: Iterable[str]) -> str:
    """`lines` as the comment block that opens a recommended config."""
    return "".join(f"# {ln}\n" for ln in lines)
