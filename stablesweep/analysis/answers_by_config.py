"""Where several sweeps and ramps ran on one config file: each setting's answer side by side, a
column group a run, and where they disagree, said plainly. Plain data: `answers_by_config` takes
each run's answers (`RunAnswers`) and returns a `ConfigAnswers` per config file that more than one
run answered; `analysis.render` draws it.

A run's answers are the per-setting numbers on its parent run (`<name>.<setting slug>`, names in
`vocab.SETTING_METRICS`), written from the same `SettingAnswer` record as the run's own
stable_region.json or ramp.json, so the table says what each run's files say.

Disagreement, checked between runs at one budget, per setting both answered:
- one run recommends an lr above the other's smallest failed lr: they disagree on the answer;
- else one run found an lr stable at or above the other's smallest failed lr: the boundary is
  noisy there (a single seed an lr either way; replicates measure the risk);
- else one run's largest safe lr (its recommended lr's cap) is above the other's smallest failed
  lr: the other saw a failure inside the first's bracket, and the narrower bracket holds.
Runs at one budget with none of these agree, and the section says so.
Runs at different budgets are not expected to agree: the answers hold for different budgets, and
the section says so.

No pandas, no Ray, no MLflow.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from stablesweep.analysis.text import lr_text
from stablesweep.vocab import SETTING_METRICS, finite

# a run's column group, after its budget: (SETTING_METRICS name, header); the risk only where measured
COLUMNS = (("max_stable_lr", "max stable"), ("min_failed_lr", "min failed"), ("largest_safe_lr", "largest safe"),
           ("recommended_lr", "recommended"))
RISK = ("lr_at_5pct_risk", "5% risk")
# a setting's answer as compare's per-setting table shows it (SETTING_METRICS names), and its source
ANSWER_LRS = ("max_stable_lr", "min_diverged_lr", "min_failed_lr", "largest_safe_lr", "recommended_lr")
FROM_PARENT = "parent"  # the run's parent records it (the numbers of its stable_region.json or ramp.json)
FROM_CHILDREN = "child runs"  # an older parent records no per-setting answer: recomputed from the child runs


def parse_setting_metrics(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """A parent run's per-setting metrics (`min_failed_lr.<slug>`, ...) as setting slug -> {name:
    value}, in the order the metrics come; other metrics are left out."""
    out: dict[str, dict[str, float]] = {}
    for key, v in metrics.items():
        name = next((n for n in SETTING_METRICS if key.startswith(n + ".")), None)
        value = finite(v)
        if name is None or value is None:
            continue
        out.setdefault(key[len(name) + 1:], {})[name] = value
    return out


@dataclass
class SettingAnswerView:
    """One setting's answer in one run: its slug on the parent run, its ANSWER_LRS, their source."""

    slug: str
    lrs: dict[str, float | None]
    source: str  # FROM_PARENT or FROM_CHILDREN


def setting_answer(recorded: dict[str, dict[str, float]], slug: str,
                   recomputed: dict[str, float | None]) -> SettingAnswerView:
    """Setting `slug`'s answer: as the parent records it (`recorded`: `parse_setting_metrics` of its
    metrics; a number it leaves out is unknown), or, only where the parent records no per-setting
    answer at all (an older version), `recomputed` from the child runs."""
    if not recorded:
        return SettingAnswerView(slug, {n: recomputed.get(n) for n in ANSWER_LRS}, FROM_CHILDREN)
    return SettingAnswerView(slug, {n: recorded.get(slug, {}).get(n) for n in ANSWER_LRS}, FROM_PARENT)


@dataclass
class RunAnswers:
    """One sweep's or ramp's answers, as its parent run holds them."""

    label: str  # how the comparison names the run
    kind: str  # sweep | ramp
    run_id: str
    config_file: str | None  # the config it ran (an absolute path); None: unknown
    budget_steps: int | None
    settings: dict[str, dict[str, float]]  # setting slug -> {SETTING_METRICS name: value}

    def get(self, setting: str, name: str) -> float | None:
        return self.settings.get(setting, {}).get(name)

    @property
    def risk_measured(self) -> bool:
        return any(RISK[0] in v for v in self.settings.values())

    def columns(self) -> list[tuple[str, str]]:
        """Its column group after the budget: the bracket, the cap, the recommended lr and, where
        replicates measured it, the lr at 5% risk."""
        return [*COLUMNS, *([RISK] if self.risk_measured else [])]


