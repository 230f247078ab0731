"""`stablesweep compare` end to end, against a real `mlflow server` (sqlite backend, 127.0.0.1, a
free port) holding two real sweeps (real Ray, Optuna and training loop on the demo config, CPU):
read back, compared, rendered, logged. No mocks. The parts on their own, faster: test_reading,
test_comparison, test_render, test_report, test_plots."""
from __future__ import annotations

import io
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from stablesweep.analysis.comparison import compare
from stablesweep.analysis.reading import read_sweeps
from stablesweep.analysis.render import to_text
from stablesweep.cli import main
from stablesweep.sweep.runner import SweepOptions, run_sweep
from stablesweep.tracking import TrackerReader
from tests.conftest import DEMO, ROOT
from tests.mlflow_server import STORE, chromium, dump_dom, free_port, mlflow_server

STEPS, INTERVAL = 20, 10
# The demo trains fine at lr 1e-3 and 1e-2; lr 1e3 blows up in the first report interval.
# `wide` brackets the boundary (each masking: stable at 1e-2, diverged at 1e3); `low` stays below it
# and tries one masking only. 4 + 2 trials.
SPACES = {
    "wide": "training.lr: {grid: [1.0e-2, 1.0e+3]}\nloss.masking: {choice: [slice, large_negative]}\n",
    "low": "training.lr: {grid: [1.0e-3, 1.0e-2]}\nloss.masking: {choice: [slice]}\n",
}
N = {"wide": 4, "low": 2}


@pytest.fixture(scope="module")
def mlflow_proc(tmp_path_factory, new_store):
    """A real `mlflow server` on an empty store, started (not yet waited for); stopped at the end,
    also on failure."""
    root = tmp_path_factory.mktemp("mlflow_server")
    new_store(root / STORE)
    with mlflow_server(root) as proc:
        yield proc


@pytest.fixture(scope="module")
def server(mlflow_proc) -> str:
    return mlflow_proc.uri  # waits until /health answers


@pytest.fixture(scope="module")
def sweeps(mlflow_proc, ray_cluster, tmp_path_factory):
    """Two real sweeps logged to the server, oldest first: wide, then low. (The server starts while
    Ray does.) One trial at a time: one worker a sweep, torch imported once."""
    server = mlflow_proc.uri
    tmp = tmp_path_factory.mktemp("compare_sweeps")
    results = {}
    for name, text in SPACES.items():
        space = tmp / f"{name}.yaml"
        space.write_text(text)
        opts = SweepOptions(config=str(DEMO), space=str(space), sampler="grid", steps=STEPS,
                            overrides=[f"training.report_interval={INTERVAL}"], asha=False, out=str(tmp / "out"),
                            name=name, mlflow=server, max_concurrent=1)
        results[name] = run_sweep(opts, echo=lambda s: None)
    assert set(results["wide"].table["verdict"]) == {"stable", "diverged"}
    assert set(results["low"].table["verdict"]) == {"stable"}
    return results


@pytest.fixture(scope="module")
def data(server, sweeps):
    return read_sweeps(server, names=["wide", "low"])


# ---- read back from the server ------------------------------------------------------------------

def test_sweeps_are_read_back_from_mlflow(server, sweeps, data):
    assert [d.name for d in data] == ["wide", "low"]
    for d in data:
        res = sweeps[d.name]
        assert d.run_id == res.parent_run_id and d.kind == "sweep" and d.budget_steps == STEPS
        assert d.categorical == ["loss.masking"] and d.lr_key == "training.lr"
        assert d.config["training.steps"] == STEPS and d.config["loss.masking"] == "slice"  # from config.yaml
        got = d.trials.set_index("trial_id")
        assert len(got) == len(res.table) == N[d.name]
        for _, t in res.table.iterrows():
            r = got.loc[t["trial_id"]]
            assert r["verdict"] == t["verdict"] and r["name"] == t["name"]
            assert r["training.lr"] == pytest.approx(t["training.lr"]) and r["loss.masking"] == t["loss.masking"]
            assert r["objective"] == pytest.approx(t["objective"])
            assert r["first_bad_step"] == t["first_bad_step"]
    # no sweep named: every sweep of the experiment, oldest first (reports of compare are no sweeps)
    assert [d.name for d in read_sweeps(server)] == ["wide", "low"]
    # a run id works as a name
    assert [d.name for d in read_sweeps(server, names=[sweeps["low"].parent_run_id[:10]])] == ["low"]


