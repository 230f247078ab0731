"""Compare sweeps (and ramps) side by side, as MLflow holds them.

Two halves, as everywhere in analysis:
- `read_sweeps(uri, experiment, names)`: the one part that reads a store (through
  `stablesweep.tracking`, the only module that talks to MLflow). The parent runs are found by the
  tag `stablesweep.kind` (`sweep` or `ramp`), their trials by `tags.mlflow.parentRunId`; the
  sweep's base config and search space come from its `config.yaml` / `space.yaml` artifacts.
  Each becomes a `SweepData`: plain data, one row a trial.
- `compare(sweeps, ...)`: plain tables in, a `Comparison` out (no MLflow, no Ray), rendered as a
  terminal table, markdown, CSV or HTML, and written with figures by `write_report`.

Terms:
- A *setting* is a combination of the categorical axes (lr excluded), over the union of the
  sweeps' categorical axes; a sweep that does not vary an axis takes its value from its own base
  config, so `loss.masking` fixed at `slice` in one sweep meets `loss.masking=slice` of another.
- The *lr margin* of a trial is its lr over the smallest diverged lr of its setting in its own
  sweep: 0.1 means ten times below the nearest lr seen to diverge. Unknown (blank) when nothing
  in that setting diverged: the boundary was not found.
- The *status* of a setting in a sweep: `stable` (stable trials, none diverged), `mixed` (both:
  the boundary lies between its largest stable and smallest diverged lr), `unstable` (diverged
  trials, none stable), `unknown` (only pruned or errored trials). Between consecutive sweeps a
  setting *became stable*, *became unstable*, got *more* or *less stable*, or stayed the *same*.
  A change that only reflects a different lr range is flagged in its `note`.
"""
from __future__ import annotations

import difflib
import html
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from stablesweep.analysis.region import Region, analyze, infer_group_keys
from stablesweep.vocab import (CATEGORICAL, DIVERGED, ERROR, LR_KEY, PRUNED, STABLE, VERDICTS, InputError, format_value,
                               jsonable, py, short_key)

UNFINISHED = "unfinished"
BY = ("objective", "margin")
FORMATS = ("table", "md", "csv", "html")
_VERDICT_ORDER = {STABLE: 0, PRUNED: 1, DIVERGED: 2, ERROR: 3, UNFINISHED: 4}
_STATUS_ORDER = {"unstable": 0, "mixed": 1, "stable": 2}
# numeric columns of the trials table read back from a child run's metrics
_METRICS = ("objective", "initial_loss", "final_loss", "train_flops", "steps")


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
    params: dict[str, str] = field(default_factory=dict)  # the parent run's params
    status: str = ""
    start_time: int = 0
    label: str = ""  # unique display name (the name, or name@runid when names repeat)

    def __post_init__(self):
        self.label = self.label or self.name
        if self.lr_key is not None and self.lr_key not in self.trials.columns:
            self.lr_key = None
        if not self.axes:
            self.axes = [c for c in self.trials.columns if "." in c and "/" not in c]

    @property
    def budget_steps(self) -> int | None:
        for v in (self.params.get("budget_steps"), self.config.get("training.steps")):
            n = _num(v)
            if n is not None:
                return int(n)
        if "budget_steps" in self.trials.columns:
            s = pd.to_numeric(self.trials["budget_steps"], errors="coerce").dropna()
            if len(s):
                return int(s.max())
        return None

    def categorical_axes(self) -> list[str]:
        if self.categorical is not None:
            return [k for k in self.categorical if k != self.lr_key]
        return infer_group_keys(self.trials, [k for k in self.axes if k in self.trials.columns], self.lr_key)


def parse_param(s: Any) -> Any:
    """A param as MLflow holds it (a string) back to its value: null, true/false, ints, floats."""
    if not isinstance(s, str):
        return s
    t = s.strip()
    if t in ("null", "None", ""):
        return None
    if t in ("true", "false"):
        return t == "true"
    if re.fullmatch(r"[-+]?\d+", t):
        return int(t)
    try:
        return float(t)
    except ValueError:
        return s