@dataclass
class ConfigAnswers:
    """The runs of one config file, each setting's answer side by side."""

    config_file: str
    runs: list[RunAnswers]  # the column groups, in the comparison's order
    settings: list[str]  # the rows: setting slugs, in the order the runs name them
    flags: list[str] = field(default_factory=list)  # disagreements and different budgets, in words
    agreements: list[str] = field(default_factory=list)  # runs at one budget that do not disagree

    @property
    def same_budget(self) -> bool:
        return len({r.budget_steps for r in self.runs}) == 1

    def records(self) -> list[dict[str, Any]]:
        """One row per setting and run (the long form, for CSV and JSON)."""
        return [{"config_file": self.config_file, "setting": s, "run": r.label, "kind": r.kind, "run_id": r.run_id,
                 "budget_steps": r.budget_steps, **{n: r.get(s, n) for n in SETTING_METRICS}}
                for s in self.settings for r in self.runs if s in r.settings]

    def to_dict(self) -> dict[str, Any]:
        return {"config_file": self.config_file, "runs": [r.label for r in self.runs], "settings": self.settings,
                "flags": self.flags, "agreements": self.agreements, "answers": self.records()}


def answers_by_config(runs: Iterable[RunAnswers]) -> list[ConfigAnswers]:
    """A `ConfigAnswers` per config file answered by two or more of `runs` (a sweep and a ramp,
    or several of either), in the order the files first appear; runs of an unknown config, or
    with no per-setting answer, are left out."""
    groups: dict[str, list[RunAnswers]] = {}
    for r in runs:
        if r.config_file and r.settings:
            groups.setdefault(r.config_file, []).append(r)
    out = []
    for path, rs in groups.items():
        if len(rs) < 2:
            continue
        settings: list[str] = []
        for r in rs:
            settings += [s for s in r.settings if s not in settings]
        ca = ConfigAnswers(config_file=path, runs=rs, settings=settings)
        ca.flags, ca.agreements = _judge(rs, settings)
        out.append(ca)
    return out


def _judge(runs: list[RunAnswers], settings: list[str]) -> tuple[list[str], list[str]]:
    flags, agreements = [], []
    budgets = {r.budget_steps for r in runs}
    if len(budgets) > 1:
        each = ", ".join(f"{r.label} {r.budget_steps or '?'} steps" for r in runs)
        flags.append(f"the answers hold for different budgets ({each}): a run stable for the shorter budget may "
                     "still diverge by the longer one, so they are not expected to agree; compare runs of one budget")
    for s in settings:
        have = [r.label for r in runs if s in r.settings]
        if len(have) < len(runs):
            flags.append(f"{s}: answered only by {', '.join(have)}")
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            if a.budget_steps != b.budget_steps:
                continue
            shared = [s for s in settings if s in a.settings and s in b.settings]
            found = [line for s in shared for line in (_disagree(a, b, s) or _disagree(b, a, s),) if line]
            flags += found
            if shared and not found:
                agreements.append(f"{a.label} and {b.label} agree at {a.budget_steps or '?'} steps: neither "
                                  "recommends an lr above, finds one stable at or above, or calls one safe above "
                                  "the other's smallest failed lr")
    return flags, agreements


def _disagree(a: RunAnswers, b: RunAnswers, s: str) -> str | None:
    """How `a`'s answer for setting `s` contradicts `b`'s, or None."""
    failed = b.get(s, "min_failed_lr")
    if failed is None:
        return None
    rec, stable = a.get(s, "recommended_lr"), a.get(s, "max_stable_lr")
    at = f"(both at {a.budget_steps or '?'} steps)"
    if rec is not None and rec > failed:
        return (f"{s}: {a.label} and {b.label} disagree: {a.label} recommends lr {lr_text(rec)}, above "
                f"{b.label}'s smallest failed lr {lr_text(failed)} {at}")
    if stable is not None and stable >= failed:
        return (f"{s}: {a.label} found lr {lr_text(stable)} stable, at or above {b.label}'s smallest failed lr "
                f"{lr_text(failed)} {at}: the boundary is noisy there (one seed an lr; --replicates measures "
                "the risk)")
    safe = a.get(s, "largest_safe_lr")
    if safe is not None and safe > failed:
        return (f"{s}: {a.label}'s largest safe lr {lr_text(safe)} is above {b.label}'s smallest failed lr "
                f"{lr_text(failed)} {at}: {b.label} saw lr {lr_text(failed)} fail inside {a.label}'s bracket "
                f"({lr_text(stable)}, {lr_text(a.get(s, 'min_failed_lr'))}]; the narrower bracket holds: the edge "
                f"is at most {lr_text(failed)}")
    return None
