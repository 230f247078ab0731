"""A real `mlflow server` for tests: sqlite backend, artifacts proxied to a local folder, bound
to 127.0.0.1 on a free port; stopped (its whole process group) on the way out, also on failure.
And a headless Chromium to look at its UI (or any page) as a person would.

    with mlflow_server(tmp_path) as server:   # started, not waited for
        uri = server.uri                       # http://127.0.0.1:PORT, once /health answers
    html = dump_dom(url, tmp_path)             # the page's DOM once its scripts have run
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

STORE = "m.db"  # the server's sqlite store, in its root (a test may put a migrated one there first)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (uvicorn and its workers), then SIGKILL what is left."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers that outlived their parent
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


class MlflowServer:
    """`mlflow server` in its own process group. `start()` returns at once; `uri` waits until
    /health answers (so a caller can do other slow things meanwhile); `stop()` ends it."""

    def __init__(self, root: Path, timeout: float = 90.0):
        self.root = Path(root)
        self.timeout = timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.root / "mlflow_server.log"
        self.proc: subprocess.Popen | None = None
        self._ready = False

    def start(self) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / STORE}",
               "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1"]
        # no background job runner (a handful of extra processes the tests do not need)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.root, env=env,
                                         start_new_session=True)
        self._started = time.time()
        return self

    @property
    def uri(self) -> str:
        if not self._ready:
            assert self.proc is not None, "start() first"
            while not _healthy(self.url):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n"
                                       f"{self.log.read_text()[-3000:]}")
                if time.time() > self._started + self.timeout:
                    raise RuntimeError(f"mlflow server did not answer /health in {self.timeout:.0f}s:\n"
                                       f"{self.log.read_text()[-3000:]}")
                time.sleep(0.2)
            self._ready = True
        return self.url

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)


@contextlib.contextmanager
def mlflow_server(root: Path, timeout: float = 90.0) -> Iterator[MlflowServer]:
    """A started server (its `uri` waits until it answers), stopped on the way out."""
    server = MlflowServer(root, timeout)
    try:
        yield server.start()
    finally:
        server.stop()


def chromium() -> str | None:
    """Debian's chromium (`.ci/run` installs it), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def dump_dom(url: str, profile: Path, *, width: int = 2400, height: int = 1200, budget_ms: int = 30000,
             timeout: float = 120.0) -> str:
    """The DOM of `url` in headless Chromium after `budget_ms` of virtual time (its scripts and
    requests done), with a throwaway profile in `profile`; the browser's whole process group is
    killed on the way out. A wide window: the UI's table draws only the columns that fit."""
    binary = chromium()
    assert binary, "no chromium binary (apt-get install -y chromium)"
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
           f"--window-size={width},{height}", f"--virtual-time-budget={budget_ms}", "--dump-dom", url]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # renderers and helpers too
        proc.wait()
    return out