def sweep_from_runs(parent, children, config_text: str | None = None, space_text: str | None = None) -> SweepData:
    """A `SweepData` from plain run records (`stablesweep.tracking.RunRecord`): the parent run,
    its child runs and, when present, the text of its config.yaml and space.yaml artifacts."""
    import yaml

    from stablesweep.tracking import KIND_TAG, SWEEP_TAG, TRIAL_TAG, flatten

    axes = [k for k in (parent.params.get("space_keys") or "").split(",") if k]
    categorical = None
    if space_text:
        try:
            space = yaml.safe_load(space_text) or {}
            axes = axes or list(space)
            categorical = [k for k, spec in space.items() if k != LR_KEY
                           and isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in CATEGORICAL]
        except yaml.YAMLError:
            pass
    config: dict[str, Any] = {}
    if config_text:
        try:
            raw = yaml.safe_load(config_text)
            config = flatten(raw) if isinstance(raw, dict) else {}
        except yaml.YAMLError:
            pass
    if not axes:  # a ramp: the config keys its probes set (params such as `phase` are no config keys)
        axes = sorted({k for c in children for k in c.params if "." in k and "/" not in k},
                      key=lambda k: (k != LR_KEY, k))
    rows = []
    for c in children:
        verdict = c.tags.get("verdict") or UNFINISHED
        row: dict[str, Any] = {"trial_id": c.tags.get(TRIAL_TAG) or c.run_id[:8], "run_id": c.run_id,
                               "name": c.name}
        row.update({k: parse_param(c.params.get(k)) for k in axes})
        first_bad = _num(c.tags.get("first_bad_step"))
        budget = _num(c.tags.get("budget_steps"))
        budget = budget if budget is not None else _num(parent.params.get("budget_steps"))
        row.update({"verdict": verdict, "reason": c.tags.get("reason") or None,
                    "first_bad_step": int(first_bad) if first_bad is not None else -1,
                    "budget_steps": int(budget) if budget is not None else None})
        for m in _METRICS:
            row[m] = c.metrics.get(m)
        if row["final_loss"] is None:
            row["final_loss"] = c.metrics.get("loss")
        rows.append(row)
    columns = ["trial_id", "run_id", "name", *axes, "verdict", "reason", "first_bad_step", "budget_steps", *_METRICS]
    trials = pd.DataFrame(rows, columns=columns)
    return SweepData(name=parent.tags.get(SWEEP_TAG) or parent.name, run_id=parent.run_id, trials=trials,
                     kind=parent.tags.get(KIND_TAG, "sweep"), axes=axes, categorical=categorical,
                     config=config, params=dict(parent.params), status=parent.status,
                     start_time=parent.start_time)


# ---- reading from MLflow ----------------------------------------------------------------------

def read_sweeps(uri: str, experiment: str | None = None, names: Iterable[str] = (), *, timeout: float = 5.0,
                notes: list[str] | None = None) -> list[SweepData]:
    """The sweeps (and ramps) `names` of `experiment` in the store at `uri` (all of them, oldest
    first, when no name is given). A name is a sweep's name or a run id (or its first 8+
    characters); a name used by several sweeps means the latest (a note says so). Raises
    InputError for a store that is not there, an unknown experiment or sweep."""
    from stablesweep.tracking import DEFAULT_EXPERIMENT, SWEEP_TAG, TrackerReader, TrackingReadError, probe_store

    experiment = experiment or DEFAULT_EXPERIMENT
    notes = notes if notes is not None else []
    why = probe_store(uri, timeout=timeout)
    if why:
        raise InputError(f"--mlflow {uri}: {why}")
    reader = TrackerReader(uri, experiment)
    try:
        if reader.experiment_id() is None:
            known = reader.experiment_names()
            hint = _did_you_mean(experiment, known)
            raise InputError(f"--experiment {experiment}: no such experiment at {uri}{hint or ';'} experiments "
                             f"there: {', '.join(known) or '(none)'}")
        parents = reader.parent_runs()
        if not parents:
            raise InputError(f"no sweeps in experiment {experiment!r} at {uri}; run `stablesweep sweep CONFIG "
                             f"--space SPACE --mlflow {uri}` first")
        chosen = _select(parents, list(names), experiment, uri, notes)
        name_of = {p.run_id: p.tags.get(SWEEP_TAG) or p.name for p in chosen}
        counts: dict[str, int] = {}
        for n in name_of.values():
            counts[n] = counts.get(n, 0) + 1
        sweeps = []
        for p in chosen:
            data = sweep_from_runs(p, reader.child_runs(p.run_id), reader.read_text(p.run_id, "config.yaml"),
                                   reader.read_text(p.run_id, "space.yaml"))
            if counts[data.name] > 1 or any(s.label == data.name for s in sweeps):
                data.label = f"{data.name}@{p.run_id[:8]}"
            sweeps.append(data)
    except TrackingReadError as e:
        raise InputError(f"--mlflow {uri}: cannot read the store: {e}") from None
    return sweeps


