"""The stable region: a plain table of trials in, tables, figures and a recommended config out.

No Ray, no MLflow: one row a trial, with its params as columns named by their dotted config key
(`training.lr`, `loss.masking`, ...) and the columns `verdict` (stable | stalled | diverged |
pruned | error), `objective`, `initial_loss`, `steps`, `budget_steps`, `trial_id`.

Per combination of the categorical axes (lr excluded) it reports the verdict counts, the stable
band, the smallest lr seen diverged, which side of the band each stalled trial lies on (below: too
small to learn in the budget; above: the edge), the largest safe lr and the recommended lr
(`answer.recommend`: the measured safe trial with the best objective), and the LR sensitivity of
Wortsman et al. (2023): E over the sampled lrs of min(L(lr), L0) - min over lrs of L(lr), L the
final loss and L0 the initial loss (a diverged trial counts as L0). A categorical value that fails
at every lr tried is its combinations' cause, not an lr boundary (`importance.failing_values`).
A stalled or pruned trial never counts as stable. Every number holds for the step budget the
trials ran, and says so.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from stablesweep.analysis.answer import (
    SWEEP_COLUMNS,
    SWEEP_WORDS,
    Column,
    SettingAnswer,
    answers_markdown,
    answers_text,
    boundary_markdown,
    boundary_text,
    key_columns,
    recommend,
)
from stablesweep.analysis.importance import (
    divergence_importance,
    failing_values,
    not_boundary_lines,
    uncovered,
    value_order,
)
from stablesweep.vocab import (
    BUDGET_STEPS,
    DIVERGED,
    INITIAL_LOSS,
    LR_KEY,
    OBJECTIVE,
    SAFETY,
    STABLE,
    STALLED,
    STEPS,
    TRAIN_FLOPS,
    VERDICT,
    VERDICTS,
    finite,
    format_value,
    jsonable,
    py,
    short_key,
)


@dataclass
class Group:
    """One combination of the categorical axes."""

    key: dict[str, Any]
    counts: dict[str, int]
    max_stable_lr: float | None  # the stable band: [min_stable_lr, max_stable_lr], the lrs that trained
    min_diverged_lr: float | None
    bracket_ok: bool | None  # max stable < min diverged (None when either is missing)
    best_objective: float | None
    best_trial: str | None
    best_params: dict[str, Any] | None
    lr_sensitivity: float | None
    sensitivity_n: int
    budget_steps: int | None
    recommended_lr: float | None = None  # its measured safe lr with the best objective (`answer.recommend`)
    min_stable_lr: float | None = None
    stalled_below: list[float] = field(default_factory=list)  # stalls below the band: lr too small
    stalled_above: list[float] = field(default_factory=list)  # stalls above the band: the edge
    stalled_inside: list[float] = field(default_factory=list)  # stalls inside the band (noise), or no band
    min_failed_lr: float | None = None  # the edge: the smallest lr that diverged or stalled above the band
    # the boundary as a probability (`add_boundaries`, from replicates): P(fails | lr) of the combination
    lr_at_5pct_risk: float | None = None  # then the edge of `recommended_lr`
    lr_at_5pct_risk_interval: list[float] | None = None
    lr_at_50pct: float | None = None
    evidence: list[dict] | None = None  # per lr: runs, failures
    single_seed: bool | None = None
    boundary_note: str | None = None
    replicates: int = 0  # replicate runs of the combination
    replicate_flops: float | None = None  # their training FLOPs, next to `train_flops`
    train_flops: float | None = None  # the training FLOPs of its sweep trials
    rule: str | None = None  # which edge set `largest_safe_lr` (answer.RULES)
    largest_safe_lr: float | None = None  # SAFETY x the edge: the cap of `recommended_lr`
    recommended_objective: float | None = None
    recommend_note: str | None = None
    recommended_params: dict[str, Any] | None = None  # the params of the trial at `recommended_lr`
    cause: str | None = None  # a categorical value of it fails at every lr tried: no lr boundary
    stable_runs: list[tuple[float, float | None, dict]] = field(default_factory=list, repr=False)  # (lr, objective, params)

    def recommend(self) -> None:
        """Its recommended lr (`answer.recommend`) from its stable trials and its edges."""
        rec = recommend([(lr, obj) for lr, obj, _ in self.stable_runs], max_stable=self.max_stable_lr,
                        min_failed=self.min_failed_lr, at_risk=self.lr_at_5pct_risk)
        self.recommended_lr, self.rule, self.largest_safe_lr = rec.lr, rec.rule, rec.largest_safe_lr
        self.recommended_objective, self.recommend_note = rec.objective, rec.note
        self.recommended_params = next((dict(p) for lr, o, p in self.stable_runs if lr == rec.lr and o == rec.objective),
                                       None) if rec.lr else None

    @property
    def label(self) -> str:
        return " ".join(f"{short_key(k)}={format_value(v)}" for k, v in self.key.items()) or "all"


@dataclass
class Region:
    lr_key: str | None
    group_keys: list[str]
    param_keys: list[str]
    budget_steps: int | None
    counts: dict[str, int]
    groups: list[Group]
    best: dict[str, Any] | None  # the best stable trial: trial_id, objective, params, group
    importance: dict[str, float] = field(default_factory=dict)
    importance_method: str = ""
    divergence_rates: dict[str, dict[str, float]] = field(default_factory=dict)
    recommended: dict[str, Any] | None = None  # params of recommended.yaml, lr with the margin
    replicates: int = 0  # K of --replicates (0: every bracket is a single-seed estimate)
    causes: list[str] = field(default_factory=list)  # categorical values that fail at every lr tried
    uncovered: list[str] = field(default_factory=list)  # combinations of the space no trial ran

    def to_dict(self) -> dict:
        d = asdict(self)
        d["groups"] = [{**{k: v for k, v in asdict(g).items() if k != "stable_runs"}, "label": g.label}
                       for g in self.groups]
        return jsonable(d)

    def answers(self) -> list[SettingAnswer]:
        """Each combination's answer (`analysis.answer`), in the order of `groups`."""
        return [answer_of(g, self.lr_key) for g in self.groups]

    def columns(self) -> list[Column]:
        """The columns of the per-combination table: the categorical axes, then the answer."""
        return key_columns(self.group_keys) + SWEEP_COLUMNS

    def to_text(self) -> str:
        """The region table for a terminal, then the causes and the combinations no trial ran."""
        text = answers_text(self.answers(), self.columns()) if self.groups else "(no trials)"
        return "\n".join([text, *not_boundary_lines(self.causes, self.uncovered)])

    def to_markdown(self, title: str = "Stable region") -> str:
        c = self.counts
        lines = [f"# {title}", "",
                 f"Budget: **{self.budget_steps} steps** per trial. Every verdict here holds for this budget: "
                 "a run stable for this many steps may still diverge later.", "",
                 f"Trials: {sum(c.values())} ({_counts_text(c)}). Pruned trials were stopped early by "
                 "the scheduler for poor (finite) progress and do not count as stable; stalled trials ran "
                 "their budget finite but their loss did not fall enough (monitor.min_progress): they do not "
                 "count as stable either.", "",
                 "## Per combination", ""]
        if self.groups:
            lines += answers_markdown(self.answers(), self.columns())
            lines.append("")
            lines.append("The stable band runs from *min stable lr* to *max stable lr* (the lrs that trained); the "
                         "bracket of the stability boundary lies between *max stable lr* and *min diverged lr*. "
                         "*stalled below*: trials that stalled below the band (the lr is too small to learn in "
                         "the budget); *stalled above*: stalled above it (the edge: finite, no longer learning). "
                         "LR sensitivity (Wortsman et al. 2023): mean over the sampled lrs of "
                         "min(final loss, initial loss) minus the best final loss; a diverged trial counts as "
                         "its initial loss.")
            lines.append("")
        lines += self._boundary_markdown()
        if self.best:
            lines += ["## Best stable setting", "",
                      f"Trial `{self.best['trial_id']}`, objective {self.best[OBJECTIVE]:.4g}: "
                      + ", ".join(f"`{k}={format_value(v)}`" for k, v in self.best["params"].items()), ""]
        lines += not_boundary_lines(self.causes, self.uncovered, markdown=True)
        if self.recommended:
            lines += ["## Recommended (recommended.yaml)", "",
                      ", ".join(f"`{k}={format_value(v)}`" for k, v in self.recommended.items()), "",
                      "The trial with the best objective at the budget among those measured safe: stable, at an lr at "
                      f"most the *largest safe lr* of its combination ({SAFETY} x its lr at 5% risk with replicates, "
                      f"else {SAFETY} x its smallest lr that diverged or stalled above the band, else its largest "
                      "stable lr). recommended/<setting>.yaml holds each combination's own.", ""]
        if self.importance:
            lines += [f"## What drives divergence ({self.importance_method})", "",
                      "| param | importance |", "|---|---|"]
            lines += [f"| {k} | {v:.3f} |" for k, v in self.importance.items()]
            lines.append("")
        if self.divergence_rates:
            lines += ["## Divergence rate by value", "", "Among trials that ran to a verdict (stable or diverged).", ""]
            for k, rates in self.divergence_rates.items():
                lines.append(f"- `{k}`: " + ", ".join(f"{v}: {100 * r:.0f}%" for v, r in rates.items()))
            lines.append("")
        return "\n".join(lines)

    def boundary_text(self) -> str:
        """For a terminal: P(fails | lr) per combination and what the replicates cost, or that each
        bracket is a single-seed estimate."""
        if not self.lr_key:
            return ""
        if not self.replicates:
            return ("each bracket is a single-seed estimate (one trial an lr); --replicates K with --sampler grid "
                    "or qmc measures P(fails | lr)")
        return boundary_text(self.answers(), SWEEP_WORDS)

    def _boundary_markdown(self) -> list[str]:
        if not self.lr_key:
            return []
        if not self.replicates:
            return ["Each bracket is a single-seed estimate: one trial an lr, while at one lr one seed may diverge "
                    "and the next not. `stablesweep sweep --replicates K` (grid or qmc sampler) runs K seeds "
                    "around each bracket and fits P(fails | lr).", ""]
        return boundary_markdown(self.answers(), SWEEP_WORDS, seeds=self.replicates, budget=self.budget_steps)


