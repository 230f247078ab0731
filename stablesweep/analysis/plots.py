"""Figures (matplotlib, Agg), each in two steps as Optuna's visualization: a `*_data` function
turns a trials table into plain data (a small dataclass: what goes where), a `plot_*` function
draws that data into a PNG. Tests assert on the data and that the drawing is a valid image.

- `region_data` / `plot_region`: lr (log axis) against gradient clipping, coloured by verdict, a
  panel per precision x masking: where training is stable and where it blows up, the boundary
  shaded between the largest stable and the smallest diverged lr of each row; a title (the
  sweep) and lr limits (`lr_limits`, shared by the figures of several sweeps) when asked.
- `objective_data` / `plot_lr_objective`: lr against the objective; diverged trials marked (at
  their stand-in, the initial loss), pruned ones hollow.
- `parallel_data` / `plot_parallel`: parallel coordinates, one line a trial, one axis a param
  (log, linear or categorical), coloured by verdict (the figure of `stablesweep compare`).
- `boundary_data` / `plot_boundary`: P(fails | lr) per setting, points at the replicates.
- `ramp_data` / `plot_ramp`: the ramp's probes per setting on a log-lr axis, coloured by verdict,
  its stable bracket and its recommended lr.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from stablesweep.analysis.text import lr_text, num_text, text_order, value_text
from stablesweep.vocab import DIVERGED, ERROR, LR_KEY, OBJECTIVE, PRUNED, STABLE, STALLED, VERDICT, py, short_key

COLORS = {STABLE: "#2ca02c", STALLED: "#ff7f0e", DIVERGED: "#d62728", PRUNED: "#7f7f7f", ERROR: "#000000"}
MARKERS = {STABLE: "o", STALLED: "D", DIVERGED: "X", PRUNED: "o", ERROR: "s"}
BOUNDARY = "#ffbf00"  # the shading between the largest stable and the smallest diverged lr
CLIP_KEY = "training.max_grad_norm"
PANEL_KEYS = ("training.precision", "loss.masking")


# ---- the region: lr against clipping, a panel per precision x masking ----------------------------

@dataclass
class RegionInfo:
    panels: dict[str, dict[str, tuple[list[float], list[int]]]]  # title -> verdict -> (lrs, y levels)
    y_levels: list[str]  # tick labels of the y axis, bottom up
    y_label: str
    panel_keys: tuple[str, ...]
    lr_key: str
    # title -> y level -> (largest stable lr, smallest diverged lr), where a row has both
    bounds: dict[str, dict[int, tuple[float, float]]] = field(default_factory=dict)


def region_data(df: pd.DataFrame, lr_key: str = LR_KEY, y_key: str = CLIP_KEY,
                panel_keys: tuple[str, ...] = PANEL_KEYS) -> RegionInfo:
    """Each trial with an lr as a point (lr, index of its `y_key` value) in the panel of its
    `panel_keys` values, grouped by verdict; panels sorted by title."""
    panel_keys = tuple(k for k in panel_keys if k in df.columns)
    y_levels = []
    if y_key in df.columns:
        y_levels = sorted({_label(v) for v in df[y_key]},
                          key=lambda s: (s != "none", float(s) if _is_num(s) else math.inf, s))
    panels: dict[str, dict[str, tuple[list, list]]] = {}
    for _, r in df.iterrows():
        if lr_key not in df.columns or py(r[lr_key]) is None:
            continue
        title = " / ".join(_label(r[k]) for k in panel_keys) or "all trials"
        y = y_levels.index(_label(r[y_key])) if y_levels else 0
        xs, ys = panels.setdefault(title, {}).setdefault(r[VERDICT], ([], []))
        xs.append(float(r[lr_key]))
        ys.append(y)
    bounds = {}
    for title, by_verdict in panels.items():
        stable, diverged = by_verdict.get(STABLE, ([], [])), by_verdict.get(DIVERGED, ([], []))
        rows = {}
        for y in set(stable[1]) & set(diverged[1]):
            rows[y] = (max(x for x, yy in zip(*stable) if yy == y), min(x for x, yy in zip(*diverged) if yy == y))
        if rows:
            bounds[title] = rows
    return RegionInfo(panels=dict(sorted(panels.items())), y_levels=y_levels or [""],
                      y_label="gradient clip (max_grad_norm)" if y_levels and y_key == CLIP_KEY else y_key,
                      panel_keys=panel_keys, lr_key=lr_key, bounds=bounds)


def lr_limits(infos: list[RegionInfo]) -> tuple[float, float] | None:
    """One lr range for several region figures (a factor 1.5 of room on either side), so that
    they share the lr axis; None when none has a point."""
    lrs = [x for info in infos for by_verdict in info.panels.values() for xs, _ in by_verdict.values() for x in xs
           if x > 0]
    return (min(lrs) / 1.5, max(lrs) * 1.5) if lrs else None


def plot_region(info: RegionInfo, path: str | Path, title: str | None = None,
                lr_limits: tuple[float, float] | None = None) -> Path:
    plt = _matplotlib()
    n = max(1, len(info.panels))
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    legend_w = 2.0  # inches on the right for the legend
    width = 4.2 * cols + legend_w
    fig, axes = plt.subplots(rows, cols, figsize=(width, 2.2 + 0.35 * len(info.y_levels) * rows),
                             squeeze=False, sharex=True)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (panel, by_verdict) in zip(axes.flat, info.panels.items() or [("no trials", {})]):
        for y, (stable, diverged) in info.bounds.get(panel, {}).items():
            ax.fill_betweenx([y - 0.4, y + 0.4], min(stable, diverged), max(stable, diverged), color=BOUNDARY,
                             alpha=0.3, lw=0, label="boundary (max stable\nto min diverged lr)")
        for verdict, (xs, ys) in by_verdict.items():
            jitter = [y + 0.12 * ((i % 5) - 2) / 2 for i, y in enumerate(ys)]
            ax.scatter(xs, jitter, marker=MARKERS.get(verdict, "o"), s=36, alpha=0.85, label=verdict,
                       **_colour(verdict))
        ax.set_xscale("log")
        if lr_limits:
            ax.set_xlim(*lr_limits)
        ax.set_yticks(range(len(info.y_levels)))
        ax.set_yticklabels(info.y_levels)
        ax.set_ylim(-0.6, len(info.y_levels) - 0.4)
        ax.set_title(panel, fontsize=9)
        ax.grid(True, which="major", axis="x", alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel(f"{info.lr_key} (log)")
    for ax in axes[:, 0]:
        ax.set_ylabel(info.y_label)
    handles = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="center right", fontsize=8, frameon=False)
    keys = " x ".join(k.rsplit(".", 1)[-1] for k in info.panel_keys)
    what = f"Verdict by lr and clipping{', a panel per ' + keys if keys else ''}"
    fig.suptitle(f"{title}\n{what[0].lower()}{what[1:]}" if title else what, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - legend_w / width, 0.9 if title else 0.95))
    return _save(plt, fig, path)


# ---- lr against the objective ----------------------------------------------------------------------

@dataclass
class ObjectiveInfo:
    series: dict[str, tuple[list[float], list[float]]]  # verdict -> (lrs, objectives)
    lr_key: str


def objective_data(df: pd.DataFrame, lr_key: str = LR_KEY) -> ObjectiveInfo:
    """Each trial with an lr and a finite objective as a point, grouped by verdict."""
    out: dict[str, tuple[list, list]] = {}
    if lr_key in df.columns:
        for _, r in df.iterrows():
            lr, obj = py(r[lr_key]), py(r.get(OBJECTIVE))
            if lr is None or obj is None or not math.isfinite(float(obj)):
                continue
            xs, ys = out.setdefault(r[VERDICT], ([], []))
            xs.append(float(lr))
            ys.append(float(obj))
    return ObjectiveInfo(series=out, lr_key=lr_key)


def plot_lr_objective(info: ObjectiveInfo, path: str | Path) -> Path:
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    labels = {STABLE: "stable (final objective)", STALLED: "stalled (final objective, did not train)",
              DIVERGED: "diverged (initial loss, stand-in)", PRUNED: "pruned (objective when stopped)",
              ERROR: "error"}
    for verdict in (STABLE, STALLED, PRUNED, DIVERGED, ERROR):
        if verdict not in info.series:
            continue
        xs, ys = info.series[verdict]
        ax.scatter(xs, ys, marker=MARKERS[verdict], s=40 if verdict == DIVERGED else 30,
                   alpha=0.85, label=labels[verdict], **_colour(verdict))
    if DIVERGED in info.series:
        ax.axvline(min(info.series[DIVERGED][0]), color=COLORS[DIVERGED], ls="--", lw=0.8,
                   label="smallest diverged lr")
    ax.set_xscale("log")
    ax.set_xlabel(f"{info.lr_key} (log)")
    ax.set_ylabel("objective (lower is better)")
    ax.set_title("lr against objective")
    ax.grid(True, alpha=0.3)
    if info.series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(plt, fig, path)


# ---- parallel coordinates ----------------------------------------------------------------------------

@dataclass
class ParallelAxis:
    key: str
    kind: str  # log | linear | categorical
    ticks: list[tuple[float, str]]  # (position in [0, 1], label)


@dataclass
class ParallelInfo:
    axes: list[ParallelAxis]
    lines: list[tuple[str, list[float | None]]]  # one a trial: (verdict, its position on each axis)


def parallel_data(table: pd.DataFrame, keys: list[str], lr_key: str | None = LR_KEY) -> ParallelInfo:
    """Per axis (a column of `keys` that `table` has) its kind and tick labels, and each trial's
    position on it in [0, 1] (None: no value). lr and the objective are numeric axes, as is any
    numeric column with more than 6 values (log when it spans 100x or more); the rest categorical,
    its levels in value order."""
    axes, positions = [], []
    for k in keys:
        if k not in table.columns:
            continue
        vals = [py(v) for v in table[k]]
        present = [v for v in vals if v is not None]
        nums = [v for v in present if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if nums and len(nums) == len(present) and (k in (lr_key, OBJECTIVE) or len(set(nums)) > 6):
            lo, hi = min(nums), max(nums)
            log = lo > 0 and hi / lo >= 100
            f = math.log10 if log else (lambda x: x)
            a, b = f(lo), f(hi)
            pos = [None if v is None else (0.5 if b == a else (f(v) - a) / (b - a)) for v in vals]
            shown = sorted(set(nums)) if len(set(nums)) <= 6 else [lo, hi]
            fmt = lr_text if log or k == lr_key else num_text
            axes.append(ParallelAxis(k, "log" if log else "linear",
                                     [(0.5 if b == a else (f(v) - a) / (b - a), fmt(v)) for v in shown]))
        else:
            levels = sorted({value_text(v) for v in vals}, key=text_order)
            n = len(levels)
            where = {lv: (0.5 if n == 1 else i / (n - 1)) for i, lv in enumerate(levels)}
            pos = [where[value_text(v)] for v in vals]
            axes.append(ParallelAxis(k, "categorical", [(where[lv], lv) for lv in levels]))
        positions.append(pos)
    lines = [(str(v), [p[i] for p in positions]) for i, v in enumerate(table[VERDICT])]
    return ParallelInfo(axes=axes, lines=lines)


def plot_parallel(info: ParallelInfo, path: str | Path, title: str = "Stable vs diverged trials") -> Path:
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.7 * max(2, len(info.axes))), 4.2))
    order = {PRUNED: 0, STABLE: 2, DIVERGED: 3}  # drawn last: on top
    seen = set()
    for verdict, ys in sorted(info.lines, key=lambda line: order.get(line[0], 1)):
        pts = [(i, y) for i, y in enumerate(ys) if y is not None]
        if not pts:
            continue
        faded = verdict not in (STABLE, DIVERGED)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=COLORS.get(verdict, "#1f77b4"),
                alpha=0.35 if faded else 0.75, lw=1.6, ls="--" if verdict == PRUNED else "-",
                label=None if verdict in seen else verdict, marker="o", ms=3)
        seen.add(verdict)
    for i, a in enumerate(info.axes):
        ax.axvline(i, color="#444", lw=0.8)
        for y, text in a.ticks:
            ax.text(i + 0.04, y, text, fontsize=7, va="center", ha="left", color="#222",
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7})
    ax.set_xticks(range(len(info.axes)))
    ax.set_xticklabels([short_key(a.key) + (" (log)" if a.kind == "log" else "") for a in info.axes], fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(info.axes) - 0.5)
    ax.set_ylim(-0.08, 1.08)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    if seen:
        ax.legend(fontsize=8, loc="upper right", bbox_to_anchor=(1.0, 1.15), ncol=len(seen), frameon=False)
    ax.set_title(title, fontsize=10, loc="left")
    fig.tight_layout()
    return _save(plt, fig, path)


# ---- small helpers ---------------------------------------------------------------------------------

def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _colour(verdict: str) -> dict:
    c = COLORS.get(verdict, "#1f77b4")
    return {"facecolors": "none", "edgecolors": c} if verdict == PRUNED else {"color": c}


def _label(v: Any) -> str:
    v = py(v)
    return "none" if v is None else str(v)


def _is_num(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


# ---- the boundary as a probability: P(fails | lr) per setting (the ramp with --replicates) ------------

@dataclass
class BoundaryInfo:
    panels: list[dict]  # per setting: label, points [(lr, failures, runs)], curve ([lr], [p]), lr_at_risk, lr_at_50


def boundary_data(labels: list[str], fits: list[tuple]) -> BoundaryInfo:
    """Per setting, the observed failure fraction at each lr (the replicates) and the fitted
    curve; `fits`: what `boundary.fit_boundary` returned for each setting."""
    import numpy as np

    panels = []
    for label, (b, fit) in zip(labels, fits):
        points = [(e["lr"], e["failures"], e["runs"]) for e in b.evidence]
        curve = ([], [])
        if fit is not None and points:
            lrs = np.geomspace(min(p[0] for p in points) / 2, max(p[0] for p in points) * 2, 60)
            curve = (lrs.tolist(), [float(v) for v in fit.p_fail(lrs)])
        panels.append({"label": label, "points": points, "curve": curve, "lr_at_risk": b.lr_at_risk,
                       "lr_at_50": b.lr_at_50, "risk": b.risk, "note": b.note})
    return BoundaryInfo(panels)


def plot_boundary(info: BoundaryInfo, path: str | Path, budget: int | None = None) -> Path:
    plt = _matplotlib()
    n = max(1, len(info.panels))
    fig, axes = plt.subplots(n, 1, figsize=(6.4, 2.6 * n), squeeze=False)
    for ax, panel in zip(axes.flat, info.panels or [{"label": "no settings", "points": [], "curve": ([], [])}]):
        if panel["points"]:
            lrs, fails, runs = zip(*panel["points"])
            ax.scatter(lrs, [f / r for f, r in zip(fails, runs)], s=[20 + 12 * r for r in runs],
                       color=COLORS[DIVERGED], alpha=0.8, label="failed fraction (size: runs)", zorder=3)
        if panel["curve"][0]:
            ax.plot(*panel["curve"], color="k", lw=1.2, label="fitted P(fails | lr)")
        for key, ls, name in (("lr_at_risk", "--", f"lr at {100 * panel.get('risk', 0.05):.0f}% risk"),
                              ("lr_at_50", ":", "lr at 50%")):
            if panel.get(key):
                ax.axvline(panel[key], color=COLORS[STABLE], ls=ls, lw=1.0, label=name)
        ax.set_xscale("log")
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel("P(fails)")
        ax.set_title(panel["label"] + (f" ({panel['note']})" if panel.get("note") else ""), fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes.flat[-1].set_xlabel("learning rate (log)" + (f"; budget {budget} steps" if budget else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# ---- the ramp: each setting's probes on a log-lr axis ----------------------------------------------

@dataclass
class RampInfo:
    rows: list[dict]  # per setting: label, probes [(lr, verdict, bisection?)], bracket (lo, hi) or None, recommended
    budget: int


def ramp_data(labels: list[str], probes: list[list[tuple[float, str, str]]], summary: list[dict],
              budget: int) -> RampInfo:
    """Per setting (`labels`), its probes as (lr, verdict, phase) and its row of the ramp's summary
    (max_stable_lr, min_failed_lr, recommended_lr)."""
    rows = []
    for label, tested, x in zip(labels, probes, summary):
        bracket = (x["max_stable_lr"], x["min_failed_lr"]) if x["max_stable_lr"] and x["min_failed_lr"] else None
        rows.append({"label": label, "probes": [(lr, verdict, phase == "bisect") for lr, verdict, phase in tested],
                     "bracket": bracket, "recommended": x["recommended_lr"] or None})
    return RampInfo(rows, budget)


def plot_ramp(info: RampInfo, path: str | Path) -> Path:
    plt = _matplotlib()
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(9.5, 0.6 * len(info.rows) + 1.6))
    for i, row in enumerate(info.rows):
        for lr, verdict, bisection in row["probes"]:
            ax.scatter(lr, i, color=COLORS.get(verdict, "k"), marker="D" if bisection else "o", s=36, zorder=3)
        if row["bracket"]:
            ax.plot(row["bracket"], [i, i], color="k", lw=3, alpha=0.4, zorder=2)
        if row["recommended"]:
            ax.scatter(row["recommended"], i, marker="*", color="tab:blue", s=110, zorder=4)
    ax.set_xscale("log")
    ax.set_yticks(range(len(info.rows)), [row["label"] for row in info.rows])
    ax.set_xlabel("learning rate")
    ax.set_title(f"lr ramp: probes per setting (budget {info.budget} steps)")
    seen = {verdict for row in info.rows for _, verdict, _ in row["probes"]}
    handles = [Line2D([], [], marker="o", ls="", color=c, label=v) for v, c in COLORS.items() if v in seen]
    handles.append(Line2D([], [], marker="D", ls="", color="k", label="bisection probe"))
    handles.append(Line2D([], [], marker="*", ls="", color="tab:blue", markersize=10, label="recommended"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.grid(True, which="both", axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(plt, fig, path)


# ---- the ramp across budgets: each setting's bracket and 5%-risk lr against the step budget ---------

@dataclass
class BudgetInfo:
    panels: list[dict]  # per setting: label, rows [(budget, max stable, min failed, lr at 5% risk)], extrapolated
    target: int


def budget_data(labels: list[str], trends: list[list[dict]], target: int,
                extrapolated: list[dict | None] | None = None) -> BudgetInfo:
    """Per setting, its rungs' answers (`ramp_outputs.trend`) as plain rows, and the extrapolated
    edge at the target where the target was out of reach."""
    panels = []
    for i, (label, rows) in enumerate(zip(labels, trends)):
        panels.append({"label": label, "rows": [(r["budget_steps"], r["max_stable_lr"], r["min_failed_lr"],
                                                 r.get("lr_at_5pct_risk")) for r in rows],
                       "extrapolated": (extrapolated or [None] * len(labels))[i]})
    return BudgetInfo(panels, target)


def plot_budgets(info: BudgetInfo, path: str | Path) -> Path:
    plt = _matplotlib()
    n = max(1, len(info.panels))
    fig, axes = plt.subplots(n, 1, figsize=(6.4, 2.6 * n), squeeze=False)
    for ax, panel in zip(axes.flat, info.panels or [{"label": "no settings", "rows": [], "extrapolated": None}]):
        rows = panel["rows"]
        for j, (name, colour, marker) in enumerate((("max stable lr", COLORS[STABLE], "o"),
                                                    ("min failed lr", COLORS[DIVERGED], "v"),
                                                    ("lr at 5% risk", "k", "s")), start=1):
            pts = [(r[0], r[j]) for r in rows if r[j]]
            if pts:
                ax.plot(*zip(*pts), marker=marker, color=colour, lw=1.0, label=name)
        lo = [(r[0], r[1]) for r in rows if r[1] and r[2]]
        if lo:
            ax.fill_between([r[0] for r in rows if r[1] and r[2]], [r[1] for r in rows if r[1] and r[2]],
                            [r[2] for r in rows if r[1] and r[2]], color="0.85", label="bracket")
        ex = panel.get("extrapolated")
        if ex and ex.get("lr_at_target"):
            ax.plot([ex["from_steps"], info.target], [ex["lr_from"], ex["lr_at_target"]], ls="--", color="k", lw=0.8,
                    label=f"extrapolated (power law, exponent {ex['exponent']:.2f})")
        ax.axvline(info.target, color="0.4", ls=":", lw=1.0, label=f"target {info.target} steps")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylabel("learning rate (log)")
        ax.set_title(panel["label"], fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes.flat[-1].set_xlabel("step budget (log)")
    fig.tight_layout()
    return _save(plt, fig, path)