def _select(parents: list, names: list[str], experiment: str, uri: str, notes: list[str]) -> list:
    from stablesweep.tracking import SWEEP_TAG

    if not names:
        return parents
    by_name: dict[str, list] = {}
    for p in parents:
        by_name.setdefault(p.tags.get(SWEEP_TAG) or p.name, []).append(p)
    chosen = []
    for n in names:
        if n in by_name:
            runs = by_name[n]
            if len(runs) > 1:
                notes.append(f"{len(runs)} sweeps are named {n!r}; using the latest (run {runs[-1].run_id}); pass a "
                             f"run id to choose another: {', '.join(r.run_id for r in runs)}")
            pick = runs[-1]
        else:
            ids = [p for p in parents if p.run_id == n or (len(n) >= 8 and p.run_id.startswith(n))]
            if len(ids) != 1:
                known = sorted(by_name)
                hint = _did_you_mean(n, known)
                kinds = sorted({p.tags.get("stablesweep.kind", "sweep") for p in parents})
                raise InputError(f"unknown sweep {n!r} in experiment {experiment!r} at {uri}{hint or ';'} "
                                 f"{'/'.join(kinds)}s there: {', '.join(known)}")
            pick = ids[0]
        if all(pick.run_id != c.run_id for c in chosen):
            chosen.append(pick)
    return chosen


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


# ---- the comparison (plain tables) ----------------------------------------------------------

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
            text += f", boundary in ({_e(self.max_stable_lr)}, {_e(self.min_diverged_lr)}]"
        elif self.status == "unstable" and self.min_diverged_lr is not None:
            text += f", diverged from lr {_e(self.min_diverged_lr)}"
        elif self.status == "stable" and self.max_stable_lr is not None:
            text += f", stable up to lr {_e(self.max_stable_lr)}"
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


