"""Figures of the stable region (matplotlib, Agg). Each builds plain data first, then renders.

- `plot_region`: lr (log axis) against gradient clipping, coloured by verdict, a panel per
  precision x masking: where training is stable and where it blows up.
- `plot_lr_objective`: lr against the objective; diverged trials marked (at their stand-in,
  the initial loss), pruned ones hollow.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

COLORS = {"stable": "#2ca02c", "diverged": "#d62728", "pruned": "#7f7f7f", "error": "#000000"}
MARKERS = {"stable": "o", "diverged": "X", "pruned": "o", "error": "s"}
CLIP_KEY = "training.max_grad_norm"
PANEL_KEYS = ("training.precision", "loss.masking")


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _val(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v.item() if hasattr(v, "item") else v


def _label(v: Any) -> str:
    v = _val(v)
    return "none" if v is None else str(v)


def region_data(df: pd.DataFrame, lr_key: str = "training.lr", y_key: str = CLIP_KEY,
                panel_keys: tuple[str, ...] = PANEL_KEYS) -> dict:
    """Plain data for `plot_region`: panels -> verdict -> (lrs, y positions); y tick labels."""
    panel_keys = tuple(k for k in panel_keys if k in df.columns)
    y_levels = []
    if y_key in df.columns:
        y_levels = sorted({_label(v) for v in df[y_key]},
                          key=lambda s: (s != "none", float(s) if _is_num(s) else math.inf, s))
    panels: dict[str, dict[str, tuple[list, list]]] = {}
    for _, r in df.iterrows():
        if lr_key not in df.columns or _val(r[lr_key]) is None:
            continue
        title = " / ".join(_label(r[k]) for k in panel_keys) or "all trials"
        y = y_levels.index(_label(r[y_key])) if y_levels else 0
        xs, ys = panels.setdefault(title, {}).setdefault(r["verdict"], ([], []))
        xs.append(float(r[lr_key]))
        ys.append(y)
    return {"panels": dict(sorted(panels.items())), "y_levels": y_levels or [""],
            "y_label": "gradient clip (max_grad_norm)" if y_levels and y_key == CLIP_KEY else y_key,
            "panel_keys": panel_keys, "lr_key": lr_key}


def plot_region(df: pd.DataFrame, path: str | Path, lr_key: str = "training.lr", y_key: str = CLIP_KEY,
                panel_keys: tuple[str, ...] = PANEL_KEYS) -> Path:
    data = region_data(df, lr_key, y_key, panel_keys)
    plt = _matplotlib()
    n = max(1, len(data["panels"]))
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.2 + 0.35 * len(data["y_levels"]) * rows),
                             squeeze=False, sharex=True)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (title, by_verdict) in zip(axes.flat, data["panels"].items() or [("no trials", {})]):
        for verdict, (xs, ys) in by_verdict.items():
            jitter = [y + 0.12 * ((i % 5) - 2) / 2 for i, y in enumerate(ys)]
            ax.scatter(xs, jitter, marker=MARKERS.get(verdict, "o"), s=36, alpha=0.85, label=verdict,
                       **_colour(verdict))
        ax.set_xscale("log")
        ax.set_yticks(range(len(data["y_levels"])))
        ax.set_yticklabels(data["y_levels"])
        ax.set_ylim(-0.6, len(data["y_levels"]) - 0.4)
        ax.set_title(title, fontsize=9)
        ax.grid(True, which="major", axis="x", alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel(f"{lr_key} (log)")
    for ax in axes[:, 0]:
        ax.set_ylabel(data["y_label"])
    handles = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="upper right", fontsize=8)
    keys = " x ".join(k.rsplit(".", 1)[-1] for k in data["panel_keys"])
    fig.suptitle(f"Verdict by lr and clipping{', a panel per ' + keys if keys else ''}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.92, 0.95))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def objective_data(df: pd.DataFrame, lr_key: str = "training.lr") -> dict:
    out: dict[str, tuple[list, list]] = {}
    if lr_key not in df.columns:
        return {"series": out, "lr_key": lr_key}
    for _, r in df.iterrows():
        lr, obj = _val(r[lr_key]), _val(r.get("objective"))
        if lr is None or obj is None or not math.isfinite(float(obj)):
            continue
        xs, ys = out.setdefault(r["verdict"], ([], []))
        xs.append(float(lr))
        ys.append(float(obj))
    return {"series": out, "lr_key": lr_key}


def plot_lr_objective(df: pd.DataFrame, path: str | Path, lr_key: str = "training.lr") -> Path:
    data = objective_data(df, lr_key)
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    labels = {"stable": "stable (final objective)", "diverged": "diverged (initial loss, stand-in)",
              "pruned": "pruned (objective when stopped)", "error": "error"}
    for verdict in ("stable", "pruned", "diverged", "error"):
        if verdict not in data["series"]:
            continue
        xs, ys = data["series"][verdict]
        ax.scatter(xs, ys, marker=MARKERS[verdict], s=40 if verdict == "diverged" else 30,
                   alpha=0.85, label=labels[verdict], **_colour(verdict))
    if "diverged" in data["series"]:
        ax.axvline(min(data["series"]["diverged"][0]), color=COLORS["diverged"], ls="--", lw=0.8,
                   label="smallest diverged lr")
    ax.set_xscale("log")
    ax.set_xlabel(f"{lr_key} (log)")
    ax.set_ylabel("objective (lower is better)")
    ax.set_title("lr against objective")
    ax.grid(True, alpha=0.3)
    if data["series"]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _colour(verdict: str) -> dict:
    c = COLORS.get(verdict, "#1f77b4")
    return {"facecolors": "none", "edgecolors": c} if verdict == "pruned" else {"color": c}


def _is_num(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False
