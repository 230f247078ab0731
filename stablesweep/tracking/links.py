"""Where a person looks: the command that opens a store's UI, links into MLflow 3.17's runs table
(model-training view, a filter, a sort, or a saved view), a run's page, the stable-trials filter,
and the saved view of the runs table as the UI's Share button stores it. Strings only; no MLflow.
"""
from __future__ import annotations

import hashlib
import json
from typing import Iterable
from urllib.parse import quote, urlencode

from stablesweep.tracking.names import LR_MARGIN, PARENT_TAG, SWEEP_TAG
from stablesweep.vocab import LR_KEY, OBJECTIVE, STABLE

UI_PORT = 5000  # where `mlflow ui` listens unless told otherwise
ORDER_BY_OBJECTIVE = f"metrics.`{OBJECTIVE}`"
SHARED_VIEW_TAG = "mlflow.sharedViewState."  # the UI's saved views: an experiment tag each
# the runs table's columns for trials (the UI's canonical keys; run name, created and duration are
# always shown); `Tracker.save_view` adds the swept params
TRIAL_COLUMNS = ("tags.`verdict`", "tags.`setting`", f"params.`{LR_KEY}`", ORDER_BY_OBJECTIVE,
                 f"metrics.`{LR_MARGIN}`", "metrics.`progress`", "metrics.`steps`", "tags.`reason`",
                 f"tags.`{SWEEP_TAG}`")


def ui_command(uri: str) -> str:
    """The command that shows this store (a server URI is opened as it is)."""
    if uri.startswith(("http://", "https://", "databricks")):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port {UI_PORT}"


def ui_base(uri: str) -> str:
    """Where the UI of this store is: the server itself, or what `ui_command` starts."""
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return f"http://127.0.0.1:{UI_PORT}"


def ui_link(uri: str, experiment_id: str, filter: str = "", order_by: str = ORDER_BY_OBJECTIVE, *,
            ascending: bool = True, view: str | None = None) -> str:
    """A link into MLflow 3.17's runs table of an experiment, in the model-training view (not the
    GenAI overview the UI opens by default): filtered by `filter` (MLflow search syntax), sorted
    by `order_by` (a canonical key: metrics.`objective`, params.`training.lr`), or showing the
    saved view `view` (`Tracker.save_view`; it holds filter, sort and columns, and the UI applies
    it only when no filter or sort is in the link). A filter on child runs and a sort show the
    runs flat (the UI fetches and nests parents only without them, or when sorted by date)."""
    query = {"workflowType": "machine_learning"}
    if view:
        query["viewStateShareKey"] = view
    else:
        if filter:
            query["searchFilter"] = filter
        query.update(orderByKey=order_by, orderByAsc=str(ascending).lower())
    return f"{ui_base(uri)}/#/experiments/{experiment_id}/runs?{urlencode(query, quote_via=quote)}"


def run_link(uri: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the UI (absolute: see `ui_base`), in the model-training view."""
    return f"{ui_base(uri)}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def stable_filter(parent_id: str | None = None) -> str:
    """The filter of the stable trials (of one sweep or ramp: its parent run's id)."""
    return f"tags.verdict = '{STABLE}'" + (f" and tags.`{PARENT_TAG}` = '{parent_id}'" if parent_id else "")


def view_state(filter: str, *, order_by: str = ORDER_BY_OBJECTIVE, ascending: bool = True,
               params: Iterable[str] = ()) -> tuple[str, str]:
    """A saved view of the runs table: (its key, the experiment tag's value), as the UI's Share
    button stores one: `filter`, the sort and our columns (TRIAL_COLUMNS and the params `params`);
    the key is a hash of the view, so a view is stored once."""
    columns = list(dict.fromkeys([*TRIAL_COLUMNS, *(f"params.`{k}`" for k in params)]))
    state = {"searchFilter": filter, "orderByKey": order_by, "orderByAsc": ascending,
             "selectedColumns": columns}
    text = json.dumps(state, sort_keys=True)
    return "stablesweep-" + hashlib.sha256(text.encode()).hexdigest()[:16], text