@dataclass
class Comparison:
    sweeps: list[SweepSummary]
    setting_keys: list[str]
    param_keys: list[str]
    config_keys: list[str]  # base-config keys (not swept) that differ between the sweeps
    configs: pd.DataFrame  # ranked; one row a trial (after --only / --top)
    varying: list[str]  # param/config columns whose values differ among the rows shown
    transitions: list[Transition]
    by: str = "objective"
    only: str | None = None
    top: int | None = None
    lr_key: str | None = LR_KEY
    source: str = ""  # where the sweeps were read (URI and experiment)

    # -- tables ----------------------------------------------------------------------------
    def sweeps_table(self) -> pd.DataFrame:
        rows = []
        for s in self.sweeps:
            rows.append({"sweep": s.label, "kind": s.kind, "run_id": s.run_id, "trials": s.trials,
                         **{v: s.counts.get(v, 0) for v in (*VERDICTS, UNFINISHED)},
                         "budget_steps": s.budget_steps, "best_objective": s.best_objective,
                         "lr_sensitivity": s.lr_sensitivity, "sampler": s.sampler})
        return pd.DataFrame(rows)

    def settings_table(self) -> pd.DataFrame:
        """Per sweep and setting: verdict counts, the boundary bracket, LR sensitivity."""
        rows = []
        for s in self.sweeps:
            for g in s.region.groups:
                row = {"sweep": s.label, **{k: g.key.get(k) for k in self.setting_keys}}
                row.update({v: g.counts.get(v, 0) for v in VERDICTS})
                row.update({"max_stable_lr": g.max_stable_lr, "min_diverged_lr": g.min_diverged_lr,
                            "lr_sensitivity": g.lr_sensitivity, "best_objective": g.best_objective})
                rows.append(row)
        return pd.DataFrame(rows)

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
        """The configs table with raw values, plus `differs_from_best` (the keys in which a row
        differs from the first)."""
        t = self.configs.copy()
        if len(t):
            t["differs_from_best"] = t["_differs"].map(lambda ks: ";".join(ks))
        return t.drop(columns=["_differs"], errors="ignore")

    # -- renderings ------------------------------------------------------------------------
    def _shown(self, mark) -> tuple[list[str], list[list[str]]]:
        """Header and cells of the configs table; `mark(text)` highlights a cell that differs
        from the best row; a column whose values vary among the rows gets ` *` in its header."""
        t = self.configs
        cols = ["rank", "sweep", "verdict", "objective", *([self.lr_key] if self.lr_key else []), "margin",
                *[k for k in self.diff_columns() if k != self.lr_key], "steps", "run"]
        head = []
        for c in cols:
            label = _label(c) if c in self.diff_columns() else c
            head.append(label + (" *" if c in self.varying else ""))
        rows = []
        for _, r in t.iterrows():
            cells = []
            for c in cols:
                if c == "run":
                    text = str(r["name"])
                elif c == "verdict":
                    reason = py(r.get("reason"))
                    text = str(r["verdict"]) + (f" ({reason})" if r["verdict"] == DIVERGED and reason else "")
                elif c in ("objective",):
                    text = _g(r[c])
                elif c == "margin":
                    text = _e(r[c], none="-")
                elif c == self.lr_key:
                    text = _e(r[c])
                elif c == "steps":
                    steps, budget = _num(r.get("steps")), _num(r.get("budget_steps"))
                    text = "-" if steps is None else f"{int(steps)}" + (f"/{int(budget)}" if budget else "")
                else:
                    text = _fmtv(r[c])
                if c in r["_differs"]:
                    text = mark(text)
                cells.append(text)
            rows.append(cells)
        return head, rows

    def header_lines(self) -> list[str]:
        lines = []
        for s in self.sweeps:
            c = s.counts
            lines.append(f"{s.label} ({s.kind}, run {s.run_id}): {s.trials} trials, budget {s.budget_steps or '?'} "
                         f"steps: " + ", ".join(f"{v} {c.get(v, 0)}" for v in VERDICTS)
                         + (f", unfinished {c[UNFINISHED]}" if c.get(UNFINISHED) else "")
                         + f"; best objective {_g(s.best_objective)}, lr sensitivity {_g(s.lr_sensitivity)}")
        return lines

    def ranking_line(self) -> str:
        what = f"{self.only} trials" if self.only else "trials (stable first)"
        by = "objective (lower first)" if self.by == "objective" else \
            "lr margin (lr / smallest diverged lr of its setting; most headroom first)"
        top = f", top {self.top}" if self.top else ""
        return f"{what}, ranked by {by}{top}"

    def to_text(self) -> str:
        out = [f"Compare: {len(self.sweeps)} sweep(s)" + (f" from {self.source}" if self.source else ""), ""]
        out += ["  " + ln for ln in self.header_lines()]
        out += ["", "Per sweep and setting (the boundary lies between max stable lr and min diverged lr):", ""]
        out.append(_indent(_text_table(*self._settings_cells())))
        out += ["", f"Configurations: {self.ranking_line()}. `*` after a value: differs from the first row; "
                    "after a column name: differs among the rows. margin = lr / smallest diverged lr of its "
                    "setting.", ""]
        head, rows = self._shown(lambda s: s + "*")
        out.append(_indent(_text_table(head, rows)) if rows else "  (no trials)")
        out += self._changes_text()
        return "\n".join(out) + "\n"

    def _settings_cells(self) -> tuple[list[str], list[list[str]]]:
        t = self.settings_table()
        head = ["sweep", *[_label(k) for k in self.setting_keys], *VERDICTS, "max stable lr", "min diverged lr",
                "lr sensitivity", "best objective"]
        rows = []
        for _, r in t.iterrows():
            rows.append([str(r["sweep"]), *[_fmtv(r[k]) for k in self.setting_keys],
                         *[str(int(r[v])) for v in VERDICTS], _e(r["max_stable_lr"]), _e(r["min_diverged_lr"]),
                         _g(r["lr_sensitivity"]), _g(r["best_objective"])])
        return head, rows

    def _changes_text(self) -> list[str]:
        out = []
        for t in self.transitions:
            out += ["", f"Changes {t.before} -> {t.after}:"]
            if t.config_diff:
                out.append("  base configs differ in: " + "; ".join(
                    f"{k}: {_fmtv(a)} -> {_fmtv(b)}" for k, (a, b) in t.config_diff.items()))
            for c in t.settings:
                line = f"  {c.label}: {c.change}"
                if c.before and c.after:
                    line += f"  [{c.before.describe()} -> {c.after.describe()}]"
                if c.note:
                    line += f"  note: {c.note}"
                out.append(line)
            out.append("  " + t.summary())
        return out

    def to_markdown(self, figures: Iterable[str] = ()) -> str:
        out = ["# Sweep comparison", ""]
        if self.source:
            out += [f"Read from {self.source}.", ""]
        out += ["## Sweeps", ""]
        out += [f"- **{ln.split(' ', 1)[0]}** {ln.split(' ', 1)[1]}" for ln in self.header_lines()]
        out += ["", "Every verdict holds for the sweep's step budget: a run stable for that many steps may still "
                    "diverge later.", "", "## Per sweep and setting", ""]
        out += _md_table(*self._settings_cells())
        out += ["", "The boundary lies between *max stable lr* and *min diverged lr*. LR sensitivity (Wortsman et "
                    "al. 2023): mean over the sampled lrs of min(final loss, initial loss) minus the best final loss; "
                    "a diverged trial counts as its initial loss.", "",
                "## Configurations", "",
                f"{self.ranking_line()[0].upper()}{self.ranking_line()[1:]}. **Bold**: differs from the first row; "
                "`*` after a column name: differs among the rows. margin = lr / smallest diverged lr of its "
                "setting (blank: nothing diverged there).", ""]
        head, rows = self._shown(lambda s: f"**{s}**")
        out += _md_table(head, rows) if rows else ["(no trials)"]
        for t in self.transitions:
            out += ["", f"## Changes {t.before} -> {t.after}", ""]
            if t.config_diff:
                out += ["Base configs differ in: " + "; ".join(f"`{k}`: {_fmtv(a)} -> {_fmtv(b)}"
                                                               for k, (a, b) in t.config_diff.items()), ""]
            rows = [[c.label, f"**{c.change}**" if c.change.startswith("became") else c.change,
                     c.before.describe() if c.before else "-", c.after.describe() if c.after else "-", c.note]
                    for c in t.settings]
            out += _md_table(["setting", "change", t.before, t.after, "note"], rows)
            out += ["", t.summary()]
        figs = list(figures)
        if figs:
            out += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figs]
        return "\n".join(out) + "\n"

    def to_html(self, figures: Iterable[str] = ()) -> str:
        esc = html.escape

        def table(head, rows, diff_cls=True) -> str:
            th = "".join(f"<th>{esc(h)}</th>" for h in head)
            body = []
            for cells in rows:
                tds = []
                for c in cells:
                    if isinstance(c, tuple):  # (text, highlighted)
                        text, hi = c
                        tds.append(f'<td class="diff"><b>{esc(text)}</b></td>' if hi else f"<td>{esc(text)}</td>")
                    else:
                        tds.append(f"<td>{esc(str(c))}</td>")
                body.append("<tr>" + "".join(tds) + "</tr>")
            return f"<table>\n<thead><tr>{th}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"

        marker = "\x00"
        head, rows = self._shown(lambda s: marker + s)
        rows = [[(c[1:], True) if c.startswith(marker) else c for c in r] for r in rows]
        parts = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8"><title>Sweep comparison</title>',
                 "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:.5em 0}"
                 "th,td{border:1px solid #ccc;padding:3px 7px;font-size:13px;text-align:left}"
                 "th{background:#f3f3f3}td.diff{background:#fff3b0}img{max-width:100%}</style></head><body>",
                 "<h1>Sweep comparison</h1>"]
        if self.source:
            parts.append(f"<p>Read from {esc(self.source)}.</p>")
        parts.append("<h2>Sweeps</h2>")
        st = self.sweeps_table()
        parts.append(table(list(st.columns), [[_fmtv(v) for v in r] for r in st.itertuples(index=False)]))
        parts.append("<h2>Per sweep and setting</h2>")
        parts.append(table(*self._settings_cells()))
        parts.append(f"<h2>Configurations</h2><p>{esc(self.ranking_line())}. Highlighted: differs from the first "
                     "row; <code>*</code> after a column name: differs among the rows. margin = lr / smallest "
                     "diverged lr of its setting.</p>")
        parts.append(table(head, rows))
        for t in self.transitions:
            parts.append(f"<h2>Changes {esc(t.before)} &rarr; {esc(t.after)}</h2>")
            if t.config_diff:
                parts.append("<p>Base configs differ in: " + esc("; ".join(
                    f"{k}: {_fmtv(a)} -> {_fmtv(b)}" for k, (a, b) in t.config_diff.items())) + "</p>")
            parts.append(table(["setting", "change", t.before, t.after, "note"],
                               [[c.label, (c.change, c.change.startswith("became")),
                                 c.before.describe() if c.before else "-", c.after.describe() if c.after else "-",
                                 c.note] for c in t.settings]))
            parts.append(f"<p>{esc(t.summary())}</p>")
        figs = list(figures)
        if figs:
            parts.append("<h2>Figures</h2>")
            parts += [f'<p><img src="{esc(f)}" alt="{esc(Path(f).stem)}"></p>' for f in figs]
        parts.append("</body></html>")
        return "\n".join(parts) + "\n"

    def to_csv(self) -> str:
        return self.configs_csv().to_csv(index=False)

    def render(self, fmt: str, figures: Iterable[str] = ()) -> str:
        if fmt == "table":
            return self.to_text()
        if fmt == "md":
            return self.to_markdown(figures)
        if fmt == "csv":
            return self.to_csv()
        if fmt == "html":
            return self.to_html(figures)
        raise InputError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")

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
        })