def test_stable_configs_ranked_side_by_side(data):
    cmp = compare(data)
    t = cmp.configs
    assert len(t) == 6 and list(t["rank"]) == list(range(1, 7))
    assert list(t["verdict"]) == ["stable"] * 4 + ["diverged"] * 2  # stable first
    stable = t[t["verdict"] == "stable"]
    assert set(stable["sweep"]) == {"wide", "low"}
    assert list(stable["objective"]) == sorted(stable["objective"])  # best objective first
    # margin: lr over the smallest diverged lr of its setting in its sweep; none where nothing diverged
    wide = t[t["sweep"] == "wide"]
    assert wide["margin"].tolist() == pytest.approx([r / 1e3 for r in wide["training.lr"]])
    assert t.loc[t["sweep"] == "low", "margin"].isna().all()
    # the params that differ from the best row are named; columns that vary are known
    assert set(cmp.varying) == {"training.lr", "loss.masking"}
    best = t.iloc[0]
    for _, r in t.iterrows():
        assert set(r["differs_from_best"]) == {k for k in ("training.lr", "loss.masking")
                                      if str(r[k]) != str(best[k])}
    # per sweep: verdict counts, LR sensitivity; per setting: the bracket of the boundary
    s = {x.label: x for x in cmp.sweeps}
    assert s["wide"].counts["stable"] == 2 and s["wide"].counts["diverged"] == 2 and s["low"].counts["stable"] == 2
    assert s["wide"].lr_sensitivity > s["low"].lr_sensitivity >= 0
    settings = cmp.settings_table()
    w = settings[settings["sweep"] == "wide"]
    assert (w["max_stable_lr"] == 1e-2).all() and (w["min_diverged_lr"] == 1e3).all()

    by_margin = compare(data, only="stable", by="margin", top=3).configs
    assert len(by_margin) == 3 and (by_margin["verdict"] == "stable").all()
    assert list(by_margin["sweep"][:2]) == ["wide", "wide"]  # known headroom first, unknown last


def test_settings_that_changed_verdict(data):
    (tr,) = compare(data).transitions
    assert (tr.before, tr.after) == ("wide", "low")
    change = {c.label: c for c in tr.settings}
    assert {k: c.change for k, c in change.items()} == {"masking=slice": "became stable",
                                                        "masking=large_negative": "only in wide"}
    slice_ = change["masking=slice"]
    assert (slice_.before.status, slice_.after.status) == ("mixed", "stable")
    assert "lr range changed" in slice_.note  # low never tried an lr near wide's boundary
    assert not tr.config_diff  # same base config
    back = {c.label: c.change for c in compare(list(reversed(data))).transitions[0].settings}
    assert back == {"masking=slice": "less stable", "masking=large_negative": "only in wide"}
    assert "low -> wide" in to_text(compare(list(reversed(data))))
    assert "wide -> low: became stable: masking=slice" in to_text(compare(data))


# ---- the command, in this process (fast) and as a subprocess (exit status) -----------------------

