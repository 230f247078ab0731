"""SIGTERM taken the way of Ctrl-C, so that a scheduler's preemption stops a sweep or ramp as a
Ctrl-C does: trials stopped, what finished recorded, the MLflow runs closed, the resume command
printed; the exit status is then 143 (128 + SIGTERM) instead of 130.

Why it must be installed again after Ray starts: `ray.init` sets its own SIGTERM handler
(`sys.exit(15)`), and the driver's core worker then installs a C++ failure-signal handler over it,
which prints `*** SIGTERM received` and aborts (exit 134) with nothing recorded. `take_sigterm`
puts ours back at the C level; it is called by the CLI at start and by `sweep.session.ray_session`
once Ray is up. While Tune's `tuner.fit` runs, SIGINT's handler is Tune's (it ends the run at the
next step of its loop, as a first Ctrl-C does); otherwise it is Python's, which raises
KeyboardInterrupt. SIGTERM calls whichever it is. Imports nothing heavy: the CLI uses it before
any command module loads.

`take_sigint`: a process started with SIGINT ignored (what a non-interactive shell does to a job
it starts in the background, `stablesweep sweep ... &`) gets no KeyboardInterrupt from Python, and
Tune's handler took a Ctrl-C only while the trials ran: one sent before them (while Ray started or
the MLflow store was made) was lost and the sweep ran to its end. The CLI takes SIGINT as
KeyboardInterrupt from its start, so a Ctrl-C stops it at any moment.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

EXIT_TERMINATED = 128 + signal.SIGTERM  # 143
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130

_received: list[int] = []


def _on_sigterm(signum, frame) -> None:
    _received.append(signum)
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)  # Tune's (ends the run) or Python's default (KeyboardInterrupt)
    else:
        raise KeyboardInterrupt


def take_sigterm() -> None:
    """Make SIGTERM take the way of SIGINT in this process (the main thread only can set handlers)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def take_sigint() -> None:
    """Make SIGINT raise KeyboardInterrupt in this process even if it was started ignoring it (main
    thread only; a handler someone set is left as it is)."""
    if threading.current_thread() is threading.main_thread() and not callable(signal.getsignal(signal.SIGINT)):
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextmanager
def sigterm_through_ray_start() -> Iterator[None]:
    """Around `ray.init`: it sets its own SIGTERM handler (`sys.exit(15)`) before it starts Ray's
    processes, so a SIGTERM during those seconds ended the command with exit 15 and no message.
    Taken here as ours: what Ray had started is shut down and the stop goes the way of Ctrl-C
    (KeyboardInterrupt; exit 143 with the message)."""
    try:
        yield
    except SystemExit as e:
        if e.code != signal.SIGTERM:
            raise
        _received.append(signal.SIGTERM)
        import ray

        try:
            ray.shutdown()
        except Exception:  # noqa: S110 - half-started; the command is ending either way
            pass
        raise KeyboardInterrupt from None


def fit_tuner(tuner) -> Any:
    """`tuner.fit()`, with the SIGINT handler of before put back when it returns: Tune installs its
    own for the run (a first Ctrl-C ends the run at its loop's next step) and leaves it installed,
    so a Ctrl-C after the trials (while the sweep's tables, figures and MLflow runs are written)
    set a flag nothing read, and the command ran to its end with exit 0."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT) if main else None
    try:
        return tuner.fit()
    finally:
        if main and before is not None:
            signal.signal(signal.SIGINT, before)


def terminated() -> bool:
    """Whether a SIGTERM came (the stop is then a termination, exit 143, not an interrupt)."""
    return bool(_received)


def stop_word() -> str:
    """How the message names the stop: `terminated (SIGTERM)` or `interrupted`."""
    return "terminated (SIGTERM)" if terminated() else "interrupted"


def stop_status() -> int:
    """The exit status of a run that stopped early at a signal: 143 for SIGTERM, 130 for SIGINT."""
    return EXIT_TERMINATED if terminated() else EXIT_INTERRUPTED