def compare(sweeps: list[SweepData], *, only: str | None = None, top: int | None = None, by: str = "objective",
            source: str = "") -> Comparison:
    """Rank the trials of `sweeps` side by side (see the module docstring)."""
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
        judged = frame[frame["verdict"].isin(VERDICTS)] if len(frame) else frame
        region = analyze(judged, lr_key=lr_key if lr_key in frame.columns else None,
                         group_keys=list(setting_keys), param_keys=list(param_keys), importance=False)
        min_div = {_key(g.key, setting_keys): g.min_diverged_lr for g in region.groups}
        frame["margin"] = [_margin(r, lr_key, min_div.get(_key(r, setting_keys))) for _, r in frame.iterrows()]
        frame.insert(0, "sweep", s.label)
        frame["sweep_run_id"] = s.run_id
        frames.append(frame)
        sens = [g.lr_sensitivity for g in region.groups if g.lr_sensitivity is not None]
        counts = {v: int((frame["verdict"] == v).sum()) for v in (*VERDICTS, UNFINISHED)}
        summaries.append(SweepSummary(
            label=s.label, name=s.name, kind=s.kind, run_id=s.run_id, trials=len(frame), counts=counts,
            budget_steps=s.budget_steps, best_objective=region.best["objective"] if region.best else None,
            lr_sensitivity=sum(sens) / len(sens) if sens else None, sampler=s.params.get("sampler"),
            status=s.status, region=region))
        states.append(_setting_states(s.label, judged, region, setting_keys, lr_key))

    configs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if len(configs) and only:
        configs = configs[configs["verdict"] == only]
    configs = _rank(configs, by)
    if top is not None:
        configs = configs.head(top)
    configs = configs.reset_index(drop=True)
    diff_cols = [k for k in (*param_keys, *config_keys) if k in configs.columns]
    if len(configs):
        configs.insert(0, "rank", range(1, len(configs) + 1))
        best = configs.iloc[0]
        configs["_differs"] = [[k for k in diff_cols if _norm(r[k]) != _norm(best[k])] for _, r in configs.iterrows()]
    else:
        configs["rank"] = pd.Series(dtype=int)
        configs["_differs"] = pd.Series(dtype=object)
    varying = [k for k in diff_cols if len(configs) and configs[k].map(_norm).nunique() > 1]

    transitions = [_transition(a, b, sa, sb, setting_keys)
                   for (a, sa), (b, sb) in zip(zip(sweeps, states), zip(sweeps[1:], states[1:]))]
    return Comparison(sweeps=summaries, setting_keys=list(setting_keys), param_keys=list(param_keys),
                      config_keys=config_keys, configs=configs, varying=varying, transitions=transitions, by=by,
                      only=only, top=top, lr_key=lr_key, source=source)


