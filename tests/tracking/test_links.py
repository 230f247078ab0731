"""Where a person looks: the UI command, links of the shape of MLflow 3.17's routes, and the links
loaded in headless Chromium against a real `mlflow server` (the stable trials, best first, in the
runs table; a saved view with our columns)."""
from __future__ import annotations

import re

import pytest

from stablesweep.tracking import TRIAL_COLUMNS, Tracker, run_link, stable_filter, ui_command, ui_link
from tests.mlflow_server import STORE, chromium, dump_dom, mlflow_server
from tests.tracking.sample import EXPERIMENT, TRIALS


def test_ui_command():
    assert ui_command("http://127.0.0.1:5000") == "open http://127.0.0.1:5000"
    assert ui_command("sqlite:///x.db") == "mlflow ui --backend-store-uri sqlite:///x.db --host 127.0.0.1 --port 5000"


def test_ui_links_have_the_shape_of_mlflow_3_17_routes():
    """The runs tab of the hash router, the model-training view, the facets the UI reads from the
    query string (searchFilter, orderByKey as a canonical key, orderByAsc), or a saved view."""
    assert ui_link("http://127.0.0.1:5001/", "3", stable_filter("abc")) == (
        "http://127.0.0.1:5001/#/experiments/3/runs?workflowType=machine_learning"
        "&searchFilter=tags.verdict%20%3D%20%27stable%27%20and%20tags.%60mlflow.parentRunId%60%20%3D%20%27abc%27"
        "&orderByKey=metrics.%60objective%60&orderByAsc=true")
    assert ui_link("sqlite:///x.db", "0", order_by="params.`training.lr`", ascending=False) == (
        "http://127.0.0.1:5000/#/experiments/0/runs?workflowType=machine_learning"
        "&orderByKey=params.%60training.lr%60&orderByAsc=false")  # where `mlflow ui` listens
    assert ui_link("http://h:1", "3", "ignored", view="k1") == \
        "http://h:1/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=k1"
    assert run_link("http://h:1", "3", "r1") == "http://h:1/#/experiments/3/runs/r1?workflowType=machine_learning"


# ---- the UI itself, in a browser -------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory, new_store):
    root = tmp_path_factory.mktemp("ui_server")
    new_store(root / STORE)
    with mlflow_server(root) as proc:
        yield proc.uri


def rows_and_columns(dom: str) -> tuple[list[str], set[str]]:
    """The run ids of the runs table's rows, in order, and the ids of its columns."""
    rows = list(dict.fromkeys(re.findall(r'row-index="\d+" row-id="([0-9a-f]{32})"', dom)))
    return rows, set(re.findall(r'col-id="([^"]+)"', dom))


@pytest.mark.skipif(chromium() is None, reason="no chromium binary (Debian: apt-get install -y chromium; "
                                               ".ci/run installs it)")
def test_the_links_open_the_stable_trials_best_first_in_the_runs_table(server, tmp_path):
    tr = Tracker(server, EXPERIMENT)
    parent = tr.start_sweep("ui", {}, tags={})
    other = tr.start_sweep("other", {}, tags={})
    stable = {}
    for i, (tid, verdict, reason, bad, lr, clip, obj) in enumerate(TRIALS):
        params = {"training.lr": lr, "training.max_grad_norm": clip}
        for p in (parent, other):
            run = tr.trial_run(p, f"{p[:6]}-{tid}", f"lr={lr:.1e}", params, setting={"training.max_grad_norm": clip})
            tr.log_trial_metrics(run, {"loss": 1.0, "progress": 0.5}, 10)
            tr.finish_trial(run, verdict, reason, bad, {"objective": obj, "steps": 20})
            tr.set_margin(run, lr / 82.0)
            if p == parent and verdict == "stable":
                stable[run] = obj
    best_first = sorted(stable, key=stable.get)
    eid = tr.experiment_id
    dom = dump_dom(ui_link(server, eid, stable_filter(parent)), tmp_path / "plain")
    rows, _ = rows_and_columns(dom)
    assert rows == best_first, dom[-2000:]
    view = tr.save_view(stable_filter(parent), params=["training.max_grad_norm"])
    assert view == tr.save_view(stable_filter(parent), params=["training.max_grad_norm"])  # stored once
    dom = dump_dom(ui_link(server, eid, view=view), tmp_path / "view")
    rows, columns = rows_and_columns(dom)
    assert rows == best_first, dom[-2000:]
    assert {*TRIAL_COLUMNS, "params.`training.max_grad_norm`"} - {"tags.`reason`"} <= columns, columns
