"""Who may write a run folder: only a knnguard run (or a new, empty folder), and one precompute at a time.

:func:`check_owned` refuses a folder that holds anything but a knnguard run; :func:`hold` takes an exclusive,
non-blocking ``flock`` on ``<run>/.knnguard.lock`` and writes the holder (pid, host, start time) into it, so a
second precompute on the same run stops at once and names the first. The kernel drops the lock when the
holder exits, however it exits, so a killed run never leaves a stale lock.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core._util.atomic import TMP_NAME
from core.errors import ArtefactError, KnnguardError
from core.runs.files import MANIFEST
from core.runs.folder import RunDir

__all__ = ["LOCK_NAME", "NotARun", "RunBusy", "check_owned", "hold"]

log = logging.getLogger(__name__)

LOCK_NAME = ".knnguard.lock"
#: How long to wait for a holder that has just taken the lock to write its details.
_HOLDER_WAIT_S = 1.0


class NotARun(KnnguardError, RuntimeError):
    """The folder exists and is not a knnguard run; the message names it and how to choose another."""


class RunBusy(KnnguardError, RuntimeError):
    """Another process holds the run's lock; the message names it (pid, host, start time)."""


def _is_manifest(path: Path) -> bool:
    """Whether ``path/manifest.json`` is a knnguard manifest (a JSON object with ``files`` and ``stages``)."""
    try:
        raw = json.loads((path / MANIFEST).read_text())
        RunDir(path).manifest  # known keys and types only
    except (OSError, ValueError, ArtefactError):
        return False
    return isinstance(raw, dict) and {"files", "stages"} <= raw.keys()


def check_owned(path: str | os.PathLike) -> None:
    """Refuse a run folder that exists and is neither empty nor a knnguard run.

    Parameters
    ----------
    path : str or PathLike
        The run folder (``<runs_dir>/<name>``).

    Raises
    ------
    NotARun
        ``path`` is not a folder, or holds files without a knnguard ``manifest.json``.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise NotARun(f"{path} exists and is not a folder; choose another name (--set name=...)")
    if (path / MANIFEST).exists():
        if _is_manifest(path):
            return
        raise NotARun(f"{path} has a {MANIFEST} that is not a knnguard manifest; refusing to write there: "
                      "choose another name (--set name=...) or runs_dir")
    others = sorted(n for n in os.listdir(path) if n != LOCK_NAME and not TMP_NAME.fullmatch(n))
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise NotARun(f"{path} is not empty ({shown}) and is not a knnguard run (no {MANIFEST}); precompute "
                      "writes only into a new or empty folder or its own run: choose another name "
                      "(--set name=...) or runs_dir")


def _holder(fd: int) -> str:
    """The lock file's holder, as words (waits briefly for a holder that has not written it yet)."""
    deadline = time.monotonic() + _HOLDER_WAIT_S
    while True:
        raw = os.pread(fd, 4096, 0)
        if raw or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    try:
        h = json.loads(raw)
        return f"pid {h['pid']} on host {h['host']}, started {h['started']}"
    except (ValueError, TypeError, KeyError):
        return "holder unknown: its lock file has no details yet"


@contextmanager
def hold(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the run folder's exclusive lock inside the block (creating the folder).

    Parameters
    ----------
    path : str or PathLike
        The run folder.

    Yields
    ------
    Path
        The lock file.

    Raises
    ------
    RunBusy
        Another process holds the lock; the message names its pid, host and start time.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lock = path / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunBusy(f"{path} is being written by another precompute ({_holder(fd)}); wait for it to "
                          "finish, or choose another name (--set name=...)") from None
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}).encode(), 0)
        log.debug("holding %s", lock)
        try:
            yield lock
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)