def _rank(t: pd.DataFrame, by: str) -> pd.DataFrame:
    if not len(t):
        return t
    order = t["verdict"].map(lambda v: _VERDICT_ORDER.get(v, 9))
    obj = t["objective"].map(lambda v: _num(v) if _num(v) is not None else math.inf)
    primary = obj if by == "objective" else t["margin"].map(lambda v: _num(v) if _num(v) is not None else math.inf)
    t = t.assign(_o=order, _p=primary, _b=obj)
    return t.sort_values(["_o", "_p", "_b", "sweep"], kind="stable").drop(columns=["_o", "_p", "_b"])


def _margin(row, lr_key: str | None, min_div: float | None) -> float | None:
    lr = _num(row.get(lr_key)) if lr_key else None
    if lr is None or min_div is None or min_div <= 0:
        return None
    return lr / min_div


def _setting_states(label: str, judged: pd.DataFrame, region: Region, keys: list[str],
                    lr_key: str | None) -> dict[tuple, tuple[dict, SettingState]]:
    out = {}
    for g in region.groups:
        k = _key(g.key, keys)
        lr_range = None
        if lr_key and len(judged):
            mask = judged.apply(lambda r: _key(r, keys) == k, axis=1) & judged["verdict"].isin([STABLE, DIVERGED])
            lrs = pd.to_numeric(judged.loc[mask, lr_key], errors="coerce").dropna() if mask.any() else []
            if len(lrs):
                lr_range = (float(min(lrs)), float(max(lrs)))
        out[k] = (dict(g.key), SettingState(sweep=label, counts=dict(g.counts), max_stable_lr=g.max_stable_lr,
                                           min_diverged_lr=g.min_diverged_lr, lr_range=lr_range,
                                           lr_sensitivity=g.lr_sensitivity, best_objective=g.best_objective))
    return out


def _transition(a: SweepData, b: SweepData, sa: dict, sb: dict, keys: list[str]) -> Transition:
    changes = []
    for k in sorted(set(sa) | set(sb), key=lambda t: tuple(_sort(x) for x in t)):
        setting = (sa.get(k) or sb.get(k))[0]
        label = " ".join(f"{_label(key)}={_fmtv(setting.get(key))}" for key in keys) or "all trials"
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
        note = (f"{b} tried lrs up to {_e(after.lr_range[1])} only, below {_e(before.min_diverged_lr)}, the smallest "
                f"that diverged in {a}: the lr range changed, not necessarily the stability")
    elif not up and before.max_stable_lr is not None and after.lr_range and after.lr_range[0] > before.max_stable_lr:
        note = (f"{b} tried lrs from {_e(after.lr_range[0])} only, above {_e(before.max_stable_lr)}, the largest "
                f"stable in {a}: the lr range changed, not necessarily the stability")
    return change, note


def _config_diff_keys(sweeps: list[SweepData], swept: set[str]) -> list[str]:
    known = [s.config for s in sweeps if s.config]
    if len(known) < 2:
        return []
    keys = _union(k for c in known for k in c)
    return [k for k in keys if k not in swept and len({_norm(c.get(k)) for c in known}) > 1]


# ---- figures and files --------------------------------------------------------------------------

