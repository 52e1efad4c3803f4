"""A private folder of small results kept across processes: derived numbers (JSON) keyed by the content they were
derived from and by the code that derived them, and the file checks of :mod:`core.runs.hash_cache`.

The folder is ``$KNNGUARD_CACHE_DIR``, else ``$XDG_CACHE_HOME/knnguard``, else ``~/.cache/knnguard``; created
with mode 0700. ``KNNGUARD_CACHE_DIR=off`` turns the cache off. What the folder holds is believed without a check,
so every use opens it anew by descriptor, one component at a time from ``/`` without following a link
(``O_NOFOLLOW``, ``openat``), and refuses it (a warning, then no cache) unless every parent is owned by root or the
user and writable by no one else (sticky folders such as ``/tmp`` excepted) and the folder itself is the user's and
writable by no one else: a parent swapped for a link after one check cannot redirect a later read.

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
import secrets
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


def _configured() -> Path | None:
    """The cache folder the environment names, unchecked; None when turned off."""
    env = os.environ.get(CACHE_ENV)
    if env is not None and env.strip().lower() in ("", "off", "0", "none"):
        return None
    return Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "knnguard"


def cache_dir() -> Path | None:
    """The cache folder, created if missing; None when turned off or not safe to use (see the module's text)."""
    base = _configured()
    return None if base is None else _private(base)


class _Unsafe(OSError):
    """A component of the cache folder's path that others could swap or write."""


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _open_component(name: str, parent: int, *, create: bool) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        if not create:
            raise
        with contextlib.suppress(FileExistsError):  # another process may create it at the same time
            os.mkdir(name, 0o700, dir_fd=parent)
        return os.open(name, _DIR_FLAGS, dir_fd=parent)


def _open_private(base: Path, *, create: bool = True) -> int:
    """A descriptor of the folder ``base``, opened from ``/`` one component at a time without following a link,
    each component checked as the module's text says (created with mode 0700 when missing and ``create``).

    Raises
    ------
    OSError
        A component is missing, a link or not a folder; :class:`_Unsafe` when others could swap or write one.
    """
    uid = os.getuid()
    parts = Path(os.path.abspath(base)).parts
    fd = os.open("/", _DIR_FLAGS)
    try:
        for i, name in enumerate(parts[1:], start=1):
            st = os.fstat(fd)  # the parent of ``name``: nobody else may rename what it holds
            if st.st_uid not in (0, uid) or (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
                raise _Unsafe(f"{Path(*parts[:i])} may be changed by others (owner {st.st_uid}, mode {st.st_mode:o})")
            nfd = _open_component(name, fd, create=create)
            os.close(fd)
            fd = nfd
        st = os.fstat(fd)
        if st.st_uid != uid or st.st_mode & 0o022:
            raise _Unsafe(f"{base} is not a folder of this user that only it may write (mode {st.st_mode:o})")
        return fd
    except BaseException:
        os.close(fd)
        raise


@functools.lru_cache(maxsize=8)
def _warn_unusable(base: Path, why: str) -> None:
    logger.warning("cache folder %s cannot be used (%s): every result is computed", base, why)


def _private(base: Path) -> Path | None:
    """``base`` when :func:`_open_private` accepts it now (a check on every call, not a remembered one)."""
    try:
        os.close(_open_private(base))
    except OSError as e:
        _warn_unusable(base, str(e))
        return None
    return base


@contextlib.contextmanager
def _entry_dir(kind: str, *, create: bool):
    """A descriptor of the cache's ``kind`` folder, opened by :func:`_open_private`; None when the cache is off."""
    base = _configured()
    try:
        fd = None if base is None else _open_private(base)  # one walk from / per use, checked as it goes
    except OSError as e:
        _warn_unusable(base, str(e))
        fd = None
    if fd is None:
        yield None
        return
    try:
        kfd = _open_component(kind, fd, create=create)
    finally:
        os.close(fd)
    try:
        st = os.fstat(kfd)
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise _Unsafe(f"{base / kind} is not a folder of this user that only it may write")
        yield kfd
    finally:
        os.close(kfd)


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


def _check(kind: str, key: str) -> None:
    if not _KIND.match(kind) or not _KEY.match(key):
        raise ValueError(f"bad cache kind or key: {kind!r} {key!r}")


def _read(kind: str, name: str, limit: int) -> bytes | None:
    """Up to ``limit`` + 1 bytes of the regular file ``kind``/``name`` of the cache; None when off or absent."""
    with _entry_dir(kind, create=False) as dfd:
        if dfd is None:
            return None
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=dfd)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return None
            return f.read(limit + 1)


def get_json(kind: str, key: str) -> Any | None:
    """The value stored under ``kind``/``key``, or None (a miss: absent, too large, unreadable or not JSON)."""
    _check(kind, key)
    try:
        raw = _read(kind, f"{key}.json", MAX_JSON_BYTES)
        if raw is None or len(raw) > MAX_JSON_BYTES:
            return None
        return json.loads(raw)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        logger.warning("cache entry %s/%s unreadable (%s): computed again", kind, key, e)
        return None


def _write(kind: str, name: str, data: bytes) -> None:
    """``data`` as the cache's ``kind``/``name``, written beside it and renamed onto it (readers see the old
    entry or the whole new one), every step relative to the folder's descriptor."""
    with _entry_dir(kind, create=True) as dfd:
        if dfd is None:
            return
        tmp = f".tmp-{name}-{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600,
                     dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise


def put_json(kind: str, key: str, value: Any) -> None:
    """Store ``value`` (JSON-serialisable) under ``kind``/``key``; a failure to write is logged, not raised."""
    _check(kind, key)
    try:
        _write(kind, f"{key}.json", json.dumps(value, allow_nan=True).encode())
    except (OSError, TypeError, ValueError) as e:
        logger.warning("cache entry %s/%s not written: %s", kind, key, e)


def has_mark(kind: str, key: str) -> bool:
    """Whether :func:`put_mark` recorded ``kind``/``key`` (a regular file, reached without following a link)."""
    _check(kind, key)
    try:
        return _read(kind, key, 0) is not None
    except OSError:
        return False


def put_mark(kind: str, key: str) -> None:
    """Record that ``kind``/``key`` holds (an empty file); a failure to write is logged, not raised."""
    _check(kind, key)
    try:
        _write(kind, key, b"")
    except OSError as e:
        logger.warning("cache mark %s/%s not written: %s", kind, key, e)
