"""A `Comparison` as text: a terminal table, markdown, CSV or an HTML page. Strings only:
`analysis.report` writes them.

Figures come as a mapping of each figure's path relative to the report to its source: markdown
links the path, HTML shows the source (`analysis.report` gives data: URIs, so the page needs no
other file and shows its figures wherever it is opened, MLflow's sandboxed artifact view
included). With `Comparison.ui` set, run names and ids link to their pages in that MLflow UI."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Callable, Iterable, Mapping

from stablesweep.analysis.answers_by_config import FROM_CHILDREN, ConfigAnswers
from stablesweep.analysis.comparison import Comparison
from stablesweep.analysis.text import lr_text, md_table, num_text, text_table, value_text
from stablesweep.tracking import run_link
from stablesweep.vocab import (
    BUDGET_STEPS,
    DIVERGED,
    OBJECTIVE,
    REASON,
    STEPS,
    UNFINISHED,
    VERDICT,
    VERDICTS,
    InputError,
    finite,
    py,
    short_key,
)

FORMATS = ("table", "md", "csv", "html")


def render(cmp: Comparison, fmt: str, figures: Mapping[str, str] | None = None) -> str:
    """`cmp` in one of FORMATS (figures, path -> source: md and html only)."""
    figures = figures or {}
    if fmt == "table":
        return to_text(cmp)
    if fmt == "md":
        return to_markdown(cmp, figures)
    if fmt == "csv":
        return to_csv(cmp)
    if fmt == "html":
        return to_html(cmp, figures)
    raise InputError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")


def to_text(cmp: Comparison) -> str:
    out = [f"Compare: {len(cmp.sweeps)} sweep(s)" + (f" from {cmp.source}" if cmp.source else ""), ""]
    out += ["  " + ln for ln in _header_lines(cmp)]
    out += ["", "Per sweep and setting (the boundary lies between max stable lr and min failed lr):", ""]
    out.append(_indent(text_table(*_settings_cells(cmp))))
    out += ["", f"  {_settings_note(cmp)}"]
    if cmp.by_config:
        out += ["", f"Answers by config: {ANSWERS_INTRO}"]
    for ca in cmp.by_config:
        out += ["", f"  {ca.config_file}:"]
        out.append(_indent(_grouped_text(*_answers_cells(ca)), 4))
        out += [f"    differs: {f}" for f in ca.flags] + [f"    agree: {a}" for a in ca.agreements]
    out += ["", f"Configurations: {_ranking_line(cmp)}. `*` after a value: differs from the first row; "
                "after a column name: differs among the rows. margin = lr / smallest diverged lr of its "
                "setting.", ""]
    head, rows = _configs_cells(cmp, lambda s: s + "*")
    out.append(_indent(text_table(head, rows)) if rows else "  (no trials)")
    for t in cmp.transitions:
        out += ["", f"Changes {t.before} -> {t.after}:"]
        if t.config_diff:
            out.append("  base configs differ in: " + "; ".join(
                f"{k}: {value_text(a)} -> {value_text(b)}" for k, (a, b) in t.config_diff.items()))
        for c in t.settings:
            line = f"  {c.label}: {c.change}"
            if c.before and c.after:
                line += f"  [{c.before.describe()} -> {c.after.describe()}]"
            if c.note:
                line += f"  note: {c.note}"
            out.append(line)
        out.append("  " + t.summary())
    return "\n".join(out) + "\n"


def to_markdown(cmp: Comparison, figures: Iterable[str] = ()) -> str:
    """Markdown; `figures`: paths relative to the report."""
    def link(text: str, url: str) -> str:
        return f"[{text}]({url})"

    out = ["# Sweep comparison", ""]
    if cmp.source:
        out += [f"Read from {cmp.source}.", ""]
    if cmp.ui:
        out += [f"Run names and ids link to their pages in the MLflow UI at {cmp.ui}.", ""]
    out += ["## Sweeps", ""]
    out += [f"- **{ln.split(' ', 1)[0]}** {ln.split(' ', 1)[1]}" for ln in _header_lines(cmp, link)]
    out += ["", "Every verdict holds for the sweep's step budget: a run stable for that many steps may still "
                "diverge later.", "", "## Per sweep and setting", ""]
    out += md_table(*_settings_cells(cmp))
    ranking = _ranking_line(cmp)
    out += ["", "The boundary lies between *max stable lr* and *min failed lr*. " + _settings_note(cmp)
            + " LR sensitivity (Wortsman et al. 2023): mean over the sampled lrs of min(final loss, initial loss) "
              "minus the best final loss; a diverged trial counts as its initial loss."]
    if cmp.by_config:
        out += ["", "## Answers by config", "", ANSWERS_INTRO[0].upper() + ANSWERS_INTRO[1:]]
    for ca in cmp.by_config:
        groups, head, rows = _answers_cells(ca)
        named, i = [head[0]], 1
        for label, n in groups:
            named += [f"{label}: {h}" for h in head[i:i + n]]
            i += n
        out += ["", f"### `{ca.config_file}`", ""] + md_table(named, rows)
        out += [""] + [f"- **differs**: {f}" for f in ca.flags] + [f"- agree: {a}" for a in ca.agreements]
    out += ["", "## Configurations", "",
            f"{ranking[0].upper()}{ranking[1:]}. **Bold**: differs from the first row; "
            "`*` after a column name: differs among the rows. margin = lr / smallest diverged lr of its "
            "setting (blank: nothing diverged there).", ""]
    head, rows = _configs_cells(cmp, lambda s: f"**{s}**", link)
    out += md_table(head, rows) if rows else ["(no trials)"]
    for t in cmp.transitions:
        out += ["", f"## Changes {t.before} -> {t.after}", ""]
        if t.config_diff:
            out += ["Base configs differ in: " + "; ".join(f"`{k}`: {value_text(a)} -> {value_text(b)}"
                                                           for k, (a, b) in t.config_diff.items()), ""]
        rows = [[c.label, f"**{c.change}**" if c.change.startswith("became") else c.change,
                 c.before.describe() if c.before else "-", c.after.describe() if c.after else "-", c.note]
                for c in t.settings]
        out += md_table(["setting", "change", t.before, t.after, "note"], rows)
        out += ["", t.summary()]
    figs = list(figures)
    if figs:
        out += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figs]
    return "\n".join(out) + "\n"


class _Html(str):
    """Text that is HTML already (not escaped again)."""


def to_html(cmp: Comparison, figures: Mapping[str, str] | None = None) -> str:
    """A page; `figures`: path relative to the report -> the image's source (a data: URI)."""
    def esc(text: str) -> str:
        return text if isinstance(text, _Html) else html.escape(text)

    def link(text: str, url: str) -> str:
        return _Html(f'<a href="{html.escape(url)}" target="_blank" rel="noopener">{html.escape(text)}</a>')

    def table(head: list[str], rows: list[list]) -> str:
        """A cell is a string, or (text, highlighted)."""
        th = "".join(f"<th>{esc(h)}</th>" for h in head)
        body = []
        for cells in rows:
            tds = []
            for c in cells:
                text, hi = c if isinstance(c, tuple) else (c, False)
                tds.append(f'<td class="diff"><b>{esc(text)}</b></td>' if hi else f"<td>{esc(text)}</td>")
            body.append("<tr>" + "".join(tds) + "</tr>")
        return f"<table>\n<thead><tr>{th}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"

    marker = "\x00"
    head, rows = _configs_cells(cmp, lambda s: marker + s, link)
    rows = [[(c[1:], True) if c.startswith(marker) else c for c in r] for r in rows]
    parts = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8"><title>Sweep comparison</title>',
             "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:.5em 0}"
             "th,td{border:1px solid #ccc;padding:3px 7px;font-size:13px;text-align:left}"
             "th{background:#f3f3f3}td.diff{background:#fff3b0}img{max-width:100%}</style></head><body>",
             "<h1>Sweep comparison</h1>"]
    if cmp.source:
        parts.append(f"<p>Read from {esc(cmp.source)}.</p>")
    if cmp.ui:
        parts.append(f"<p>Run names and ids link to their pages in the MLflow UI at {esc(cmp.ui)} (they do not "
                     "open inside MLflow's own view of this file, a sandboxed frame: open the file itself, or "
                     "the links in the report run's description).</p>")
    parts.append("<h2>Sweeps</h2>")
    st = cmp.sweeps_table()
    links = [_run_url(cmp, s.experiment_id, s.run_id) for s in cmp.sweeps]
    parts.append(table(list(st.columns), [[link(str(v), url) if c == "run_id" and url else value_text(v)
                                           for c, v in zip(st.columns, r)]
                                          for r, url in zip(st.itertuples(index=False), links)]))
    parts.append("<h2>Per sweep and setting</h2>")
    parts.append(table(*_settings_cells(cmp)))
    parts.append(f"<p>{esc(_settings_note(cmp))}</p>")
    if cmp.by_config:
        parts.append(f"<h2>Answers by config</h2><p>{esc(ANSWERS_INTRO[0].upper() + ANSWERS_INTRO[1:])}</p>")
    for ca in cmp.by_config:
        groups, a_head, a_rows = _answers_cells(ca)
        spans = "".join(f'<th colspan="{n}">{esc(label)}</th>' for label, n in groups)
        parts.append(f"<h3>{esc(ca.config_file)}</h3>\n<table>\n<thead><tr><th></th>{spans}</tr>\n<tr>"
                     + "".join(f"<th>{esc(h)}</th>" for h in a_head) + "</tr></thead>\n<tbody>\n"
                     + "\n".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in a_rows)
                     + "\n</tbody>\n</table>")
        items = [f"<li><b>differs</b>: {esc(f)}</li>" for f in ca.flags] + [f"<li>agree: {esc(a)}</li>"
                                                                            for a in ca.agreements]
        if items:
            parts.append("<ul>" + "".join(items) + "</ul>")
    parts.append(f"<h2>Configurations</h2><p>{esc(_ranking_line(cmp))}. Highlighted: differs from the first "
                 "row; <code>*</code> after a column name: differs among the rows. margin = lr / smallest "
                 "diverged lr of its setting.</p>")
    parts.append(table(head, rows))
    for t in cmp.transitions:
        parts.append(f"<h2>Changes {esc(t.before)} &rarr; {esc(t.after)}</h2>")
        if t.config_diff:
            parts.append("<p>Base configs differ in: " + esc("; ".join(
                f"{k}: {value_text(a)} -> {value_text(b)}" for k, (a, b) in t.config_diff.items())) + "</p>")
        parts.append(table(["setting", "change", t.before, t.after, "note"],
                           [[c.label, (c.change, c.change.startswith("became")),
                             c.before.describe() if c.before else "-", c.after.describe() if c.after else "-",
                             c.note] for c in t.settings]))
        parts.append(f"<p>{esc(t.summary())}</p>")
    if figures:
        parts.append("<h2>Figures</h2>")
        parts += [f'<p><img src="{esc(src)}" alt="{esc(Path(name).stem)}"></p>' for name, src in figures.items()]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def to_csv(cmp: Comparison) -> str:
    return cmp.configs_csv().to_csv(index=False)


