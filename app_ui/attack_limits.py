"""Bounded execution of a live attack: a wall-time limit, one running attack per session, a cap on attack threads
in the process, a cancellation flag set at the deadline, and daemon threads (a stopping server never waits for one).
"""
from __future__ import annotations

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
#: Sessions with an attack thread still running (a late one included): at most one each.
_running: set[Any] = set()
_running_lock = threading.Lock()


class AttackTimeout(KnnguardError):
    """The attack ran past :data:`ATTACK_TIMEOUT_S`."""


class AttackBusy(KnnguardError):
    """Every attack slot is taken."""


def session_owner() -> str | None:
    """The current Streamlit session's id (the owner of its attacks), or None outside a session."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return None if ctx is None else ctx.session_id


def run_bounded(fn: Callable[..., Any], /, *args: Any, timeout: float | None = None, owner: Any = None,
                cancel: threading.Event | None = None, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` on a daemon thread, within ``timeout`` seconds in all (default
    :data:`ATTACK_TIMEOUT_S`, read at call time), waiting for a free slot included.

    Parameters
    ----------
    owner : hashable, optional
        Who asks (a session id, :func:`session_owner`): while an attack of ``owner`` still runs, even one past its
        deadline, another is refused, so one session cannot hold every slot of the server.
    cancel : threading.Event, optional
        Set at the deadline: an ``fn`` that checks it each step (the adaptive attacks' ``cancel``) stops there and
        frees its slot; one that cannot (ART's loops) runs to its end, its result dropped.

    Raises
    ------
    AttackBusy
        ``owner`` has an attack running, or no slot of :data:`MAX_ATTACK_THREADS` freed within
        :data:`QUEUE_SHARE` of the limit.
    AttackTimeout
        ``fn`` ran past what is left of the limit. ``fn``'s own exceptions propagate.
    """
    limit = ATTACK_TIMEOUT_S if timeout is None else float(timeout)
    t0 = time.monotonic()
    with _running_lock:
        if owner is not None and owner in _running:
            raise AttackBusy("your previous attack is still running (it stops at its deadline)")
        if owner is not None:
            _running.add(owner)
    wait = limit * QUEUE_SHARE
    if not _attack_slots.acquire(blocking=False) and not _attack_slots.acquire(timeout=wait):
        _forget(owner)
        raise AttackBusy(f"{MAX_ATTACK_THREADS} attacks kept every slot of this server busy for {wait:g} s")
    left = max(0.0, limit - (time.monotonic() - t0))
    done = threading.Event()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller below
            box["error"] = e
        finally:
            _attack_slots.release()
            _forget(owner)
            done.set()

    try:  # a daemon: the interpreter's exit (a stopping server) does not join it
        threading.Thread(target=work, name="knnguard-attack", daemon=True).start()
    except BaseException:
        _attack_slots.release()
        _forget(owner)
        raise
    if not done.wait(left):
        if cancel is not None:
            cancel.set()
        raise AttackTimeout(f"stopped after {limit:g} s")
    if "error" in box:
        raise box["error"]
    return box["result"]


def _forget(owner: Any) -> None:
    with _running_lock:
        _running.discard(owner)