def answer_of(g: Group, lr_key: str | None) -> SettingAnswer:
    """A combination's answer: the record that tables, the boundary lines and recommended.yaml's
    header render (`analysis.answer`)."""
    best_lr = finite(g.best_params.get(lr_key)) if lr_key and g.best_params else None
    return SettingAnswer(
        params=dict(g.key), label=g.label, budget_steps=g.budget_steps, counts=dict(g.counts),
        min_stable_lr=g.min_stable_lr, max_stable_lr=g.max_stable_lr, min_diverged_lr=g.min_diverged_lr,
        min_failed_lr=g.min_failed_lr, stalled_below=list(g.stalled_below), stalled_above=list(g.stalled_above),
        stalled_inside=list(g.stalled_inside), best_lr=best_lr, recommended_lr=g.recommended_lr, rule=g.rule,
        largest_safe_lr=g.largest_safe_lr, recommended_objective=g.recommended_objective,
        recommend_note=g.recommend_note, cause=g.cause,
        lr_at_5pct_risk=g.lr_at_5pct_risk, lr_at_5pct_risk_interval=g.lr_at_5pct_risk_interval,
        lr_at_50pct=g.lr_at_50pct, single_seed=g.single_seed, evidence=g.evidence, boundary_note=g.boundary_note,
        replicates=g.replicates, replicate_flops=g.replicate_flops, train_flops=g.train_flops,
        best_objective=g.best_objective, lr_sensitivity=g.lr_sensitivity)