# ---- the parts the formats share ------------------------------------------------------------------

def _run_url(cmp: Comparison, experiment_id: str, run_id) -> str | None:
    """The page of a run in `cmp.ui`, when there is a UI and the run is known."""
    run_id = py(run_id)
    if not (cmp.ui and experiment_id and isinstance(run_id, str) and run_id):
        return None
    return run_link(cmp.ui, experiment_id, run_id)


def _header_lines(cmp: Comparison, link: Callable[[str, str], str] | None = None) -> list[str]:
    lines = []
    for s in cmp.sweeps:
        c = s.counts
        url = _run_url(cmp, s.experiment_id, s.run_id) if link else None
        run = link(s.run_id, url) if url else s.run_id
        lines.append(f"{s.label} ({s.kind}, run {run}): {s.trials} trials, budget {s.budget_steps or '?'} "
                     f"steps: " + ", ".join(f"{v} {c.get(v, 0)}" for v in VERDICTS)
                     + (f", unfinished {c[UNFINISHED]}" if c.get(UNFINISHED) else "")
                     + f"; best objective {num_text(s.best_objective)}, lr sensitivity {num_text(s.lr_sensitivity)}")
    return lines


def _ranking_line(cmp: Comparison) -> str:
    what = f"{cmp.only} trials" if cmp.only else "trials (stable first)"
    by = "objective (lower first)" if cmp.by == OBJECTIVE else \
        "lr margin (lr / smallest diverged lr of its setting; most headroom first)"
    top = f", top {cmp.top}" if cmp.top else ""
    return f"{what}, ranked by {by}{top}"


