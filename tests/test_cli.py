"""The command line's entry (`stablesweep`, `python -m stablesweep`: `cli.run`) ends the process
without the interpreter's teardown, after doing what the interpreter's exit does first: threads that
are not daemons are waited for, exit handlers run, the output is flushed, the exit status kept."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import atexit, sys, threading, time
atexit.register(lambda: print("exit handler ran", flush=True))
def late():
    time.sleep(0.5)
    print("a thread's last words", flush=True)
threading.Thread(target=late).start()  # not a daemon: the exit waits for it
sys.argv = ["stablesweep", *sys.argv[1:]]
from stablesweep.cli import run
run()
"""


def entry(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_the_entry_flushes_runs_the_exit_handlers_and_keeps_the_status():
    ok = entry("data", "check", "configs/demo.yaml")
    assert ok.returncode == 0, ok.stderr
    # stdout is a pipe here (block-buffered): the command's lines come out, then the exit handler's
    assert ok.stdout.index("labels and images: ok") < ok.stdout.index("exit handler ran")
    assert "a thread's last words" in ok.stdout
    bad = entry("data", "check", "no-such.yaml")
    assert bad.returncode == 2 and "no-such.yaml" in bad.stderr and "exit handler ran" in bad.stdout


def test_python_dash_m_is_the_same_entry():
    p = subprocess.run([sys.executable, "-m", "stablesweep", "data", "check", "no-such.yaml"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "error:" in p.stderr
