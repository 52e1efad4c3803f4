"""A private folder of small results kept across processes: derived numbers (JSON) keyed by the content they were
derived from and by the code that derived them, and the file checks of :mod:`core.runs.hash_cache`.

The folder is ``$KNNGUARD_CACHE_DIR``, else ``$XDG_CACHE_HOME/knnguard``, else ``~/.cache/knnguard``; created
with mode 0700. ``KNNGUARD_CACHE_DIR=off`` turns the cache off. A folder that is not the user's own or that
others may write to is not used (a warning says so): what it holds is believed without a check.

A value's key is the sha256 of its parts (e.g. the run's manifest, which records every file's sha256, and the
setting) and of the source of the ``core`` package, so that any change of the code or of the run is a new key.
A missing, unreadable or malformed entry is a miss; the caller computes the value and stores it again.

>>> key = cache_key("example", {"a": 1})                                       # doctest: +SKIP
>>> put_json("example", key, [1.5, 2.0]); get_json("example", key)            # doctest: +SKIP
[1.5, 2.0]
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["CACHE_ENV", "cache_dir", "code_fingerprint", "cache_key", "get_json", "put_json", "has_mark", "put_mark"]

logger = logging.getLogger(__name__)

CACHE_ENV = "KNNGUARD_CACHE_DIR"
#: Largest JSON entry read back (bytes): the cache holds small results only.
MAX_JSON_BYTES = 1 << 20
_KIND = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
_KEY = re.compile(r"^[0-9a-f]{64}$")
_CORE = Path(__file__).resolve().parents[1]  # core/: the code a cached result derives from


def cache_dir() -> Path | None:
    """The cache folder, created if missing; None when turned off or not safe to use (see the module's text)."""
    env = os.environ.get(CACHE_ENV)
    if env is not None and env.strip().lower() in ("", "off", "0", "none"):
        return None
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "knnguard"
    return _private(base)


@functools.lru_cache(maxsize=8)
def _private(base: Path) -> Path | None:
    try:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(base, follow_symlinks=False)
    except OSError as e:
        logger.warning("cache folder %s cannot be used (%s): every result is computed", base, e)
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        logger.warning("cache folder %s is not a folder of this user that only it may write: not used", base)
        return None
    return base


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 (hex) of the sources of the ``core`` package (every ``.py`` file under it, in path order)."""
    h = hashlib.sha256()
    for p in sorted(_CORE.rglob("*.py")):
        h.update(str(p.relative_to(_CORE)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def cache_key(*parts: Any) -> str:
    """sha256 (hex) of ``parts`` (JSON-serialisable; dicts in key order) and of :func:`code_fingerprint`."""
    text = json.dumps([code_fingerprint(), *parts], sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _path(kind: str, key: str, suffix: str) -> Path | None:
    if not _KIND.match(kind) or not _KEY.match(key):
        raise ValueError(f"bad cache kind or key: {kind!r} {key!r}")
    base = cache_dir()
    return None if base is None else base / kind / f"{key}{suffix}"


def get_json(kind: str, key: str) -> Any | None:
    """The value stored under ``kind``/``key``, or None (a miss: absent, too large, unreadable or not JSON)."""
    path = _path(kind, key, ".json")
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            raw = f.read(MAX_JSON_BYTES + 1)
        if len(raw) > MAX_JSON_BYTES:
            return None
        return json.loads(raw)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        logger.warning("cache entry %s unreadable (%s): computed again", path, e)
        return None


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # readers see the old entry or the whole new one
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def put_json(kind: str, key: str, value: Any) -> None:
    """Store ``value`` (JSON-serialisable) under ``kind``/``key``; a failure to write is logged, not raised."""
    path = _path(kind, key, ".json")
    if path is None:
        return
    try:
        _write(path, json.dumps(value, allow_nan=True).encode())
    except (OSError, TypeError, ValueError) as e:
        logger.warning("cache entry %s not written: %s", path, e)


def has_mark(kind: str, key: str) -> bool:
    """Whether :func:`put_mark` recorded ``kind``/``key``."""
    path = _path(kind, key, "")
    return path is not None and path.is_file()


def put_mark(kind: str, key: str) -> None:
    """Record that ``kind``/``key`` holds (an empty file); a failure to write is logged, not raised."""
    path = _path(kind, key, "")
    if path is None:
        return
    try:
        _write(path, b"")
    except OSError as e:
        logger.warning("cache mark %s not written: %s", path, e)
