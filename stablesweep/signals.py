"""SIGTERM taken the way of Ctrl-C, so that a scheduler's preemption stops a sweep or ramp as a
Ctrl-C does: trials stopped, what finished recorded, the MLflow runs closed, the resume command
printed; the exit status is then 143 (128 + SIGTERM) instead of 130.

Why it must be installed again after Ray starts: `ray.init` sets its own SIGTERM handler
(`sys.exit(15)`). `take_sigterm` puts ours back; it is called by the CLI at start and by
`sweep.session.ray_session` once Ray is up. While Tune's `tuner.fit` runs, SIGINT's handler is
Tune's (it ends the run at the next step of its loop, as a first Ctrl-C does); otherwise it is
Python's, which raises KeyboardInterrupt. SIGTERM calls whichever it is. Imports nothing heavy: the
CLI uses it before any command module loads.

`keep_handlers_through_ray`: the driver's C++ core worker installs a failure-signal handler when it
connects (a SIGTERM then printed `*** SIGTERM received` and aborted, exit 134, nothing recorded) and
Ray's shutdown puts SIGTERM back to the default disposition, so a SIGTERM during the seconds of the
shutdown killed the process (exit -15) with the answer written. Ray installs neither when its
`RAY_DISABLE_FAILURE_SIGNAL_HANDLER` is set; it is set for this process's driver only.

`signals_held`: a Ctrl-C or SIGTERM during `ray.shutdown` is held until the shutdown has ended and
then delivered (a KeyboardInterrupt half-way through it would leave Ray half torn down).

`take_sigint`: a process started with SIGINT ignored (what a non-interactive shell does to a job
it starts in the background, `stablesweep sweep ... &`) gets no KeyboardInterrupt from Python, and
Tune's handler took a Ctrl-C only while the trials ran: one sent before them (while Ray started or
the MLflow store was made) was lost and the sweep ran to its end. The CLI takes SIGINT as
KeyboardInterrupt from its start, so a Ctrl-C stops it at any moment. A KeyboardInterrupt raised
while a finalizer runs (a weakref callback of SQLAlchemy's as MLflow's store is made, seen by
bench/chaos.py) is printed as "Exception ignored in" and lost; the handler notes each stop, and
`fit_tuner` raises a noted one again before the trials start.

`sigterm_through_ray_start` and `ray_start_broken`: a stop while `ray.init` runs (its SIGTERM
handler's `sys.exit(15)`, or a Ctrl-C) may come while the driver's C++ core worker is being made:
its constructor has started the C++ side, but the Python object that could stop it is never made,
so nothing shuts it down, and the interpreter's teardown then crashed in its destructors (SIGSEGV,
exit -11, after the message). What Ray had started is shut down there, and the CLI then ends the
process at once (`os._exit`, after flushing its output) with the stop's status.
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


_pending: list[int] = []  # stops taken by `_on_sigint`: one a finalizer swallowed is raised again


def _on_sigint(signum, frame) -> None:
    _pending.append(signum)
    raise KeyboardInterrupt


def take_sigint() -> None:
    """Make SIGINT raise KeyboardInterrupt in this process even if it was started ignoring it, and
    note it, so that one raised inside a finalizer (Python prints "Exception ignored in" and goes
    on) is raised again before the trials start (`fit_tuner`). Main thread only; a handler someone
    set is left as it is. The stops noted are this command's: an earlier one's in this process (the
    CLI's `main` called again) are forgotten."""
    _pending.clear()
    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) in (signal.default_int_handler, signal.SIG_IGN, signal.SIG_DFL, None):
        signal.signal(signal.SIGINT, _on_sigint)


_broken_start: list[bool] = []


@contextmanager
def signals_held(*, deliver: bool = True) -> Iterator[None]:
    """SIGINT and SIGTERM held (noted, not acted on) across a teardown that a stop must not cut
    short; then the handlers of before are back and the first signal held is delivered to them
    (`deliver`), so the stop happens once the teardown has ended. With `deliver` False (the caller
    is stopping already) a SIGTERM held still makes the status 143. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum, frame) -> None:
        held.append(signum)
        if signum == signal.SIGTERM:
            _received.append(signum)

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in before:
        signal.signal(s, hold)
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        if held and deliver:
            signal.raise_signal(held[0])


def keep_handlers_through_ray() -> None:
    """Before `ray.init`: the driver's core worker installs no C++ failure-signal handler, so that
    neither its abort at SIGTERM nor the shutdown's reset of SIGTERM to the default replaces our
    handler (module docstring). Ray reads `RAY_DISABLE_FAILURE_SIGNAL_HANDLER` once, at import,
    into `ray_constants`; the constant is set, not the environment, so the processes Ray starts
    (raylet, workers) keep their crash handler."""
    from ray._private import ray_constants

    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True


@contextmanager
def sigterm_through_ray_start() -> Iterator[None]:
    """Around `ray.init`: it sets its own SIGTERM handler (`sys.exit(15)`) before it starts Ray's
    processes, so a SIGTERM during those seconds ended the command with exit 15 and no message.
    Taken here as ours, and a Ctrl-C likewise: what Ray had started is shut down (signals held), the
    start is marked broken (`ray_start_broken`) and the stop goes the way of Ctrl-C
    (KeyboardInterrupt; exit 143 or 130 with the message)."""
    try:
        yield
    except SystemExit as e:
        if e.code != signal.SIGTERM:
            raise
        _received.append(signal.SIGTERM)
        _shut_down_broken_start()
        raise KeyboardInterrupt from None
    except KeyboardInterrupt:
        _shut_down_broken_start()
        raise


def _shut_down_broken_start() -> None:
    import ray

    _broken_start.append(True)
    with signals_held(deliver=False):
        try:
            ray.shutdown()  # Ray's processes; a core worker whose constructor was cut short stays
        except Exception:  # noqa: S110 - half-started; the command is ending either way
            pass


def ray_start_broken() -> bool:
    """Whether a stop cut `ray.init` short in this process: its teardown may crash (module
    docstring), so the CLI ends it with `os._exit`."""
    return bool(_broken_start)


def fit_tuner(tuner) -> Any:
    """`tuner.fit()`, with the SIGINT handler of before put back when it returns: Tune installs its
    own for the run (a first Ctrl-C ends the run at its loop's next step) and leaves it installed,
    so a Ctrl-C after the trials (while the sweep's tables, figures and MLflow runs are written)
    set a flag nothing read, and the command ran to its end with exit 0."""
    main = threading.current_thread() is threading.main_thread()
    if _pending:  # a Ctrl-C (or SIGTERM) came and was swallowed where Python ignores exceptions: stop here
        raise KeyboardInterrupt
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
