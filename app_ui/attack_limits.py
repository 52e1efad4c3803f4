"""Bounded execution of a live attack: a wall-time limit and a cap on concurrent attack threads."""
from __future__ import annotations

import concurrent.futures as cf
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from core.errors import KnnguardError

#: Wall-time limit of one live attack (seconds; ``KNNGUARD_ATTACK_TIMEOUT_S`` overrides it). The attack runs on a
#: worker thread; past the limit the page says so and carries on, and the late result is discarded.
ATTACK_TIMEOUT_S = float(os.environ.get("KNNGUARD_ATTACK_TIMEOUT_S", "20"))
#: At most this many attack threads at once in the process (abandoned ones included): a further request waits for
#: a free one (a queue, so many users clicking at once all get their attack), and past :data:`QUEUE_SHARE` of its
#: limit is refused with a message instead of piling up threads on a busy server.
MAX_ATTACK_THREADS = 4
#: A request waits for a slot at most this share of its time limit (then :class:`AttackBusy`), so an attack that
#: gets one has at least the rest to run: one started with seconds to go would time out and hold the slot anyway.
QUEUE_SHARE = 0.5
_attack_slots = threading.BoundedSemaphore(MAX_ATTACK_THREADS)


class AttackTimeout(KnnguardError):
    """The attack ran past :data:`ATTACK_TIMEOUT_S`."""


class AttackBusy(KnnguardError):
    """Every attack slot is taken."""


def run_bounded(fn: Callable[..., Any], /, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` on a worker thread, within ``timeout`` seconds in all (default
    :data:`ATTACK_TIMEOUT_S`, read at call time), waiting for a free slot included.

    Raises
    ------
    AttackBusy
        No slot of :data:`MAX_ATTACK_THREADS` freed within :data:`QUEUE_SHARE` of the limit.
    AttackTimeout
        ``fn`` ran past what is left of the limit (the thread finishes on its own and its result is dropped).
        ``fn``'s own exceptions propagate.
    """
    limit = ATTACK_TIMEOUT_S if timeout is None else float(timeout)
    t0 = time.monotonic()
    wait = limit * QUEUE_SHARE
    if not _attack_slots.acquire(blocking=False) and not _attack_slots.acquire(timeout=wait):
        raise AttackBusy(f"{MAX_ATTACK_THREADS} attacks kept every slot of this server busy for {wait:g} s")
    left = max(0.0, limit - (time.monotonic() - t0))
    pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="knnguard-attack")
    try:
        fut = pool.submit(fn, *args, **kwargs)
    except BaseException:
        _attack_slots.release()
        pool.shutdown(wait=False)
        raise
    fut.add_done_callback(lambda _f: _attack_slots.release())
    pool.shutdown(wait=False)  # the thread ends when fn returns; nothing waits for it
    try:
        return fut.result(timeout=left)
    except cf.TimeoutError:
        raise AttackTimeout(f"stopped after {limit:g} s") from None