def parallel_data(table: pd.DataFrame, keys: list[str], lr_key: str | None = LR_KEY) -> dict:
    """Plain data for the parallel-coordinates figure: per axis its kind (log, linear or
    categorical), its tick labels and each trial's position in [0, 1]; one line a trial."""
    axes = []
    for k in keys:
        if k not in table.columns:
            continue
        vals = [py(v) for v in table[k]]
        present = [v for v in vals if v is not None]
        nums = [v for v in present if isinstance(v, (int, float)) and not isinstance(v, bool)]
        # numbers on a scale: lr and objective always, other numeric params when they take many values
        numeric = bool(nums) and len(nums) == len(present) and (k in (lr_key, "objective") or len(set(nums)) > 6)
        if numeric:
            lo, hi = min(nums), max(nums)
            log = lo > 0 and hi / lo >= 100
            f = (lambda x: math.log10(x)) if log else (lambda x: x)
            a, b = f(lo), f(hi)
            pos = [None if v is None else (0.5 if b == a else (f(v) - a) / (b - a)) for v in vals]
            shown = sorted(set(nums)) if len(set(nums)) <= 6 else [lo, hi]
            fmt = _e if log or k == lr_key else _g
            ticks = [(0.5 if b == a else (f(v) - a) / (b - a), fmt(v)) for v in shown]
            axes.append({"key": k, "kind": "log" if log else "linear", "pos": pos, "ticks": ticks})
        else:
            levels = sorted({_fmtv(v) for v in vals}, key=_sort_str)
            n = len(levels)
            where = {lv: (0.5 if n == 1 else i / (n - 1)) for i, lv in enumerate(levels)}
            axes.append({"key": k, "kind": "categorical", "pos": [where[_fmtv(v)] for v in vals],
                         "ticks": [(where[lv], lv) for lv in levels]})
    lines = [{"verdict": str(v), "y": [ax["pos"][i] for ax in axes]} for i, v in enumerate(table["verdict"])]
    return {"axes": [{k: v for k, v in ax.items() if k != "pos"} for ax in axes], "lines": lines}


def plot_parallel(table: pd.DataFrame, keys: list[str], path: str | Path, lr_key: str | None = LR_KEY,
                  title: str = "Stable vs diverged trials") -> Path:
    from stablesweep.analysis.plots import COLORS, _matplotlib

    data = parallel_data(table, keys, lr_key)
    plt = _matplotlib()
    n = max(2, len(data["axes"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.7 * n), 4.2))
    order = {PRUNED: 0, ERROR: 1, UNFINISHED: 1, STABLE: 2, DIVERGED: 3}
    seen = set()
    for line in sorted(data["lines"], key=lambda ln: order.get(ln["verdict"], 0)):
        pts = [(i, y) for i, y in enumerate(line["y"]) if y is not None]
        if len(pts) < 1:
            continue
        v = line["verdict"]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=COLORS.get(v, "#1f77b4"),
                alpha=0.35 if v in (PRUNED, ERROR, UNFINISHED) else 0.75, lw=1.6,
                ls="--" if v == PRUNED else "-", label=None if v in seen else v, marker="o", ms=3)
        seen.add(v)
    for i, a in enumerate(data["axes"]):
        ax.axvline(i, color="#444", lw=0.8)
        for y, text in a["ticks"]:
            ax.text(i + 0.04, y, text, fontsize=7, va="center", ha="left", color="#222",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7})
    ax.set_xticks(range(len(data["axes"])))
    ax.set_xticklabels([_label(a["key"]) + (" (log)" if a["kind"] == "log" else "") for a in data["axes"]],
                       fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(data["axes"]) - 0.5)
    ax.set_ylim(-0.08, 1.08)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    if seen:
        ax.legend(fontsize=8, loc="upper right", bbox_to_anchor=(1.0, 1.15), ncol=len(seen), frameon=False)
    ax.set_title(title, fontsize=10, loc="left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(cmp: Comparison, sweeps: list[SweepData], out: str | Path, *, figures: bool = True
                 ) -> dict[str, Path]:
    """report.{txt,md,html}, configs.csv, settings.csv, changes.csv, compare.json and figures/:
    parallel.png (all trials of all sweeps, stable vs diverged) and region_<sweep>.png (the
    sweep's region panels, as `stablesweep sweep` draws them)."""
    from stablesweep.analysis.plots import CLIP_KEY, PANEL_KEYS, plot_region

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    fig_names: list[str] = []
    if figures:
        fig_dir = out / "figures"
        fig_dir.mkdir(exist_ok=True)
        every = []
        for s in sweeps:
            t = s.trials.copy()
            for k in (*cmp.param_keys, CLIP_KEY, *PANEL_KEYS):  # fixed ones from its config, for the panels
                if k not in t.columns:
                    t[k] = [s.config.get(k)] * len(t) if len(t) else pd.Series(dtype=object)
            t.insert(0, "sweep", s.label)
            every.append(t)
            judged = t[t["verdict"].isin(VERDICTS)]
            p = plot_region(judged, fig_dir / f"region_{_slug(s.label)}.png", lr_key=s.lr_key or LR_KEY)
            files[f"figure_region_{s.label}"] = p
        table = pd.concat(every, ignore_index=True) if every else pd.DataFrame(columns=["verdict"])
        table = table[table["verdict"].isin(VERDICTS)]
        keys = (["sweep"] if len(sweeps) > 1 else []) + list(cmp.setting_keys) + \
            [k for k in cmp.param_keys if k not in cmp.setting_keys] + ["objective"]
        files["figure_parallel"] = plot_parallel(table, keys, fig_dir / "parallel.png", lr_key=cmp.lr_key,
                                                 title="Trials of " + ", ".join(s.label for s in sweeps)
                                                 + ": stable vs diverged (objective: diverged at initial loss)")
        fig_names = [str(p.relative_to(out)) for k, p in files.items() if k.startswith("figure_")]
        fig_names.sort(key=lambda n: (not n.endswith("parallel.png"), n))
    files["txt"] = out / "report.txt"
    files["txt"].write_text(cmp.to_text())
    files["md"] = out / "report.md"
    files["md"].write_text(cmp.to_markdown(fig_names))
    files["html"] = out / "report.html"
    files["html"].write_text(cmp.to_html(fig_names))
    files["csv"] = out / "configs.csv"
    files["csv"].write_text(cmp.to_csv())
    files["settings"] = out / "settings.csv"
    cmp.settings_table().to_csv(files["settings"], index=False)
    files["changes"] = out / "changes.csv"
    cmp.changes_table().to_csv(files["changes"], index=False)
    files["json"] = out / "compare.json"
    files["json"].write_text(json.dumps(cmp.to_dict(), indent=2, default=str) + "\n")
    return files


