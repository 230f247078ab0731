"""Sweeps (and ramps) side by side, on plain data: `SweepData` in, a `Comparison` out. No MLflow,
no Ray: `analysis.reading` makes the `SweepData` from a store, `analysis.render` and
`analysis.report` turn the `Comparison` into text and files.

Terms:
- A *setting* is a combination of the categorical axes (lr excluded), over the union of the
  sweeps' categorical axes; a sweep that does not vary an axis takes its value from its own base
  config, so `loss.masking` fixed at `slice` in one sweep meets `loss.masking=slice` of another.
- The *lr margin* of a trial is its lr over the smallest diverged lr of its setting in its own
  sweep: 0.1 means ten times below the nearest lr seen to diverge. Unknown (blank) when nothing
  in that setting diverged: the boundary was not found.
- The *status* of a setting in a sweep: `stable` (stable trials, none diverged), `mixed` (both:
  the boundary lies between its largest stable and smallest diverged lr), `unstable` (diverged
  trials, none stable), `unknown` (only stalled, pruned or errored trials). A stalled trial never
  counts as stable: it is ranked after every stable config. Between consecutive sweeps a
  setting *became stable*, *became unstable*, got *more* or *less stable*, or stayed the *same*.
  A change that only reflects a different lr range is flagged in its `note`.
- A setting's *answer* (its lrs in the settings table and in the changes) is the parent run's
  record of it (`SweepData.setting_answers`, found by the `setting` tag of its child runs): the
  numbers of the run's stable_region.json or ramp.json. A parent that records none (an older
  version) has it recomputed from its child runs, and the table says so (`answer_from`).
  Replicates and a ramp's range test are not counted, as in the run's own answer.
- *Answers by config* (`analysis.answers_by_config`): where two or more of the runs ran one
  config file, each setting's answer as each run's parent holds it, side by side.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import pandas as pd

from stablesweep.analysis.answers_by_config import (
    ANSWER_LRS,
    FROM_CHILDREN,
    ConfigAnswers,
    RunAnswers,
    SettingAnswerView,
    answers_by_config,
    setting_answer,
)
from stablesweep.analysis.region import Group, Region, analyze, infer_group_keys, lr_margins, rows_of
from stablesweep.analysis.text import lr_text, text_order, value_text
from stablesweep.tracking.names import setting_slug
from stablesweep.vocab import (
    BUDGET_STEPS,
    DIVERGED,
    ERROR,
    LR_KEY,
    OBJECTIVE,
    PRUNED,
    REPLICATE,
    STABLE,
    STALLED,
    UNFINISHED,
    VERDICT,
    VERDICTS,
    InputError,
    finite,
    jsonable,
    py,
    short_key,
)

BY = (OBJECTIVE, "margin")
SETTING_COLUMN, PHASE_COLUMN = "setting", "phase"  # a trial's setting slug and phase (`analysis.reading`)
UNCOUNTED_PHASES = (REPLICATE, "range-test")  # runs a setting's answer does not count (`sweep.ramp.Setting.tested`)
# stable first; a stalled trial (finite, did not learn) comes after every stable one, whatever its loss
_VERDICT_ORDER = {STABLE: 0, STALLED: 1, PRUNED: 2, DIVERGED: 3, ERROR: 4, UNFINISHED: 5}
_STATUS_ORDER = {"unstable": 0, "mixed": 1, "stable": 2}


# ---- the data of one sweep ------------------------------------------------------------------

@dataclass
class SweepData:
    """One sweep (or ramp) as plain data: its trials, one row a child run, with the params as
    columns named by dotted config key and the verdict fields."""

    name: str
    run_id: str
    trials: pd.DataFrame
    kind: str = "sweep"
    axes: list[str] = field(default_factory=list)  # the params it varied (lr included)
    categorical: list[str] | None = None  # its categorical axes (lr excluded); None: inferred
    lr_key: str | None = LR_KEY
    config: dict[str, Any] = field(default_factory=dict)  # its base config, flattened ({}: unknown)
    params: dict[str, Any] = field(default_factory=dict)  # the parent run's params, as values
    status: str = ""
    start_time: int = 0
    label: str = ""  # unique display name (the name, or name@runid when names repeat)
    experiment_id: str = ""  # its MLflow experiment ("": unknown), for links to its runs
    # each setting's answer as the parent run holds it: setting slug -> {SETTING_METRICS name: value}
    setting_answers: dict[str, dict[str, float]] = field(default_factory=dict)

    def __post_init__(self):
        self.label = self.label or self.name
        if self.lr_key is not None and self.lr_key not in self.trials.columns:
            self.lr_key = None
        if not self.axes:
            self.axes = [c for c in self.trials.columns if "." in c and "/" not in c]

    @property
    def budget_steps(self) -> int | None:
        for v in (self.params.get(BUDGET_STEPS), self.config.get("training.steps")):
            n = finite(v)
            if n is not None:
                return int(n)
        if BUDGET_STEPS in self.trials.columns:
            s = pd.to_numeric(self.trials[BUDGET_STEPS], errors="coerce").dropna()
            if len(s):
                return int(s.max())
        return None

    @property
    def config_file(self) -> str | None:
        """The config file it ran (the parent's param `config_file`); None: unknown."""
        v = self.params.get("config_file")
        return str(v) if v not in (None, "", "none") else None

    def run_answers(self) -> RunAnswers:
        return RunAnswers(label=self.label, kind=self.kind, run_id=self.run_id, config_file=self.config_file,
                          budget_steps=self.budget_steps, settings=self.setting_answers)

    def categorical_axes(self) -> list[str]:
        if self.categorical is not None:
            return [k for k in self.categorical if k != self.lr_key]
        return infer_group_keys(self.trials, [k for k in self.axes if k in self.trials.columns], self.lr_key)


# ---- the comparison ---------------------------------------------------------------------------

@dataclass
class SettingState:
    """One setting in one sweep."""

    sweep: str
    counts: dict[str, int]
    max_stable_lr: float | None
    min_diverged_lr: float | None
    lr_range: tuple[float, float] | None  # the lrs it tried (stable or diverged trials)
    lr_sensitivity: float | None
    best_objective: float | None
    cause: str | None = None  # a categorical value of it fails at every lr tried: no lr boundary

    @property
    def status(self) -> str:
        s, d = self.counts.get(STABLE, 0), self.counts.get(DIVERGED, 0)
        if s and d:
            return "mixed"
        if s:
            return "stable"
        if d:
            return "unstable"
        return "unknown"

    def describe(self) -> str:
        c = self.counts
        parts = [f"{c[v]} {v}" for v in VERDICTS if c.get(v)]
        text = f"{self.status} ({', '.join(parts) or 'no trials'})"
        if self.status == "mixed":
            text += f", boundary in ({lr_text(self.max_stable_lr)}, {lr_text(self.min_diverged_lr)}]"
        elif self.status == "unstable" and self.cause:
            text += f", {self.cause}"
        elif self.status == "unstable" and self.min_diverged_lr is not None:
            text += f", diverged from lr {lr_text(self.min_diverged_lr)}"
        elif self.status == "stable" and self.max_stable_lr is not None:
            text += f", stable up to lr {lr_text(self.max_stable_lr)}"
        return text


@dataclass
class SettingChange:
    setting: dict[str, Any]
    label: str
    before: SettingState | None
    after: SettingState | None
    change: str  # became stable | became unstable | more stable | less stable | same | only in X | unknown
    note: str = ""


@dataclass
class Transition:
    """What changed per setting between one sweep and the next."""

    before: str
    after: str
    settings: list[SettingChange]
    config_diff: dict[str, tuple[Any, Any]]  # base-config keys (not swept) that differ

    def became(self, change: str) -> list[str]:
        return [s.label for s in self.settings if s.change == change]

    def summary(self) -> str:
        parts = []
        for what in ("became stable", "became unstable", "more stable", "less stable"):
            got = self.became(what)
            if got:
                parts.append(f"{what}: {'; '.join(got)}")
        same = self.became("same")
        if same:
            parts.append(f"same: {len(same)} setting(s)")
        return f"{self.before} -> {self.after}: " + (" | ".join(parts) if parts else "no setting in common")


@dataclass
class SweepSummary:
    label: str
    name: str
    kind: str
    run_id: str
    trials: int
    counts: dict[str, int]
    budget_steps: int | None
    best_objective: float | None
    lr_sensitivity: float | None  # mean over its settings with a sensitivity
    sampler: str | None
    status: str
    region: Region
    experiment_id: str = ""
    answers: list[SettingAnswerView] = field(default_factory=list)  # one per `region.groups`, in order


@dataclass
class Comparison:
    sweeps: list[SweepSummary]
    setting_keys: list[str]
    param_keys: list[str]
    config_keys: list[str]  # base-config keys (not swept) that differ between the sweeps
    configs: pd.DataFrame  # ranked; one row a trial (after --only / --top); differs_from_best: keys
    varying: list[str]  # param/config columns whose values differ among the rows shown
    transitions: list[Transition]
    by: str = OBJECTIVE
    only: str | None = None
    top: int | None = None
    lr_key: str | None = LR_KEY
    source: str = ""  # where the sweeps were read (URI and experiment)
    ui: str | None = None  # the MLflow UI the report links runs to (None: no links)
    by_config: list[ConfigAnswers] = field(default_factory=list)  # answers side by side, per config file

    def sweeps_table(self) -> pd.DataFrame:
        rows = []
        for s in self.sweeps:
            rows.append({"sweep": s.label, "kind": s.kind, "run_id": s.run_id, "trials": s.trials,
                         **{v: s.counts.get(v, 0) for v in (*VERDICTS, UNFINISHED)},
                         BUDGET_STEPS: s.budget_steps, "best_objective": s.best_objective,
                         "lr_sensitivity": s.lr_sensitivity, "sampler": s.sampler})
        return pd.DataFrame(rows)

    def settings_table(self) -> pd.DataFrame:
        """Per sweep and setting: verdict counts, the answer's lrs and their source (`answer_from`,
        see the module docstring), LR sensitivity and the best objective (from the child runs)."""
        rows = []
        for s in self.sweeps:
            for g, a in zip(s.region.groups, s.answers):
                row = {"sweep": s.label, **{k: g.key.get(k) for k in self.setting_keys}}
                row.update({v: g.counts.get(v, 0) for v in VERDICTS})
                row.update({**a.lrs, "lr_sensitivity": g.lr_sensitivity, "best_objective": g.best_objective,
                            "setting": a.slug, "answer_from": a.source})
                rows.append(row)
        return pd.DataFrame(rows)

    def recomputed(self) -> list[str]:
        """The sweeps whose parent records no per-setting answer (older runs)."""
        return [s.label for s in self.sweeps if any(a.source == FROM_CHILDREN for a in s.answers)]

    def changes_table(self) -> pd.DataFrame:
        rows = []
        for t in self.transitions:
            for c in t.settings:
                rows.append({"before": t.before, "after": t.after, "setting": c.label,
                             **{k: c.setting.get(k) for k in self.setting_keys},
                             "status_before": c.before.status if c.before else None,
                             "status_after": c.after.status if c.after else None,
                             "change": c.change, "before_detail": c.before.describe() if c.before else "",
                             "after_detail": c.after.describe() if c.after else "", "note": c.note})
        return pd.DataFrame(rows)

    def diff_columns(self) -> list[str]:
        return [k for k in (*self.param_keys, *self.config_keys) if k in self.configs.columns]

    def configs_csv(self) -> pd.DataFrame:
        """The configs table with raw values; `differs_from_best` as text (keys joined by ';')."""
        t = self.configs.copy()
        t["differs_from_best"] = t["differs_from_best"].map(";".join)
        return t

    def to_dict(self) -> dict:
        return jsonable({
            "kind": "compare", "source": self.source, "by": self.by, "only": self.only, "top": self.top,
            "setting_keys": self.setting_keys, "param_keys": self.param_keys, "config_keys": self.config_keys,
            "sweeps": [{k: v for k, v in asdict(s).items() if k != "region"} | {"region": s.region.to_dict()}
                       for s in self.sweeps],
            "configs": self.configs_csv().to_dict(orient="records"),
            "varying": self.varying,
            "transitions": [{"before": t.before, "after": t.after, "config_diff": t.config_diff,
                             "settings": [{"setting": c.setting, "label": c.label, "change": c.change,
                                           "status_before": c.before.status if c.before else None,
                                           "status_after": c.after.status if c.after else None,
                                           "note": c.note} for c in t.settings]}
                            for t in self.transitions],
            "answers_by_config": [c.to_dict() for c in self.by_config],
        })


def compare(sweeps: list[SweepData], *, only: str | None = None, top: int | None = None, by: str = OBJECTIVE,
            source: str = "", ui: str | None = None) -> Comparison:
    """Rank the trials of `sweeps` side by side (see the module docstring); `ui`: the MLflow UI
    (http://host:port) the report links runs to."""
    if by not in BY:
        raise InputError(f"--by {by}: expected one of {', '.join(BY)}")
    if only is not None and only not in (*VERDICTS, UNFINISHED):
        raise InputError(f"--only {only}: expected one of {', '.join(VERDICTS)}")
    if top is not None and top < 1:
        raise InputError(f"--top {top}: expected 1 or more")
    labels = [s.label for s in sweeps]
    if len(set(labels)) != len(labels):
        raise InputError(f"the same sweep twice: {', '.join(labels)}")
    lr_key = next((s.lr_key for s in sweeps if s.lr_key), None)
    setting_keys = _union(k for s in sweeps for k in s.categorical_axes() if k != lr_key)
    param_keys = _union([*([lr_key] if lr_key else []), *setting_keys,
                         *(k for s in sweeps for k in s.axes if k != lr_key)])
    config_keys = _config_diff_keys(sweeps, set(param_keys))

    frames, summaries, states = [], [], []
    for s in sweeps:
        frame = s.trials.copy()
        for k in (*param_keys, *config_keys):
            if k not in frame.columns:
                frame[k] = [s.config.get(k)] * len(frame) if len(frame) else pd.Series(dtype=object)
        judged = frame[frame[VERDICT].isin(VERDICTS) & ~_uncounted(frame)] if len(frame) else frame
        region = analyze(judged, lr_key=lr_key if lr_key in frame.columns else None,
                         group_keys=list(setting_keys), param_keys=list(param_keys), importance=False)
        frame["margin"] = lr_margins(frame, region)
        frame.insert(0, "sweep", s.label)
        frame["sweep_run_id"] = s.run_id
        frames.append(frame)
        answers = [_answer_view(s, g, judged, setting_keys) for g in region.groups]
        sens = [g.lr_sensitivity for g in region.groups if g.lr_sensitivity is not None]
        counts = {v: int((frame[VERDICT] == v).sum()) for v in (*VERDICTS, UNFINISHED)}
        summaries.append(SweepSummary(
            label=s.label, name=s.name, kind=s.kind, run_id=s.run_id, trials=len(frame), counts=counts,
            budget_steps=s.budget_steps, best_objective=region.best[OBJECTIVE] if region.best else None,
            lr_sensitivity=sum(sens) / len(sens) if sens else None, sampler=s.params.get("sampler"),
            status=s.status, region=region, experiment_id=s.experiment_id, answers=answers))
        states.append(_setting_states(s.label, judged, region, answers, setting_keys, lr_key))

    configs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(configs) and only:
        configs = configs[configs[VERDICT] == only]
    configs = _rank(configs, by)
    if top is not None:
        configs = configs.head(top)
    configs = configs.reset_index(drop=True)
    diff_cols = [k for k in (*param_keys, *config_keys) if k in configs.columns]
    if len(configs):
        configs.insert(0, "rank", range(1, len(configs) + 1))
        best = configs.iloc[0]
        configs["differs_from_best"] = [[k for k in diff_cols if _norm(r[k]) != _norm(best[k])]
                                        for _, r in configs.iterrows()]
    else:
        configs["rank"] = pd.Series(dtype=int)
        configs["differs_from_best"] = pd.Series(dtype=object)
    varying = [k for k in diff_cols if len(configs) and configs[k].map(_norm).nunique() > 1]

    transitions = [_transition(a, b, sa, sb, setting_keys)
                   for (a, sa), (b, sb) in zip(zip(sweeps, states), zip(sweeps[1:], states[1:]))]
    return Comparison(sweeps=summaries, setting_keys=list(setting_keys), param_keys=list(param_keys),
                      config_keys=config_keys, configs=configs, varying=varying, transitions=transitions, by=by,
                      only=only, top=top, lr_key=lr_key, source=source, ui=ui,
                      by_config=answers_by_config(s.run_answers() for s in sweeps))


def _rank(t: pd.DataFrame, by: str) -> pd.DataFrame:
    if not len(t):
        return t
    def number(v: Any) -> float:  # unknown last
        n = finite(v)
        return math.inf if n is None else n

    order = t[VERDICT].map(lambda v: _VERDICT_ORDER.get(v, 9))
    obj = t[OBJECTIVE].map(number)
    primary = obj if by == OBJECTIVE else t["margin"].map(number)
    t = t.assign(_o=order, _p=primary, _b=obj)
    return t.sort_values(["_o", "_p", "_b", "sweep"], kind="stable").drop(columns=["_o", "_p", "_b"])


def _uncounted(frame: pd.DataFrame) -> pd.Series:
    """The rows a setting's answer does not count: replicates, a ramp's range test."""
    return frame.get(PHASE_COLUMN, pd.Series(None, index=frame.index, dtype=object)).isin(UNCOUNTED_PHASES)


def _answer_view(s: SweepData, g: Group, judged: pd.DataFrame, keys: list[str]) -> SettingAnswerView:
    """Group `g`'s answer in sweep `s`: the parent's record of it, found by the setting tag of its
    child runs (else by the slug of its values on the sweep's own axes); recomputed from the
    child runs (`g`) only when the parent records no per-setting answer at all."""
    slugs = []
    if SETTING_COLUMN in judged.columns and len(judged):
        tags = rows_of(judged, keys, g.key)[SETTING_COLUMN]
        slugs = sorted({str(t) for t in tags if isinstance(t, str) and t})
    slug = slugs[0] if len(slugs) == 1 else setting_slug({k: py(g.key.get(k)) for k in s.categorical_axes()})
    return setting_answer(s.setting_answers, slug, {n: getattr(g, n) for n in ANSWER_LRS})


def _setting_states(label: str, judged: pd.DataFrame, region: Region, answers: list[SettingAnswerView],
                    keys: list[str], lr_key: str | None) -> dict[tuple, tuple[dict, SettingState]]:
    out = {}
    for g, a in zip(region.groups, answers):
        k = _key(g.key, keys)
        lr_range = None
        if lr_key and len(judged):
            mask = judged.apply(lambda r: _key(r, keys) == k, axis=1) & judged[VERDICT].isin([STABLE, DIVERGED])
            lrs = pd.to_numeric(judged.loc[mask, lr_key], errors="coerce").dropna() if mask.any() else []
            if len(lrs):
                lr_range = (float(min(lrs)), float(max(lrs)))
        out[k] = (dict(g.key), SettingState(sweep=label, counts=dict(g.counts), max_stable_lr=a.lrs["max_stable_lr"],
                                           min_diverged_lr=a.lrs["min_diverged_lr"], lr_range=lr_range,
                                           lr_sensitivity=g.lr_sensitivity, best_objective=g.best_objective,
                                           cause=g.cause))
    return out


def _transition(a: SweepData, b: SweepData, sa: dict, sb: dict, keys: list[str]) -> Transition:
    changes = []
    for k in sorted(set(sa) | set(sb), key=lambda t: tuple(text_order(x) for x in t)):
        setting = (sa.get(k) or sb.get(k))[0]
        label = " ".join(f"{short_key(key)}={value_text(setting.get(key))}" for key in keys) or "all trials"
        before, after = (sa[k][1] if k in sa else None), (sb[k][1] if k in sb else None)
        change, note = _classify(before, after, a.label, b.label)
        changes.append(SettingChange(setting=setting, label=label, before=before, after=after, change=change,
                                     note=note))
    diff = {}
    if a.config and b.config:
        for k in sorted(set(a.config) | set(b.config)):
            if k in keys or k in a.axes or k in b.axes:
                continue
            if _norm(a.config.get(k)) != _norm(b.config.get(k)):
                diff[k] = (a.config.get(k), b.config.get(k))
    return Transition(before=a.label, after=b.label, settings=changes, config_diff=diff)


def _classify(before: SettingState | None, after: SettingState | None, a: str, b: str) -> tuple[str, str]:
    if before is None:
        return f"only in {b}", ""
    if after is None:
        return f"only in {a}", ""
    sb, sa = before.status, after.status
    if "unknown" in (sb, sa):
        return ("same" if sb == sa else "unknown"), "" if sb == sa else "no stable or diverged trial on one side"
    if sb == sa:
        return "same", ""
    if sa == "stable":
        change = "became stable"
    elif sa == "unstable":
        change = "became unstable"
    else:
        change = "more stable" if _STATUS_ORDER[sa] > _STATUS_ORDER[sb] else "less stable"
    note = ""
    up = _STATUS_ORDER[sa] > _STATUS_ORDER[sb]
    if up and before.min_diverged_lr is not None and after.lr_range and after.lr_range[1] < before.min_diverged_lr:
        note = (f"{b} tried lrs up to {lr_text(after.lr_range[1])} only, below {lr_text(before.min_diverged_lr)}, "
                f"the smallest that diverged in {a}: the lr range changed, not necessarily the stability")
    elif not up and before.max_stable_lr is not None and after.lr_range and after.lr_range[0] > before.max_stable_lr:
        note = (f"{b} tried lrs from {lr_text(after.lr_range[0])} only, above {lr_text(before.max_stable_lr)}, the "
                f"largest stable in {a}: the lr range changed, not necessarily the stability")
    return change, note


def _config_diff_keys(sweeps: list[SweepData], swept: set[str]) -> list[str]:
    known = [s.config for s in sweeps if s.config]
    if len(known) < 2:
        return []
    keys = _union(k for c in known for k in c)
    return [k for k in keys if k not in swept and len({_norm(c.get(k)) for c in known}) > 1]


def _union(items: Iterable[str]) -> list[str]:
    out: list[str] = []
    for k in items:
        if k not in out:
            out.append(k)
    return out


def _norm(v: Any) -> str:
    """A value's identity across sweeps: 1 and 1.0 are the same, None and NaN too."""
    v = py(v)
    if v is None:
        return "none"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (int, float)):
        return repr(float(v))
    return str(v)


def _key(row, keys: list[str]) -> tuple:
    get = row.get if hasattr(row, "get") else (lambda k: row[k])
    return tuple(_norm(get(k)) for k in keys)