# the lrs of a setting's answer in the settings table: (settings_table column, header)
_ANSWER_HEADS = (("max_stable_lr", "max stable lr"), ("min_diverged_lr", "min diverged lr"),
                 ("min_failed_lr", "min failed lr"), ("largest_safe_lr", "largest safe lr"),
                 ("recommended_lr", "recommended lr"))


def _settings_cells(cmp: Comparison) -> tuple[list[str], list[list[str]]]:
    t = cmp.settings_table()
    head = ["sweep", *[short_key(k) for k in cmp.setting_keys], *VERDICTS, *[h for _, h in _ANSWER_HEADS],
            "lr sensitivity", "best objective", "answer from"]
    rows = []
    for _, r in t.iterrows():
        rows.append([str(r["sweep"]), *[value_text(r[k]) for k in cmp.setting_keys],
                     *[str(int(r[v])) for v in VERDICTS], *[lr_text(r[c]) for c, _ in _ANSWER_HEADS],
                     num_text(r["lr_sensitivity"]), num_text(r["best_objective"]), str(r["answer_from"])])
    return head, rows


def _settings_note(cmp: Comparison) -> str:
    """Where the settings table's lrs come from, in a sentence."""
    text = ("The lrs are each run's own answer, as its parent run records it (the numbers of its "
            "stable_region.json or ramp.json); verdict counts leave out replicates and range tests.")
    old = cmp.recomputed()
    if old:
        text += (f" {', '.join(old)}: the parent records no per-setting answer (an older version), so its lrs "
                 f"are recomputed from its child runs (answer from: {FROM_CHILDREN}).")
    return text