def log_report(cmp: Comparison, files: dict[str, Path], out: str | Path, uri: str, experiment: str | None = None
               ) -> str:
    """The report as a run of kind `compare` in MLflow: its files as artifacts (figures under
    figures/), the markdown as the run's description, the compared sweeps as tags."""
    from stablesweep.tracking import DEFAULT_EXPERIMENT, TrackerReader, TrackingReadError

    out = Path(out)
    labels = [s.label for s in cmp.sweeps]
    name = "compare " + (" vs ".join(labels) if len(labels) <= 3 else f"{labels[0]} .. {labels[-1]} "
                                                                       f"({len(labels)} sweeps)")
    top_files = [p for k, p in files.items() if not k.startswith("figure_")]
    if (out / "figures").is_dir():
        top_files.append(out / "figures")
    tags = {"stablesweep.compared": ",".join(labels)[:5000],
            "stablesweep.compared_runs": ",".join(s.run_id for s in cmp.sweeps)[:5000]}
    for t in cmp.transitions:
        for what in ("became stable", "became unstable"):
            got = t.became(what)
            if got and len(cmp.transitions) == 1:
                tags[f"stablesweep.{what.replace(' ', '_')}"] = "; ".join(got)[:5000]
    params = {"sweeps": ",".join(labels), "by": cmp.by, "only": cmp.only or "", "top": cmp.top or ""}
    n = len(cmp.configs)
    metrics = {"configs": float(n),
               "stable_configs": float((cmp.configs["verdict"] == STABLE).sum()) if n else 0.0}
    try:
        return TrackerReader(uri, experiment or DEFAULT_EXPERIMENT).log_report(
            name, params, tags, top_files, metrics=metrics, note=cmp.to_markdown())
    except TrackingReadError as e:
        raise InputError(f"--mlflow {uri}: cannot log the report: {e}") from None


# ---- small helpers ----------------------------------------------------------------------------

def _union(items: Iterable[str]) -> list[str]:
    out: list[str] = []
    for k in items:
        if k not in out:
            out.append(k)
    return out


def _num(v: Any) -> float | None:
    v = py(parse_param(v) if isinstance(v, str) else v)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


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


def _sort(s: str):
    try:
        return (1, float(s), "")
    except ValueError:
        return (0 if s == "none" else 2, 0.0, s)


def _sort_str(s: str):
    return _sort(s)


def _label(key: str) -> str:
    return short_key(key)


def _fmtv(v: Any) -> str:
    v = py(v)
    if isinstance(v, float) and (abs(v) < 1e-2 or abs(v) >= 1e4) and v != 0:
        return f"{v:.2e}"
    return format_value(v)


def _e(v: Any, none: str = "-") -> str:
    n = _num(v)
    return none if n is None else f"{n:.2e}"


def _g(v: Any) -> str:
    n = _num(v)
    return "-" if n is None else f"{n:.4g}"


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_") or "sweep"


def _indent(text: str, n: int = 2) -> str:
    return "\n".join(" " * n + ln for ln in text.splitlines())


def _text_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    def cell(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(cell(h) for h in head) + " |", "|" + "---|" * len(head)] + \
        ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
