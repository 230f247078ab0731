"""The report of `stablesweep compare` as files (`write_report`: every format, the tables, the JSON
and the figures) and as a run of kind `compare` in MLflow (`log_report`, through
`stablesweep.tracking`). report.html holds its figures (data: URIs): it needs no other file, so
it shows them wherever it is opened, MLflow's sandboxed artifact view included."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pandas as pd

from stablesweep.analysis import render
from stablesweep.analysis.comparison import Comparison, SweepData
from stablesweep.analysis.plots import (
    CLIP_KEY,
    PANEL_KEYS,
    lr_limits,
    parallel_data,
    plot_parallel,
    plot_region,
    region_data,
)
from stablesweep.tracking import DEFAULT_EXPERIMENT, Tracker, TrackingError
from stablesweep.vocab import LR_KEY, OBJECTIVE, SETTING_METRICS, STABLE, VERDICT, VERDICTS, InputError


def write_report(cmp: Comparison, sweeps: list[SweepData], out: str | Path, *, figures: bool = True
                 ) -> dict[str, Path]:
    """report.{txt,md,html}, configs.csv, settings.csv, changes.csv, compare.json, answers.csv (each
    setting's answer per run, where several runs share a config file) and figures/:
    parallel.png (all trials of all sweeps, stable vs diverged) and region_<sweep>.png (the
    sweep's region panels, as `stablesweep sweep` draws them, titled with the sweep, on one lr
    axis for all sweeps)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    if figures:
        files.update(_figures(cmp, sweeps, out / "figures"))
    figs = figure_sources(files, out)
    for key, name, text in (("txt", "report.txt", render.to_text(cmp)),
                            ("md", "report.md", render.to_markdown(cmp, figs)),
                            ("html", "report.html", render.to_html(cmp, figs)),
                            ("csv", "configs.csv", render.to_csv(cmp))):
        files[key] = out / name
        files[key].write_text(text)
    files["settings"] = out / "settings.csv"
    cmp.settings_table().to_csv(files["settings"], index=False)
    files["changes"] = out / "changes.csv"
    cmp.changes_table().to_csv(files["changes"], index=False)
    files["answers"] = out / "answers.csv"
    pd.DataFrame([r for ca in cmp.by_config for r in ca.records()],
                 columns=["config_file", "setting", "run", "kind", "run_id", "budget_steps", *SETTING_METRICS]
                 ).to_csv(files["answers"], index=False)
    files["json"] = out / "compare.json"
    files["json"].write_text(json.dumps(cmp.to_dict(), indent=2, default=str) + "\n")
    return files


def figure_sources(files: dict[str, Path], out: str | Path) -> dict[str, str]:
    """The figures among `files`: each path relative to `out` (the parallel coordinates first) ->
    the PNG as a data: URI."""
    out = Path(out)
    names = sorted((str(p.relative_to(out)) for k, p in files.items() if k.startswith("figure_")),
                   key=lambda n: (not n.endswith("parallel.png"), n))
    return {n: "data:image/png;base64," + base64.b64encode((out / n).read_bytes()).decode("ascii") for n in names}


def _figures(cmp: Comparison, sweeps: list[SweepData], fig_dir: Path) -> dict[str, Path]:
    fig_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    every, regions = [], {}
    for s in sweeps:
        t = s.trials.copy()
        for k in (*cmp.param_keys, CLIP_KEY, *PANEL_KEYS):  # fixed ones from its config, for the panels
            if k not in t.columns:
                t[k] = [s.config.get(k)] * len(t) if len(t) else pd.Series(dtype=object)
        t.insert(0, "sweep", s.label)
        every.append(t)
        regions[s.label] = region_data(t[t[VERDICT].isin(VERDICTS)], lr_key=s.lr_key or LR_KEY)
    limits = lr_limits(list(regions.values()))
    for label, info in regions.items():
        kind = next(s.kind for s in sweeps if s.label == label)
        files[f"figure_region_{label}"] = plot_region(info, fig_dir / f"region_{_slug(label)}.png",
                                                      title=f"{kind} {label}", lr_limits=limits)
    table = pd.concat(every, ignore_index=True) if every else pd.DataFrame(columns=[VERDICT])
    table = table[table[VERDICT].isin(VERDICTS)]
    keys = (["sweep"] if len(sweeps) > 1 else []) + list(cmp.setting_keys) + \
        [k for k in cmp.param_keys if k not in cmp.setting_keys] + [OBJECTIVE]
    files["figure_parallel"] = plot_parallel(
        parallel_data(table, keys, lr_key=cmp.lr_key), fig_dir / "parallel.png",
        title="Trials of " + ", ".join(s.label for s in sweeps)
        + ": stable vs diverged (objective: diverged at initial loss)")
    return files


def log_report(cmp: Comparison, files: dict[str, Path], out: str | Path, uri: str, experiment: str | None = None
               ) -> str:
    """The report as a run of kind `compare` in MLflow: its files as artifacts (figures under
    figures/), the markdown as the run's description, the compared sweeps as tags."""
    out = Path(out)
    labels = [s.label for s in cmp.sweeps]
    name = "compare " + (" vs ".join(labels) if len(labels) <= 3 else f"{labels[0]} .. {labels[-1]} "
                                                                       f"({len(labels)} sweeps)")
    top_files = [p for k, p in files.items() if not k.startswith("figure_")]
    if (out / "figures").is_dir():
        top_files.append(out / "figures")
    tags = {"stablesweep.compared": ",".join(labels)[:5000],
            "stablesweep.compared_runs": ",".join(s.run_id for s in cmp.sweeps)[:5000]}
    if len(cmp.transitions) == 1:
        for what in ("became stable", "became unstable"):
            got = cmp.transitions[0].became(what)
            if got:
                tags[f"stablesweep.{what.replace(' ', '_')}"] = "; ".join(got)[:5000]
    params = {"sweeps": ",".join(labels), "by": cmp.by, "only": cmp.only or "", "top": cmp.top or ""}
    n = len(cmp.configs)
    metrics = {"configs": float(n),
               "stable_configs": float((cmp.configs[VERDICT] == STABLE).sum()) if n else 0.0}
    try:
        return Tracker(uri, experiment or DEFAULT_EXPERIMENT).log_report(
            name, params, tags, top_files, metrics=metrics, note=render.to_markdown(cmp))
    except TrackingError as e:
        raise InputError(f"--mlflow {uri}: cannot log the report: {e}") from None


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_") or "sweep"
