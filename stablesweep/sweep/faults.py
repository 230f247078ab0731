"""Whether an error, or the sweep folder now, says the disk is full or read-only (recovery.py and
the searchers ask), and `OutputFault`, the stop it causes (light: the commands catch it without
importing Ray or Optuna)."""
from __future__ import annotations

import errno
import os
from pathlib import Path

_FAULT_WORDS = ("no space left", "database or disk is full", "read-only file system", "readonly database",
                "disk quota exceeded", "disk i/o error")


class OutputFault(Exception):
    """A sweep or ramp stopped because its output could not be written (disk full, read-only file system)."""

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.name = name  # the sweep's or ramp's, for the resume command


def storage_fault(exc: BaseException | None) -> str | None:
    """What was wrong, in the words of the first error in `exc`'s chain that says the disk is full
    or read-only (an OSError, sqlite's words through SQLAlchemy and Optuna, a worker's error through
    Ray); None for any other error."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT):
            return os.strerror(exc.errno) + (f": {exc.filename}" if exc.filename else "")
        text = str(exc).lower()
        for words in _FAULT_WORDS:
            if words in text:
                return words
        exc = exc.__cause__ or exc.__context__
    return None


def probe_output(folder: Path) -> str | None:
    """Whether `folder` takes a small write now: the words of the disk's refusal (full, read-only),
    None when it does. For an error that does not say why it happened (Tune reading back a trial's
    error file that the full disk left empty raises a bare `EOFError`)."""
    probe = folder / f".probe-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return storage_fault(e)
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return None
