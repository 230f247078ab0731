"""A Comparison as text, markdown, CSV and HTML (hand-built sweeps, no MLflow)."""
from __future__ import annotations

import io
import itertools
import re
from html.parser import HTMLParser

import pandas as pd
import pytest

from stablesweep.analysis.comparison import compare
from stablesweep.analysis.render import FORMATS, render, to_csv, to_html, to_markdown, to_text
from stablesweep.vocab import InputError
from tests.analysis.tables import BASE, sweep, two_sweeps

PNG = "data:image/png;base64,iVBORw0KGgo="


@pytest.fixture
def cmp():
    return compare(list(two_sweeps()), source="sqlite:///x.db (experiment <e>)")


def differing_cells(cmp) -> int:
    return int(cmp.configs["differs_from_best"].map(len).sum())


def test_text(cmp):
    text = to_text(cmp)
    lines = text.splitlines()
    assert lines[0] == "Compare: 2 sweep(s) from sqlite:///x.db (experiment <e>)"
    assert lines[2] == ("  a (sweep, run a-parent): 4 trials, budget 100 steps: stable 3, stalled 0, diverged 1, pruned 0, "
                        "error 0; best objective 1.001, lr sensitivity 0.502")
    head = next(ln for ln in lines if ln.lstrip().startswith("rank"))
    assert head.split() == ["rank", "sweep", "verdict", "objective", "lr", "*", "margin", "masking", "*", "clip",
                            "*", "steps", "*", "steps", "run"]
    rank2 = next(ln for ln in lines if ln.lstrip().startswith("2 "))
    assert rank2.split() == ["2", "a", "stable", "1.001", "1.00e-03", "1.00e-01", "neg_inf*", "1.0", "100",
                             "100/100", "lr=1.0e-03"]
    assert "  base configs differ in: training.steps: 100 -> 200" in lines
    assert "  masking=slice clip=1.0: became unstable  [stable (2 stable), stable up to lr 1.00e-02 -> unstable " \
           "(2 diverged), clip=1.0 fails at every lr tried (2 runs, lr 0.001..0.01): cause clip]" in lines
    assert lines[-1] == "  a -> b: became unstable: masking=slice clip=1.0"
    assert text.count("*") - head.count("*") == differing_cells(cmp) + 1  # + the legend's `*`


def test_markdown(cmp):
    md = to_markdown(cmp, ["figures/parallel.png", "figures/region_a.png"])
    assert md.startswith("# Sweep comparison\n\nRead from sqlite:///x.db (experiment <e>).\n")
    lines = md.splitlines()
    start = lines.index(next(ln for ln in lines if ln.startswith("| rank |")))
    table = list(itertools.takewhile(lambda ln: ln.startswith("|"), lines[start:]))
    assert len(table) == 2 + 7  # header, rule, a row a trial
    head_cells = table[0].count(" | ") + 1
    assert table[1] == "|" + "---|" * head_cells
    assert {ln.count(" | ") + 1 for ln in table[2:]} == {head_cells}
    # bold: the differing cells, the two sweep names, the legend's **Bold**, one "became"
    assert md.count("**") // 2 == differing_cells(cmp) + 2 + 1 + 1
    assert "| masking=slice clip=1.0 | **became unstable** |" in md
    assert md.rstrip().endswith("## Figures\n\n![parallel](figures/parallel.png)\n![region_a](figures/region_a.png)")
    assert "## Figures" not in to_markdown(cmp)


def test_csv_is_the_configs_table(cmp):
    got = pd.read_csv(io.StringIO(to_csv(cmp)))
    want = cmp.configs_csv()
    assert list(got.columns) == list(want.columns)
    assert got["rank"].tolist() == list(range(1, 8))
    assert got["differs_from_best"].fillna("").tolist() == want["differs_from_best"].tolist()
    assert got["training.lr"].tolist() == pytest.approx(want["training.lr"].tolist())


class Tags(HTMLParser):
    """Counts elements and checks that every opened element is closed, in order."""

    VOID = {"meta", "img", "br"}

    def __init__(self):
        super().__init__()
        self.open: list[str] = []
        self.count: dict[str, int] = {}
        self.diff_cells = 0
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.count[tag] = self.count.get(tag, 0) + 1
        if tag == "td" and ("class", "diff") in attrs:
            self.diff_cells += 1
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, (self.open, tag)
        self.open.pop()

    def handle_data(self, data):
        self.text.append(data)


def test_html_is_well_formed_escaped_and_highlights_the_differences(cmp):
    page = to_html(cmp, {"figures/parallel.png": PNG})
    assert page.startswith("<!DOCTYPE html>")
    tags = Tags()
    tags.feed(page)
    tags.close()
    assert tags.open == []
    assert tags.count["table"] == 4  # sweeps, settings, configs, changes a -> b
    assert tags.count["img"] == 1 and f'src="{PNG}" alt="parallel"' in page
    assert "<a " not in page  # no UI known: no links
    assert tags.diff_cells == differing_cells(cmp) + 1  # the differing cells, and "became unstable"
    assert "experiment &lt;e&gt;" in page and "<e>" not in page
    assert "Read from sqlite:///x.db (experiment <e>)." in "".join(tags.text)


def test_render_picks_the_format(cmp):
    figs = {"figures/parallel.png": PNG}
    assert [render(cmp, f, figs) for f in FORMATS] == [to_text(cmp), to_markdown(cmp, ["figures/parallel.png"]),
                                                       to_csv(cmp), to_html(cmp, figs)]
    with pytest.raises(InputError, match=r"^--format pdf: expected one of table, md, csv, html$"):
        render(cmp, "pdf")


def test_no_rows_to_show():
    empty = compare(list(two_sweeps()), only="pruned")
    assert "  (no trials)" in to_text(empty).splitlines()
    assert "(no trials)" in to_markdown(empty).splitlines()
    assert pd.read_csv(io.StringIO(to_csv(empty))).empty
    tags = Tags()
    tags.feed(to_html(empty))
    assert tags.open == [] and tags.diff_cells == 1  # only the change


def test_runs_link_to_their_pages_in_the_ui():
    """With a UI, every run name (configs) and sweep run id links to the run's page; a trial
    without a run id (never logged) is plain text."""
    a = sweep("a", [(1e-3, "stable", "slice"), (1e-2, "diverged", "slice")], BASE,
              ["training.lr", "loss.masking"], ["loss.masking"], experiment_id="7")
    a.trials.loc[1, "run_id"] = None
    cmp = compare([a], ui="http://127.0.0.1:5000")
    page = to_html(cmp)
    ui = "http://127.0.0.1:5000/#/experiments/7/runs"
    view = "?workflowType=machine_learning"
    links = re.findall(r'<a href="([^"]+)" target="_blank" rel="noopener">([^<]+)</a>', page)
    assert links == [(f"{ui}/a-parent{view}", "a-parent"), (f"{ui}/a-run0{view}", "lr=1.0e-03")]
    tags = Tags()
    tags.feed(page)
    assert tags.open == []
    md = to_markdown(cmp)
    assert f"run [a-parent]({ui}/a-parent{view})" in md and f"| [lr=1.0e-03]({ui}/a-run0{view}) |" in md
    assert "| lr=1.0e-02 |" in md
    assert "http" not in to_text(cmp)
