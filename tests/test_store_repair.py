"""A half-made MLflow sqlite store (a Ctrl-C while MLflow's migrations ran: alembic left its
`_alembic_tmp_experiments` table and the version before) is repaired by `create_store`, which
the sweep and the ramp call before they write."""
from __future__ import annotations

import sqlite3

import pytest
import sqlalchemy

from stablesweep.tracking import Tracker, create_store

# the MLflow migration that rebuilds `experiments` through alembic's batch mode (a temporary copy,
# `_alembic_tmp_experiments`, then drop and rename), and the one before it
BATCH_REVISION, BEFORE = "1b5f0d9ad7c1", "c8d9e0f1a2b3"


def half_made(path) -> None:
    """The store as an interrupt in that migration leaves it: migrated up to BEFORE, with the
    temporary table made and the original still there."""
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    url = f"sqlite:///{path}"
    config = _get_alembic_config(url)
    engine = sqlalchemy.create_engine(url)
    InitialBase.metadata.create_all(engine)  # as MLflow begins a store, then migrates it
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, BEFORE)
    engine.dispose()
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE _alembic_tmp_experiments AS SELECT * FROM experiments WHERE 0")


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "half.db"
    half_made(path)
    return path


def test_the_half_made_store_fails_mlflow_as_users_saw_it(template, tmp_path):
    from mlflow import MlflowClient

    copy = tmp_path / "mlflow.db"
    copy.write_bytes(template.read_bytes())
    with pytest.raises(sqlalchemy.exc.OperationalError, match="_alembic_tmp_experiments already exists"):
        MlflowClient(tracking_uri=f"sqlite:///{copy}").search_experiments()


def test_a_half_made_store_with_no_run_is_made_again(template, tmp_path):
    copy = tmp_path / "mlflow.db"
    copy.write_bytes(template.read_bytes())
    uri = f"sqlite:///{copy}"
    create_store(uri)
    tr = Tracker(uri)
    run = tr.start_sweep("s", {}, tags={})
    assert [r.info.run_id for r in tr.sweep_runs()] == [run]


def test_a_half_made_store_with_runs_keeps_them(template, tmp_path):
    path = tmp_path / "mlflow.db"
    path.write_bytes(template.read_bytes())
    with sqlite3.connect(path) as db:
        for i in range(2):
            db.execute("INSERT INTO runs (run_uuid, experiment_id, lifecycle_stage, status) "
                       f"VALUES ('r{i}', 0, 'active', 'FINISHED')")
    create_store(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert not [t for t in tables if t.startswith("_alembic_tmp_")]
        assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 2
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()  # the migrations finish