# ---- analysis -------------------------------------------------------------------------------

def param_columns(df: pd.DataFrame) -> list[str]:
    """Param columns are named by dotted config keys; metrics use '/' (eval_loss/food101)."""
    return [c for c in df.columns if "." in c and "/" not in c]


def infer_group_keys(df: pd.DataFrame, params: list[str], lr_key: str | None) -> list[str]:
    keys = []
    for k in params:
        if k == lr_key:
            continue
        col = df[k]
        if col.dtype == object or col.dtype == bool or col.nunique(dropna=False) <= 6:
            keys.append(k)
    return keys


def analyze(df: pd.DataFrame, *, lr_key: str | None = LR_KEY, group_keys: list[str] | None = None,
            param_keys: list[str] | None = None, distributions: dict | None = None,
            importance: bool = True) -> Region:
    """The stable region of a trials table."""
    params = list(param_keys) if param_keys is not None else param_columns(df)
    if lr_key is not None and lr_key not in df.columns:
        lr_key = None
    groups_by = list(group_keys) if group_keys is not None else infer_group_keys(df, params, lr_key)
    groups_by = [k for k in groups_by if k != lr_key and k in df.columns]
    counts = {v: int((df[VERDICT] == v).sum()) for v in VERDICTS} if len(df) else {v: 0 for v in VERDICTS}
    causes = failing_values(df, groups_by, lr_key)
    groups = [_summarize(sub, dict(zip(groups_by, key)), lr_key, params)
              for key, sub in _groupby(df, groups_by)]
    for g in groups:  # a value that fails at every lr is the cause of its combinations' failures
        said = [text for k, v, text in causes if repr(py(g.key.get(k))) == repr(v)]
        if said:
            g.cause, g.min_diverged_lr, g.min_failed_lr, g.bracket_ok = "; ".join(said), None, None, None
    budget = _budget(df)
    best = None
    stable = df[df[VERDICT] == STABLE] if len(df) else df
    stable = stable[stable[OBJECTIVE].map(lambda v: finite(v) is not None)] if len(stable) else stable
    if len(stable):
        row = stable.loc[stable[OBJECTIVE].astype(float).idxmin()]
        best = {"trial_id": str(row.get("trial_id")), OBJECTIVE: float(row[OBJECTIVE]),
                "params": {k: py(row[k]) for k in params},
                "group": {k: py(row[k]) for k in groups_by}}
    region = Region(lr_key=lr_key, group_keys=groups_by, param_keys=params, budget_steps=budget,
                    counts=counts, groups=groups, best=best, causes=[text for _, _, text in causes],
                    uncovered=uncovered(group_keys if group_keys is not None else groups_by,
                                        [g.key for g in groups], distributions))
    if importance:
        region.importance, region.importance_method = divergence_importance(df, params, distributions)
    region.divergence_rates = divergence_rates(df, groups_by)
    region.recommended = recommended_params(region)
    return region


