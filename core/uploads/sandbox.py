"""Decode uploads in worker processes bounded in CPU time, memory and wall-clock time.

:func:`decode` (parent side) hands the bytes to an idle worker of a small persistent pool and returns
``(mode, (width, height), pixels)`` or raises :class:`core.uploads.policy.UploadError`; :func:`serve` is the
worker's loop around :func:`core.uploads.decode.decode_in_process`. POSIX only. How the worker is isolated and what
each limit answers: see docs/design.md#upload-sandbox.

Examples
--------
>>> mode, (w, h), pixels = decode(png_bytes, max_pixels=4096 * 4096)   # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import selectors
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = [
    "DECODE_CPU_SECONDS",
    "DECODE_MEMORY_BYTES",
    "DECODE_WALL_SECONDS",
    "POOL_SIZE",
    "decode",
    "serve",
    "shutdown",
]

logger = logging.getLogger(__name__)

DECODE_CPU_SECONDS: int = 2
"""CPU seconds one decode may use (RLIMIT_CPU has whole-second steps, so between 2 and 3 in practice)."""

DECODE_WALL_SECONDS: float = 10.0
"""Wall-clock seconds the parent waits for one decode (sending the bytes and receiving the pixels included)."""

DECODE_MEMORY_BYTES: int = 1 << 30
"""Address-space limit of a worker process (interpreter, Pillow and numpy included)."""

POOL_SIZE: int = 2
"""Most worker processes alive at once; further concurrent uploads wait for a free one."""

_REQUEST = struct.Struct("<QQ")  # max_pixels, number of bytes
_REPLY = struct.Struct("<BQQ")  # status, header length, payload length
_OK, _REFUSED, _BUG = 0, 1, 2
_ROOT = str(Path(__file__).resolve().parents[2])
_CHILD_CODE = f"import sys; sys.path.insert(0, {_ROOT!r}); from core.uploads.sandbox import serve; serve()"
_START_SECONDS = 60.0  # a worker's imports, on a loaded machine
_CHILD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "LC_ALL": "C"}


class _Died(Exception):
    """The worker ended or stopped answering: ``slow`` when a time limit ended it."""

    def __init__(self, slow: bool, detail: str) -> None:
        super().__init__(detail)
        self.slow = slow


class _Worker:
    """One child process and its pipes."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-B", "-c", _CHILD_CODE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd="/",
            env=_CHILD_ENV,
            close_fds=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.wfd, self.rfd = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        os.set_blocking(self.wfd, False)
        os.set_blocking(self.rfd, False)

    def request(self, data: bytes, max_pixels: int, deadline: float) -> tuple[int, dict, bytes]:
        out = memoryview(_REQUEST.pack(max_pixels, len(data)) + data)
        sel = selectors.DefaultSelector()
        try:
            sel.register(self.wfd, selectors.EVENT_WRITE)
            while out:
                self._wait(sel, deadline)
                try:
                    out = out[os.write(self.wfd, out) :]
                except BlockingIOError:
                    continue
                except BrokenPipeError:
                    raise self._dead() from None
            sel.unregister(self.wfd)
            sel.register(self.rfd, selectors.EVENT_READ)
            status, hlen, plen = _REPLY.unpack(self._read(sel, _REPLY.size, deadline))
            header = json.loads(self._read(sel, hlen, deadline))
            payload = self._read(sel, plen, deadline)
        finally:
            sel.close()
        return status, header, payload

    def _wait(self, sel: selectors.BaseSelector, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0 or not sel.select(left):
            self.kill()
            raise _Died(True, "wall-clock limit")

    def ready(self, timeout: float) -> None:
        """Wait for the worker's start-up byte (its imports done)."""
        sel = selectors.DefaultSelector()
        try:
            sel.register(self.rfd, selectors.EVENT_READ)
            if self._read(sel, 1, time.monotonic() + timeout) != b"R":
                raise _Died(False, "bad start-up byte")
        except _Died as exc:
            self.kill()
            raise RuntimeError(f"the upload decode worker did not start: {exc}") from None
        finally:
            sel.close()

    def _read(self, sel: selectors.BaseSelector, n: int, deadline: float) -> bytes | bytearray:
        buf = bytearray(n)
        view, pos = memoryview(buf), 0
        while pos < n:
            self._wait(sel, deadline)
            try:
                got = os.readv(self.rfd, [view[pos:]])
            except BlockingIOError:
                continue
            if not got:
                raise self._dead()
            pos += got
        return bytes(buf) if n < 4096 else buf

    def _dead(self) -> _Died:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.returncode
        return _Died(code == -signal.SIGXCPU, f"exit status {code}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass

    def close(self) -> None:
        """Ask the worker to exit (EOF on its stdin), then make sure it has."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


class _Pool:
    def __init__(self, size: int) -> None:
        self.pid = os.getpid()
        self.slots = threading.BoundedSemaphore(size)
        self.lock = threading.Lock()
        self.idle: list[_Worker] = []

    def decode(self, data: bytes, max_pixels: int) -> tuple[int, dict, bytes]:
        with self.slots:
            with self.lock:
                worker = self.idle.pop() if self.idle else None
            if worker is None:
                worker = _Worker()
                worker.ready(_START_SECONDS)
            deadline = time.monotonic() + DECODE_WALL_SECONDS
            try:
                reply = worker.request(data, max_pixels, deadline)
            except BaseException:
                worker.kill()
                raise
            with self.lock:
                self.idle.append(worker)
            return reply

    def close(self) -> None:
        with self.lock:
            workers, self.idle = self.idle, []
        for w in workers:
            w.close()


_pool: _Pool | None = None
_pool_lock = threading.Lock()


def _get_pool() -> _Pool:
    global _pool
    with _pool_lock:
        if _pool is None or _pool.pid != os.getpid():
            _pool = _Pool(POOL_SIZE)
        return _pool


def _forget_pool_after_fork() -> None:
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_after_fork)


def shutdown() -> None:
    """Stop every idle worker of this process's pool (the next :func:`decode` starts fresh ones)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None and pool.pid == os.getpid():
        pool.close()


atexit.register(shutdown)


def decode(data: bytes, *, max_pixels: int) -> tuple[str, tuple[int, int], bytes]:
    """Decode an upload in a bounded worker process.

    Parameters
    ----------
    data : bytes
        The whole uploaded file.
    max_pixels : int
        Largest ``width * height`` accepted, as :func:`core.uploads.read.read_upload`.

    Returns
    -------
    mode : {"RGB", "L"}
    size : tuple of int
        ``(width, height)``.
    pixels : bytes
        ``width * height * len(mode)`` bytes, rows top to bottom (``Image.frombytes`` layout).

    Raises
    ------
    UploadError
        The worker's refusal, or ``"too_slow"`` / ``"decoder_failed"`` when it was stopped.
    RuntimeError
        An unexpected exception inside the worker (a bug, not a bad upload).
    """
    from core.uploads.policy import UploadError

    try:
        status, header, payload = _get_pool().decode(data, max_pixels)
    except _Died as exc:
        logger.debug("upload decode worker stopped: %s", exc)
        if exc.slow:
            raise UploadError(
                "too_slow",
                f"Decoding this image needed more than {DECODE_CPU_SECONDS} s of computing time, the limit for "
                "an upload; it was stopped. Re-save it as an ordinary PNG or JPEG and try again.",
            ) from None
        raise UploadError(
            "decoder_failed",
            "The image decoder stopped abnormally on this file (it may need more memory than an upload may "
            "use); it was refused. Re-save it as an ordinary PNG or JPEG and try again.",
        ) from None
    for line in header.get("log", ()):
        logging.getLogger("core.uploads.decode").debug("[decode worker] %s", line)
    if status == _OK:
        return header["mode"], (header["width"], header["height"]), payload
    if status == _REFUSED:
        raise UploadError(header["reason"], header["message"])
    raise RuntimeError(f"the upload decode worker failed: {header.get('error')}")


# ------------------------------------------------------------------------------------------ worker side


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _read_exact(fd: int, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, min(n - len(buf), 1 << 22))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def serve() -> None:
    """The worker's loop: read a request from stdin, decode, reply on stdout; exit at EOF."""
    import resource

    from PIL import Image

    from core.uploads.decode import decode_in_process
    from core.uploads.policy import NO_MEMORY_MESSAGE, UploadError

    Image.init()  # import every plugin now, before file access is limited
    rfd, wfd = 0, os.dup(1)
    os.dup2(2, 1)  # stray C-library prints go to stderr, never into the reply stream
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write to a file fails instead of killing
    _, as_hard = resource.getrlimit(resource.RLIMIT_AS)
    as_limit = DECODE_MEMORY_BYTES if as_hard == resource.RLIM_INFINITY else min(DECODE_MEMORY_BYTES, as_hard)
    resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))
    collect = _Collect()
    log = logging.getLogger("core.uploads.decode")  # what decode_in_process logs to
    log.addHandler(collect)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    _write_all(wfd, b"R")
    while True:
        head = _read_exact(rfd, _REQUEST.size)
        if head is None:
            return
        max_pixels, n = _REQUEST.unpack(head)
        data = _read_exact(rfd, n)
        if data is None:
            return
        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = math.ceil(usage.ru_utime + usage.ru_stime + DECODE_CPU_SECONDS)
        if cpu_hard != resource.RLIM_INFINITY:
            soft = min(soft, cpu_hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, cpu_hard))
        collect.lines = []
        payload = b""
        try:
            img = decode_in_process(data, max_pixels=max_pixels)
            payload = img.tobytes()
            status, header = _OK, {"mode": img.mode, "width": img.width, "height": img.height}
            del img
        except UploadError as exc:
            status, header = _REFUSED, {"reason": exc.reason, "message": str(exc)}
        except MemoryError:
            payload = b""
            status, header = _REFUSED, {"reason": "too_large", "message": NO_MEMORY_MESSAGE}
        except Exception as exc:  # a bug: reported to the parent, which raises it  # noqa: BLE001
            status, header = _BUG, {"error": f"{type(exc).__name__}: {exc}"}
        del data
        header["log"] = collect.lines
        raw = json.dumps(header).encode()
        _write_all(wfd, _REPLY.pack(status, len(raw), len(payload)) + raw)
        _write_all(wfd, payload)