ANSWERS_INTRO = ("where several sweeps and ramps ran one config file, each setting's answer side by side, "
                 "as each run's parent holds it (the numbers of its stable_region.json or ramp.json): the "
                 "budget in steps, then lrs: the largest stable, the smallest failed (diverged, or stalled "
                 "above the stable band), the largest safe (the recommended lr's cap), the recommended, "
                 "and the lr at 5% risk where replicates measured it.")


def _answers_cells(ca: ConfigAnswers) -> tuple[list[tuple[str, int]], list[str], list[list[str]]]:
    """The column groups (a run's heading, its number of columns), the header and the rows (a
    setting each) of one config's answers side by side."""
    groups, head = [], ["setting"]
    for r in ca.runs:
        cols = r.columns()
        groups.append((f"{r.label} ({r.kind})", 1 + len(cols)))
        head += ["budget", *[h for _, h in cols]]
    rows = []
    for s in ca.settings:
        row = [s]
        for r in ca.runs:
            cols = r.columns()
            row += ([str(r.budget_steps or "?"), *[lr_text(r.get(s, n)) for n, _ in cols]] if s in r.settings
                    else ["-"] * (1 + len(cols)))
        rows.append(row)
    return groups, head, rows


def _grouped_text(groups: list[tuple[str, int]], head: list[str], rows: list[list[str]]) -> str:
    """`text_table` under a line of group headings, each over its columns (after the first)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    i = 1
    for label, n in groups:  # a heading wider than its columns widens its last column
        span = sum(widths[i:i + n]) + 2 * (n - 1)
        widths[i + n - 1] += max(0, len(label) - span)
        i += n
    top, i = [" " * widths[0]], 1
    for label, n in groups:
        top.append(label.ljust(sum(widths[i:i + n]) + 2 * (n - 1)))
        i += n
    lines = ["  ".join(top).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]
    return "\n".join(lines)


def _configs_cells(cmp: Comparison, mark: Callable[[str], str], link: Callable[[str, str], str] | None = None
                   ) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the configs table; `mark(text)` highlights a cell that differs from the
    best row; a column whose values vary among the rows gets ` *` in its header; `link(text,
    url)`: the run's name as a link to its page (`Comparison.ui`)."""
    experiments = {s.label: s.experiment_id for s in cmp.sweeps}
    diff = cmp.diff_columns()
    cols = ["rank", "sweep", VERDICT, OBJECTIVE, *([cmp.lr_key] if cmp.lr_key else []), "margin",
            *[k for k in diff if k != cmp.lr_key], STEPS, "run"]
    head = [(short_key(c) if c in diff else c) + (" *" if c in cmp.varying else "") for c in cols]
    rows = []
    for _, r in cmp.configs.iterrows():
        cells = []
        for c in cols:
            if c == "run":
                text = str(r["name"])
                url = _run_url(cmp, experiments.get(r["sweep"], ""), r.get("run_id")) if link else None
                if url:
                    text = link(text, url)
            elif c == VERDICT:
                reason = py(r.get(REASON))
                text = str(r[VERDICT]) + (f" ({reason})" if r[VERDICT] == DIVERGED and reason else "")
            elif c == OBJECTIVE:
                text = num_text(r[c])
            elif c in ("margin", cmp.lr_key):
                text = lr_text(r[c])
            elif c == STEPS:
                steps, budget = finite(r.get(STEPS)), finite(r.get(BUDGET_STEPS))
                text = "-" if steps is None else f"{int(steps)}" + (f"/{int(budget)}" if budget else "")
            else:
                text = value_text(r[c])
            if c in r["differs_from_best"]:
                text = mark(text)
            cells.append(text)
        rows.append(cells)
    return head, rows


def _indent(text: str, n: int = 2) -> str:
    return "\n".join(" " * n + ln for ln in text.splitlines())