def test_cli_every_format_and_the_report_logged_to_mlflow(server, sweeps, data, tmp_path, capsys):
    outs = {}
    for fmt in ("table", "md", "csv", "html"):
        out = tmp_path / fmt
        args = ["compare", "wide", "low", "--mlflow", server, "--only", "stable", "--format", fmt, "--out", str(out)]
        if fmt != "html":
            args += ["--no-log", "--no-figures"]
        assert main(args) == 0
        outs[fmt] = capsys.readouterr().out
    csv = pd.read_csv(io.StringIO(outs["csv"]))
    assert len(csv) == 4 and (csv["verdict"] == "stable").all() and list(csv["rank"]) == list(range(1, 5))
    assert {"sweep", "training.lr", "loss.masking", "objective", "margin", "differs_from_best"} <= set(csv.columns)
    assert set(csv["sweep"]) == {"wide", "low"}
    assert "<table>" in outs["html"] and 'class="diff"' in outs["html"]
    assert outs["html"].count('<img src="data:image/png;base64,') == 3 and "figures/" not in outs["html"]
    md = outs["md"]
    assert "| rank | sweep | verdict |" in md and "|---|" in md and "**" in md
    assert "became stable" in md
    assert "rank" in outs["table"] and "Changes wide -> low" in outs["table"]

    out = tmp_path / "html"
    for f in ("report.md", "report.html", "report.txt", "configs.csv", "settings.csv", "changes.csv",
              "compare.json", "figures/parallel.png", "figures/region_wide.png", "figures/region_low.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    # logged back: one run of kind compare, the report files its artifacts
    reader = TrackerReader(server)
    (run,) = reader.parent_runs(kinds=("compare",))
    assert run.name == "compare wide vs low"
    assert run.tags["stablesweep.compared"] == "wide,low"
    assert run.tags["stablesweep.became_stable"] == "masking=slice"
    assert "Sweep comparison" in run.tags["mlflow.note.content"]
    arts = {a.path for a in reader.client.list_artifacts(run.run_id)}
    assert {"report.md", "report.html", "configs.csv", "compare.json", "figures"} <= arts
    assert {a.path for a in reader.client.list_artifacts(run.run_id, "figures")} >= {
        "figures/parallel.png", "figures/region_wide.png", "figures/region_low.png"}
    # the MLflow UI's own filters find the same runs
    stable = reader.client.search_runs([reader.experiment_id()], "tags.verdict = 'stable'")
    assert len(stable) == 4
    kids = reader.client.search_runs([reader.experiment_id()],
                                     f"tags.`mlflow.parentRunId` = '{sweeps['wide'].parent_run_id}'")
    assert len(kids) == 4


# a page loaded from disk in Chromium says how many of its images loaded
CHECK_IMAGES = """<script>window.addEventListener("load", () => {
  const all = [...document.images], ok = all.filter(i => i.complete && i.naturalWidth > 0);
  document.body.setAttribute("data-images", ok.length + "/" + all.length);
});</script>"""
NO_CHROMIUM = "no chromium binary (Debian: apt-get install -y chromium; .ci/run installs it)"


@pytest.mark.skipif(chromium() is None, reason=NO_CHROMIUM)
def test_the_report_shows_its_figures_and_links_its_runs_wherever_it_is_opened(server, sweeps, data, tmp_path,
                                                                               capsys):
    out = tmp_path / "out"
    assert main(["compare", "wide", "low", "--mlflow", server, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    page = (out / "report.html").read_text()
    # alone, in another folder: every image still loads (they are inside the page)
    alone = tmp_path / "elsewhere" / "report.html"
    alone.parent.mkdir()
    alone.write_text(page.replace("</body>", CHECK_IMAGES + "</body>"))
    dom = dump_dom(alone.as_uri(), tmp_path / "profile1", width=1400)
    assert re.search(r'data-images="3/3"', dom), dom[-500:]
    # every run link answers, and names a run of this experiment: each trial shown and each sweep
    reader = TrackerReader(server)
    eid = reader.experiment_id()
    links = set(re.findall(r'<a href="([^"]+)"', page))
    linked = set()
    for url in links:
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200, url
        exp, run_id = re.fullmatch(rf"{re.escape(server)}/#/experiments/(\d+)/runs/([0-9a-f]{{32}})\?workflowType=machine_learning",
                                   url).groups()
        assert exp == eid and reader.client.get_run(run_id).info.experiment_id == eid
        linked.add(run_id)
    assert linked == {r for d in data for r in d.trials["run_id"]} | {d.run_id for d in data}
    # the printed link: the stable trials, best objective first, with our columns
    (link,) = re.findall(r"^Stable trials, best objective first: (\S+)$", printed, re.M)
    rows = [r.info.run_id for r in reader.client.search_runs([eid], "tags.verdict = 'stable'",
                                                              order_by=["metrics.`objective` ASC"])]
    dom = dump_dom(link, tmp_path / "profile2")
    assert list(dict.fromkeys(re.findall(r'row-index="\d+" row-id="([0-9a-f]{32})"', dom))) == rows
    columns = set(re.findall(r'col-id="([^"]+)"', dom))
    assert {"tags.`verdict`", "tags.`stablesweep.sweep`", "params.`training.lr`", "params.`loss.masking`",
            "metrics.`objective`", "metrics.`steps`"} <= columns


def _cli(*args: str, cwd: Path = ROOT) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "stablesweep", "compare", *args], capture_output=True, text=True,
                       timeout=60, cwd=cwd)
    return p, time.time() - t0


def test_unknown_sweep_is_a_clear_error(server, sweeps, tmp_path):
    p, _ = _cli("wdie", "low", "--mlflow", server, "--out", str(tmp_path / "out"))
    assert p.returncode == 2, p.stderr
    assert f"error: unknown sweep 'wdie' in experiment 'stablesweep' at {server}; did you mean 'wide'?" in p.stderr
    assert "sweeps there: low, wide" in p.stderr
    assert not (tmp_path / "out").exists()  # nothing written


def test_unreachable_server_is_a_clear_error_within_seconds(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    p, took = _cli("--mlflow", uri, "--out", str(tmp_path / "out"))
    assert p.returncode == 2, p.stderr
    assert f"error: --mlflow {uri}: no MLflow server answers at {uri}" in p.stderr
    assert took < 15, took
    assert not (tmp_path / "out").exists()


def test_missing_default_store_says_which_uri_was_tried(tmp_path):
    p, _ = _cli(cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert "no MLflow store at sqlite:///runs/mlflow.db" in p.stderr and "pass --mlflow URI" in p.stderr
    assert not (tmp_path / "runs").exists()  # no empty store created


def test_the_default_store_is_the_one_under_the_working_directory_after_a_chdir(tmp_path, monkeypatch):
    """In one process (the Python API, a notebook) a relative sqlite URI names the store MLflow opened
    first, whatever the directory now: the default store is resolved to an absolute path."""
    from stablesweep.commands.args import resolve_uri
    from stablesweep.tracking import create_store

    seen = []
    for d in (tmp_path / "a", tmp_path / "b"):
        (d / "runs").mkdir(parents=True)
        monkeypatch.chdir(d)
        create_store(f"sqlite:///{(d / 'runs' / 'mlflow.db').resolve()}")
        seen.append(resolve_uri(None))
    assert seen == [f"sqlite:///{(tmp_path / x / 'runs' / 'mlflow.db').resolve()}" for x in ("a", "b")]
