"""Atomic file writes: a temporary name beside the final one, renamed onto it only when the write succeeded."""
from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["TMP_SUFFIX", "TMP_NAME", "atomic_path"]

TMP_SUFFIX = ".tmp"
#: Temporary names made by :func:`atomic_path`: ``.<final name>.knnguard-<pid>-<random>.tmp``.
TMP_NAME = re.compile(r"\..+\.knnguard-\d+-[A-Za-z0-9_]+\.tmp")


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only if the block succeeds.

    The temporary name matches :data:`TMP_NAME` (``.<name>.knnguard-<pid>-<random>.tmp``) and is removed on
    error, so readers never see a partial file and cleaning never touches a file it did not make.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.knnguard-{os.getpid()}-", suffix=TMP_SUFFIX,
                               dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
