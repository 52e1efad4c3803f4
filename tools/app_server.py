"""``streamlit run app.py`` on a free loopback port, for tests, benchmarks and screenshots.

>>> with serve("data/runs") as url:                                   # doctest: +SKIP
...     urllib.request.urlopen(url + "/_stcore/health").status
200
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

__all__ = ["ROOT", "free_port", "serve"]

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(runs_dir: str | os.PathLike, *, port: int | None = None, timeout: float = 90,
          env: dict[str, str] | None = None, pids: list[int] | None = None,
          script: str | os.PathLike = "app.py", log_to: str | os.PathLike | None = None) -> Iterator[str]:
    """Serve the app (or another Streamlit ``script``) over ``runs_dir`` until the block ends.

    Parameters
    ----------
    runs_dir : path
        Folder of runs (``KNNGUARD_RUNS_DIR``).
    port : int, optional
        Default: a free one.
    timeout : float
        Seconds to wait for the health check.
    env : dict, optional
        Added to the server's environment.
    pids : list, optional
        The server's process id is appended to it.
    script : path
        The Streamlit script, relative to the repository (default the app) or absolute.
    log_to : path, optional
        The server's output (its log: the tracebacks users do not see) goes to this file, kept after the block;
        by default to a temporary file deleted with it.

    Yields
    ------
    str
        The app's URL, ``http://127.0.0.1:<port>``.

    Raises
    ------
    RuntimeError
        The server exited before answering (the end of its log is in the message).
    TimeoutError
        It did not answer within ``timeout``.
    """
    port = port or free_port()
    env = dict(os.environ, KNNGUARD_RUNS_DIR=str(runs_dir), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false",
               **(env or {}))
    log = open(log_to, "w+b") if log_to else tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally
    options = ["--server.headless", "true", "--server.port", str(port), "--server.address", "127.0.0.1",
               "--server.fileWatcherType", "none"]
    # The app as scripts/run.sh starts it (its imports made before the server listens); another script as is.
    launch = (["-m", "app_ui.launch"] if Path(ROOT, script).resolve() == ROOT / "app.py"
              else ["-m", "streamlit", "run", str(script)])
    proc = subprocess.Popen([sys.executable, *launch, *options],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if pids is not None:
        pids.append(proc.pid)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"streamlit exited with {proc.returncode}: {log.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"streamlit did not answer on {url} within {timeout:.0f} s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