def _groupby(df: pd.DataFrame, keys: list[str]):
    if not keys:
        yield (), df
        return
    frame = df.copy()
    tmp = [f"__g{i}" for i in range(len(keys))]
    for t, k in zip(tmp, keys):
        frame[t] = frame[k].map(lambda v: repr(py(v)))  # None/NaN-safe, type-preserving keys
    out = []
    for _, sub in frame.groupby(tmp, sort=False, dropna=False):
        key = tuple(py(sub[k].iloc[0]) for k in keys)
        out.append((key, sub.drop(columns=tmp)))
    out.sort(key=lambda kv: tuple(value_order(v) for v in kv[0]))
    yield from out


def _summarize(sub: pd.DataFrame, key: dict, lr_key: str | None, params: list[str]) -> Group:
    counts = {v: int((sub[VERDICT] == v).sum()) for v in VERDICTS}
    min_stable = max_stable = min_div = min_failed = None
    below, above, inside = [], [], []
    if lr_key:
        st = sub.loc[sub[VERDICT] == STABLE, lr_key].dropna()
        dv = sub.loc[sub[VERDICT] == DIVERGED, lr_key].dropna()
        min_stable, max_stable = (float(st.min()), float(st.max())) if len(st) else (None, None)
        min_div = float(dv.min()) if len(dv) else None
        for lr in sorted(float(x) for x in sub.loc[sub[VERDICT] == STALLED, lr_key].dropna()):
            side = (inside if max_stable is None or min_stable <= lr <= max_stable
                    else below if lr < min_stable else above)
            side.append(lr)
        failed = [x for x in (min_div, *above) if x is not None]
        min_failed = min(failed) if failed else None
    ok = None if max_stable is None or min_div is None else bool(max_stable < min_div)
    best_obj = best_trial = best_params = None
    st = sub[(sub[VERDICT] == STABLE) & sub[OBJECTIVE].map(lambda v: finite(v) is not None)]
    if len(st):
        row = st.loc[st[OBJECTIVE].astype(float).idxmin()]
        best_obj, best_trial = float(row[OBJECTIVE]), str(row.get("trial_id"))
        best_params = {k: py(row[k]) for k in params}
    sens, n = lr_sensitivity(sub)
    runs = [(float(r[lr_key]), finite(r[OBJECTIVE]), {k: py(r[k]) for k in params})
            for _, r in st.iterrows() if finite(r.get(lr_key)) is not None] if lr_key else []
    g = Group(key=key, counts=counts, max_stable_lr=max_stable, min_diverged_lr=min_div, bracket_ok=ok,
              best_objective=best_obj, best_trial=best_trial, best_params=best_params,
              lr_sensitivity=sens, sensitivity_n=n, budget_steps=_budget(sub),
              min_stable_lr=min_stable, stalled_below=below, stalled_above=above, stalled_inside=inside,
              min_failed_lr=min_failed, stable_runs=runs)
    g.recommend()
    return g


