"""The store: a half-made MLflow sqlite store (a Ctrl-C while MLflow's migrations ran: alembic left
its `_alembic_tmp_experiments` table and the version before) is repaired by `create_store`, which
the sweep and the ramp call before they write; a file that is no store is a TrackingError; and
`probe_store` says why there is nothing to read, without creating anything."""
from __future__ import annotations

import sqlite3

import pytest
import sqlalchemy

from stablesweep.tracking import (
    StoreStart,
    Tracker,
    TrackerReader,
    TrackingError,
    create_store,
    default_tracking_uri,
    probe_store,
    stable_filter,
)
from tests.mlflow_server import free_port

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
    assert [r.run_id for r in tr.sweep_runs()] == [run]


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


def test_the_default_store_is_beside_the_files(tmp_path):
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


def test_a_file_that_is_no_store_is_a_tracking_error(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_text("not a database " * 100)
    with pytest.raises(TrackingError, match=r"at sqlite:///.*bad\.db: .*file is not a database"):
        TrackerReader(f"sqlite:///{bad}").experiment_id()
    with pytest.raises(TrackingError, match=r"saving a view of the runs table at sqlite:///.*bad\.db: "):
        Tracker(f"sqlite:///{bad}").save_view(stable_filter())


def test_probe_store_says_why_there_is_nothing_to_read(uri, tmp_path):
    missing = tmp_path / "nope" / "mlflow.db"
    assert probe_store(f"sqlite:///{missing}") == \
        f"no MLflow store at sqlite:///{missing} (no file {missing.resolve()})"
    assert not missing.parent.exists()  # nothing created
    assert probe_store(uri) is None
    assert "no directory" in probe_store(str(tmp_path / "mlruns"))
    url = f"http://127.0.0.1:{free_port()}"
    assert probe_store(url, timeout=2).startswith(f"no MLflow server answers at {url} (")


def _temporary_stores(tmp) -> list:
    return list(tmp.glob("stablesweep-store-*"))


@pytest.fixture
def own_tmp(tmp_path, monkeypatch):
    """tempfile's directory, where StoreStart makes a new store's tables, is this test's own."""
    import tempfile

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def test_store_start_makes_the_tables_elsewhere_and_places_a_usable_store(tmp_path, own_tmp):
    """While the thread runs, nothing is written where the store goes; `place()` puts a whole store
    there, one MLflow reads and writes, and the temporary one is gone."""
    out = tmp_path / "out"
    uri = default_tracking_uri(out)
    with StoreStart(uri) as store:
        store._done.wait()
        assert not out.exists() and len(_temporary_stores(own_tmp)) == 1
        out.mkdir()
        store.place()
    assert (out / "mlflow.db").is_file() and not list(out.glob(".mlflow.db*"))
    assert _temporary_stores(own_tmp) == []
    Tracker(uri, experiment="e").start_sweep("s", {"a": 1}, tags={})
    assert "e" in TrackerReader(uri).experiment_names()


def test_a_run_refused_before_the_store_is_placed_leaves_nothing(tmp_path, own_tmp):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="refused"):
        with StoreStart(default_tracking_uri(out)):
            raise RuntimeError("refused")  # as a cluster check refuses, the thread perhaps still running
    assert not out.exists() and _temporary_stores(own_tmp) == []


def test_store_start_leaves_a_store_that_is_there_as_it_is(tmp_path, own_tmp):
    uri = default_tracking_uri(tmp_path)
    Tracker(uri, experiment="e").start_sweep("s", {"a": 1}, tags={})
    before = (tmp_path / "mlflow.db").stat().st_ino, TrackerReader(uri).experiment_names()
    with StoreStart(uri) as store:
        store.place()
    assert _temporary_stores(own_tmp) == []
    assert ((tmp_path / "mlflow.db").stat().st_ino, TrackerReader(uri).experiment_names()) == before


def test_a_store_another_run_placed_meanwhile_is_kept(tmp_path, own_tmp):
    """Two runs into one --out: the second finds the first's store in place and keeps it."""
    uri = default_tracking_uri(tmp_path)
    with StoreStart(uri) as store:
        store._done.wait()
        create_store(uri)
        Tracker(uri, experiment="first").start_sweep("s", {"a": 1}, tags={})
        store.place()
    assert "first" in TrackerReader(uri).experiment_names()
