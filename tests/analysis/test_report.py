"""The report of `compare`: its files and figures (hand-built sweeps), and its run in a real
embedded MLflow store, read back with MLflow's own client. (report.html in a real browser, its
images and run links against a real server: test_compare_command.)"""
from __future__ import annotations

import base64
import io
import json
import re

import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image

from stablesweep.analysis.comparison import compare
from stablesweep.analysis.render import to_html, to_markdown
from stablesweep.analysis.report import figure_sources, log_report, write_report
from stablesweep.vocab import InputError
from tests.analysis.tables import BASE, sweep, two_sweeps

TOP = ["report.txt", "report.md", "report.html", "configs.csv", "settings.csv", "changes.csv", "answers.csv",
       "compare.json"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    sweeps = list(two_sweeps())
    cmp = compare(sweeps)
    out = tmp_path_factory.mktemp("report") / "a-vs-b"
    return cmp, write_report(cmp, sweeps, out), out


def test_files_and_figures(report):
    cmp, files, out = report
    assert sorted(p.name for k, p in files.items() if not k.startswith("figure_")) == sorted(TOP)
    assert sorted(str(p.relative_to(out)) for k, p in files.items() if k.startswith("figure_")) == \
        ["figures/parallel.png", "figures/region_a.png", "figures/region_b.png"]
    for k, p in files.items():
        if k.startswith("figure_"):
            with Image.open(p) as im:
                im.verify()
    figs = ["figures/parallel.png", "figures/region_a.png", "figures/region_b.png"]
    sources = figure_sources(files, out)
    assert list(sources) == figs  # parallel coordinates first
    assert (out / "report.md").read_text() == to_markdown(cmp, figs)
    assert (out / "report.html").read_text() == to_html(cmp, sources)
    assert json.loads((out / "compare.json").read_text())["setting_keys"] == cmp.setting_keys
    assert len(pd.read_csv(out / "configs.csv")) == 7
    assert len(pd.read_csv(out / "settings.csv")) == len(cmp.settings_table()) == 4
    assert pd.read_csv(out / "changes.csv")["change"].tolist() == [c.change for c in cmp.transitions[0].settings]


def test_the_html_page_holds_its_figures(report):
    """Every <img> of report.html is a PNG inside the page (a data: URI), the same bytes as the
    figure file: the page needs no other file wherever it is opened."""
    cmp, files, out = report
    page = (out / "report.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)" alt="([^"]+)">', page)
    assert [alt for _, alt in srcs] == ["parallel", "region_a", "region_b"]
    for src, alt in srcs:
        head, data = src.split(",", 1)
        assert head == "data:image/png;base64"
        raw = base64.b64decode(data)
        assert raw == (out / "figures" / f"{alt}.png").read_bytes()
        with Image.open(io.BytesIO(raw)) as im:
            im.verify()
    assert "figures/" not in page


def test_no_figures(tmp_path):
    sweeps = [sweep("odd name/1", [(1e-3, "stable", "slice")], BASE, ["training.lr", "loss.masking"],
                    ["loss.masking"])]
    files = write_report(compare(sweeps), sweeps, tmp_path, figures=False)
    assert figure_sources(files, tmp_path) == {} and not (tmp_path / "figures").exists()
    assert "## Figures" not in (tmp_path / "report.md").read_text()
    assert "<img" not in (tmp_path / "report.html").read_text()
    files = write_report(compare(sweeps), sweeps, tmp_path / "with")
    assert list(figure_sources(files, tmp_path / "with")) == ["figures/parallel.png", "figures/region_odd_name_1.png"]


@pytest.fixture(scope="module")
def uri(tmp_path_factory, new_store) -> str:
    return new_store(tmp_path_factory.mktemp("report_store") / "mlflow.db")


def test_logged_as_a_compare_run(report, uri):
    cmp, files, out = report
    run_id = log_report(cmp, files, out, uri, "reports")
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.run_name == "compare a vs b" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "reports"
    tags = run.data.tags
    assert tags["stablesweep.kind"] == "compare" and tags["stablesweep.compared"] == "a,b"
    assert tags["stablesweep.compared_runs"] == "a-parent,b-parent"
    assert tags["stablesweep.became_unstable"] == "masking=slice clip=1.0" and "stablesweep.became_stable" not in tags
    assert tags["mlflow.note.content"] == to_markdown(cmp)
    assert run.data.params == {"sweeps": "a,b", "by": "objective", "only": "", "top": ""}
    assert run.data.metrics == {"configs": 7.0, "stable_configs": 4.0}
    assert {a.path for a in client.list_artifacts(run_id)} == {*TOP, "figures"}
    assert {a.path for a in client.list_artifacts(run_id, "figures")} == {
        "figures/parallel.png", "figures/region_a.png", "figures/region_b.png"}


def test_many_sweeps_name_the_first_and_last(uri, tmp_path):
    sweeps = [sweep(n, [(1e-3, "stable", "slice")], BASE, ["training.lr", "loss.masking"], ["loss.masking"])
              for n in "abcd"]
    cmp = compare(sweeps, only="stable", top=1)
    out = tmp_path / "out"
    files = write_report(cmp, sweeps, out, figures=False)
    run = MlflowClient(tracking_uri=uri).get_run(log_report(cmp, files, out, uri))
    assert run.info.run_name == "compare a .. d (4 sweeps)"
    assert not any(k.startswith("stablesweep.became") for k in run.data.tags)  # three transitions: no tag
    assert run.data.params["only"] == "stable" and run.data.params["top"] == "1"
    assert {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(run.info.run_id)} == set(TOP)


def test_a_store_that_cannot_be_written_is_bad_input(report, tmp_path):
    cmp, files, out = report
    bad = tmp_path / "bad.db"
    bad.write_text("not a database " * 100)
    with pytest.raises(InputError, match=r"^--mlflow sqlite:///.*bad\.db: cannot log the report: "):
        log_report(cmp, files, out, f"sqlite:///{bad}")
