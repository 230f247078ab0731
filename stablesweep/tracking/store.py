"""The store itself: its default URI (an embedded sqlite file beside a sweep's files), its path,
making it whole before a sweep or ramp writes (`create_store`: a half-made store is repaired;
`StoreStart`: its making begun while Ray starts),
telling whether there is something to read (`probe_store`), and `TrackingError`, what MLflow
raises while reading or logging a report (`_mlflow_errors`), with the store and the step.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

logger = logging.getLogger(__name__)


def default_tracking_uri(out: str | Path) -> str:
    return f"sqlite:///{Path(out).resolve() / 'mlflow.db'}"


class TrackingError(RuntimeError):
    """The store could not be read or written (a wrapped MlflowException, database or connection
    error)."""


def store_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (relative or absolute), else None."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///"))
    return None


def create_store(uri: str, made: Path | None = None) -> None:
    """Make sure a sqlite MLflow store at `uri` is whole before a sweep or ramp writes to it.

    A new store is made under a temporary name and linked into place: a Ctrl-C while MLflow
    creates its tables (a few seconds of migrations) leaves no half-made store, and of two sweeps
    that make it at once into one --out the first one's store is kept, the second's discarded. A store left
    half-made all the same (by an older version, or a migration interrupted later) holds
    `_alembic_tmp_*` tables that fail every later use (`table _alembic_tmp_experiments already
    exists`): with no run in it, it is made again from scratch; with runs, each leftover table whose
    own table is still there is dropped, and MLflow redoes that migration. `made`: a new store's
    tables made elsewhere already (`StoreStart`), copied in place of the migrations."""
    path = store_path(uri)
    if path is None:
        return
    if path.exists():
        if not _repair_store(path):
            return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if made is not None:
            shutil.copyfile(made, tmp)
        else:
            _migrate(tmp)
        # put in place only if still absent: a sweep started at the same moment into the same --out
        # may have made it meanwhile and be writing to it; replacing its file under it would lose
        # its runs (sqlite then answers "attempt to write a readonly database")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)


def _migrate(path: Path) -> None:
    """A new, empty store at `path`: MLflow's tables, made by its migrations."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()  # runs the migrations


class StoreStart:
    """`create_store` begun while Ray starts (ray.init spends most of its 2-4 s waiting for the
    processes it launched): a thread imports MLflow and, where the sqlite store is still to be made,
    makes its tables in a temporary directory; nothing is written where the store goes. `place()`,
    once the run's checks have passed, waits for it and puts the store in place (`create_store`).
    As a context manager, a run refused or stopped before `place()` leaves no temporary store behind
    (its exit waits for the thread: at most the seconds of the migrations)."""

    def __init__(self, uri: str):
        self.uri = uri
        self._dir: str | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()  # not Thread.join: a join that a Ctrl-C cut short may take it as ended
        threading.Thread(target=self._make, name="stablesweep-store", daemon=True).start()

    def _make(self) -> None:
        try:
            import mlflow  # noqa: F401  (the Tracker's, imported meanwhile)

            path = store_path(self.uri)
            if path is not None and not path.exists():
                self._dir = tempfile.mkdtemp(prefix="stablesweep-store-")
                _migrate(Path(self._dir) / "mlflow.db")
        except BaseException as e:  # raised by place()
            self._error = e
        finally:
            self._done.set()

    def __enter__(self) -> "StoreStart":
        return self

    def __exit__(self, *exc) -> None:
        self.discard()

    def place(self) -> None:
        self._done.wait()
        try:
            if self._error is not None:
                raise self._error
            create_store(self.uri, made=Path(self._dir) / "mlflow.db" if self._dir else None)
        finally:
            self.discard()

    def discard(self) -> None:
        """Wait for the thread and remove the temporary store (placed, or a refused run's)."""
        self._done.wait()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _repair_store(path: Path) -> bool:
    """Repair a store with leftover `_alembic_tmp_*` tables (see `create_store`); True when it
    holds no run and is to be made again (the file is then removed)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        leftovers = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
        if not leftovers:
            return False
        if "runs" not in tables or not db.execute("SELECT 1 FROM runs LIMIT 1").fetchone():
            logger.warning("%s was left half-made (%s) and holds no run: making it again", path, ", ".join(leftovers))
            db.close()
            path.unlink()
            return True
        for t in leftovers:
            if t.removeprefix("_alembic_tmp_") not in tables:
                raise TrackingError(f"{path}: an interrupted MLflow migration left {t} without "
                                    f"{t.removeprefix('_alembic_tmp_')}; back up the file and repair it by hand")
            db.execute(f'DROP TABLE "{t}"')
        db.commit()
    logger.warning("%s: dropped the tables an interrupted MLflow migration left (%s)", path, ", ".join(leftovers))
    return False


def probe_store(uri: str, timeout: float = 5.0) -> str | None:
    """None when there is something to read at `uri`; otherwise why not, in words. One HTTP
    request (any HTTP answer counts: the server is up) or a file check; it never waits out
    MLflow's own retries (minutes, by default). Opening a missing sqlite file would create an
    empty store, so a missing file is refused here."""
    import urllib.error
    import urllib.request

    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout):
                return None
        except urllib.error.HTTPError:
            return None  # something answers HTTP there: MLflow itself says what is wrong, if anything
        except (urllib.error.URLError, OSError, ValueError) as e:
            why = getattr(e, "reason", None) or e
            return f"no MLflow server answers at {uri} ({why}; waited at most {timeout:g}s)"
    path = store_path(uri)
    if path is not None:
        if not path.is_file():
            return f"no MLflow store at {uri} (no file {path.resolve()})"
        return _not_mlflow_sqlite(path)
    elif uri.startswith("file:") or "://" not in uri:
        local = Path(uri.removeprefix("file://").removeprefix("file:"))
        if not local.exists():
            return f"no MLflow store at {uri} (no directory {local.resolve()})"
    return None


def _not_mlflow_sqlite(path: Path) -> str | None:
    """Why the file is no MLflow store (None when it is one), read without writing: MLflow itself
    would turn any sqlite file, even an empty one, into a store by adding its tables."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as e:
        return f"{path} is not an MLflow store ({e})"
    if not {"alembic_version", "experiments", "runs"} <= tables:
        return f"{path} is not an MLflow store (" + (f"its tables: {', '.join(sorted(tables))}" if tables
                                                     else "an empty database") + "); nothing was changed in it"
    return None


class _mlflow_errors:
    """Turns MLflow's exceptions (and a server lost mid-read) into TrackingError."""

    def __init__(self, uri: str, what: str):
        self.uri, self.what = uri, what

    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        if exc is None:
            return False
        from mlflow.exceptions import MlflowException
        from sqlalchemy.exc import SQLAlchemyError

        # requests' errors are OSErrors; a sqlite file that is no MLflow store raises SQLAlchemy's
        if isinstance(exc, (MlflowException, OSError, SQLAlchemyError)):
            msg = str(getattr(exc, "message", None) or exc).strip().splitlines()
            raise TrackingError(f"{self.what} at {self.uri}: {msg[0] if msg else type(exc).__name__}") from exc
        return False