def lr_margins(df: pd.DataFrame, region: Region) -> pd.Series:
    """Each trial's lr margin: its lr over the smallest diverged lr of its group in `region` (the
    region of `df`); None where that is unknown (no lr, or nothing in its group diverged)."""
    keys, lr_key = region.group_keys, region.lr_key
    edge = {tuple(repr(py(g.key.get(k))) for k in keys): g.min_diverged_lr for g in region.groups}
    out = []
    for _, r in df.iterrows():
        lr = finite(r.get(lr_key)) if lr_key else None
        low = edge.get(tuple(repr(py(r.get(k))) for k in keys))
        out.append(lr / low if lr is not None and low else None)
    return pd.Series(out, index=df.index, dtype=object)


def lr_sensitivity(sub: pd.DataFrame) -> tuple[float | None, int]:
    """Wortsman et al. (2023): mean over trials of min(L, L0) minus min over trials of L, where a
    diverged trial's L is its initial loss L0. Only trials with a verdict (stable, stalled: a real
    final loss, or diverged) count; None with fewer than two."""
    losses = []
    for _, r in sub.iterrows():
        l0 = finite(r.get(INITIAL_LOSS))
        if r[VERDICT] in (STABLE, STALLED):
            final = finite(r.get(OBJECTIVE))
            if final is None:
                continue
            losses.append(min(final, l0) if l0 is not None else final)
        elif r[VERDICT] == DIVERGED and l0 is not None:
            losses.append(l0)
    if len(losses) < 2:
        return None, len(losses)
    return float(sum(losses) / len(losses) - min(losses)), len(losses)


def divergence_rates(df: pd.DataFrame, keys: list[str]) -> dict[str, dict[str, float]]:
    judged = df[df[VERDICT].isin([STABLE, DIVERGED])] if len(df) else df
    out = {}
    for k in keys:
        rates = {}
        for key, sub in _groupby(judged, [k]):
            rates[format_value(key[0])] = float((sub[VERDICT] == DIVERGED).mean())
        if rates:
            out[k] = rates
    return out


def add_boundaries(region: Region, df: pd.DataFrame, replicates: pd.DataFrame, k: int, seed: int) -> list[tuple]:
    """The boundary as a probability of each combination of `region` (the region of `df`, its
    trials, all run at `seed`): P(fails | lr) fitted over its trials and its `replicates` (rows
    with the same columns and a `seed` each), `k` the seeds asked for. Sets the groups' boundary
    fields and makes the 5%-risk lr the edge of their recommended lr. Returns
    `boundary.fit_boundary`'s (Boundary, Fit) per group, for the figure."""
    from stablesweep.analysis.boundary import Run, fit_boundary

    lr_key, fits = region.lr_key, []
    for g in region.groups:
        mine, reps = rows_of(df, region.group_keys, g.key), rows_of(replicates, region.group_keys, g.key)
        runs = [Run(float(lr), v, seed) for lr, v in zip(mine[lr_key], mine[VERDICT]) if finite(lr) is not None]
        if len(reps):
            runs += [Run(float(lr), v, int(s)) for lr, v, s in zip(reps[lr_key], reps[VERDICT], reps["seed"])]
        b, fit = fit_boundary(runs)
        fits.append((b, fit))
        g.lr_at_5pct_risk, g.lr_at_50pct = b.lr_at_risk, b.lr_at_50
        g.lr_at_5pct_risk_interval = list(b.lr_at_risk_interval) if b.lr_at_risk_interval else None
        g.evidence, g.single_seed, g.boundary_note = b.evidence, b.single_seed, b.note
        g.replicates = len(reps)
        g.replicate_flops = float(pd.to_numeric(reps.get(TRAIN_FLOPS), errors="coerce").sum()) if len(reps) else 0.0
        g.train_flops = float(pd.to_numeric(mine.get(TRAIN_FLOPS), errors="coerce").sum()) if len(mine) else 0.0
        g.recommend()
    region.replicates = k
    region.recommended = recommended_params(region)
    return fits


def rows_of(df: pd.DataFrame, keys: list[str], key: dict[str, Any]) -> pd.DataFrame:
    """The rows of `df` in the combination `key` of the categorical `keys`."""
    if not len(df):
        return df
    mask = pd.Series(True, index=df.index)
    for k in keys:
        mask &= df[k].map(lambda v: repr(py(v))) == repr(py(key.get(k)))
    return df[mask]


def recommended_params(region: Region) -> dict[str, Any] | None:
    """The params of the recommended trial: among each combination's recommended one (its measured
    safe trial with the best objective), the best objective; None when no combination has one."""
    cands = [g for g in region.groups if g.recommended_params is not None]
    if not cands:
        return None
    best = min(cands, key=lambda g: (g.recommended_objective is None, g.recommended_objective or 0.0))
    return dict(best.recommended_params)


def recommended_group(region: Region) -> Group | None:
    """The combination whose recommended trial is `region.recommended`."""
    return next((g for g in region.groups if g.recommended_params is not None
                 and g.recommended_params == region.recommended), None)


# ---- files ----------------------------------------------------------------------------------

def recommended_files(region: Region, base: dict, out: Path, *, source: str | None = None,
                      base_dir: str | None = None) -> dict[str, Path]:
    """recommended.yaml (the recommended trial's config) and recommended/<setting>.yaml (each
    combination's), by the one writer (`analysis.recommended`). {} when no trial was measured safe."""
    from stablesweep.analysis.recommended import write_recommended_set

    top = recommended_group(region)
    groups = ([top] if top else []) + [g for g in region.groups if g.recommended_params is not None and g is not top]
    items = [(answer_of(g, region.lr_key), g.recommended_params,
              f"the recommended combination {g.label}: the best objective among each combination's recommended "
              "trial" if g is top else None) for g in groups]
    c = region.counts
    return write_recommended_set(items, out, base, tool="sweep", what=f"{sum(c.values())} trials ({_counts_text(c)})",
                                 seeds=region.replicates, source=source, base_dir=base_dir,
                                 top="recommended.yaml" if top else None)


def write_region(region: Region, df: pd.DataFrame, out: str | Path, *, base: dict | None = None,
                 title: str = "Stable region", extra: dict | None = None, figures: bool = True,
                 source: str | None = None, base_dir: str | None = None) -> dict[str, Path]:
    """stable_region.json, stable_region.md, trials.csv, figures/*.png, recommended.yaml and
    recommended/<setting>.yaml (`recommended_files`; `source`, `base_dir`: the user's file, its folder)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    data = {"kind": "sweep", "title": title, **(extra or {}), **region.to_dict()}
    files["json"] = out / "stable_region.json"
    files["json"].write_text(json.dumps(data, indent=2, default=str) + "\n")
    files["md"] = out / "stable_region.md"
    files["md"].write_text(region.to_markdown(title) + "\n")
    files["trials"] = out / "trials.csv"
    df.to_csv(files["trials"], index=False)
    if figures:
        from stablesweep.analysis.plots import objective_data, plot_lr_objective, plot_region, region_data

        fig_dir = out / "figures"
        fig_dir.mkdir(exist_ok=True)
        lr_key = region.lr_key or LR_KEY
        files["figure_region"] = plot_region(region_data(df, lr_key), fig_dir / "region_lr_clip.png", title=title)
        files["figure_objective"] = plot_lr_objective(objective_data(df, lr_key), fig_dir / "lr_objective.png")
    if base is not None:
        files.update(recommended_files(region, base, out, source=source, base_dir=base_dir))
    return files


# ---- small helpers ----------------------------------------------------------------------------

def _counts_text(c: dict[str, int]) -> str:
    return ", ".join(f"{v} {c.get(v, 0)}" for v in VERDICTS)


def _budget(df: pd.DataFrame) -> int | None:
    for col in (BUDGET_STEPS, STEPS):
        if col in df.columns and len(df):
            s = pd.to_numeric(df[col], errors="coerce").dropna()
            if len(s):
                return int(s.max())
    return None
