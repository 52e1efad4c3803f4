"""app_ui/attack_limits.py: one running attack per session, the deadline's cancellation flag, and a server that
stops at once with an attack still running (issue 34, finding 11)."""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from app_ui import attack_limits
from tests.conftest import ROOT


@pytest.fixture()
def own_slots(monkeypatch):
    """Slots and sessions of this test's own (other tests' late threads free theirs when they end)."""
    monkeypatch.setattr(attack_limits, "_attack_slots", threading.BoundedSemaphore(attack_limits.MAX_ATTACK_THREADS))
    monkeypatch.setattr(attack_limits, "_running", set())


def _wait_until(cond, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_a_session_runs_one_attack_at_a_time_even_past_its_deadline(own_slots):
    gate = threading.Event()
    with pytest.raises(attack_limits.AttackTimeout):
        attack_limits.run_bounded(gate.wait, 30, timeout=0.05, owner="session-a")
    with pytest.raises(attack_limits.AttackBusy, match="previous attack is still running"):
        attack_limits.run_bounded(lambda: 1, timeout=1, owner="session-a")  # its late attack still holds a slot
    assert attack_limits.run_bounded(lambda: 2, timeout=5, owner="session-b") == 2  # another session is served
    gate.set()
    assert _wait_until(lambda: "session-a" not in attack_limits._running)
    assert attack_limits.run_bounded(lambda: 3, timeout=5, owner="session-a") == 3


def test_the_deadline_sets_the_cancel_flag_and_a_cancelled_attack_frees_its_slot(own_slots):
    flag = threading.Event()
    steps = []

    def attack() -> None:  # checks its flag each step, as the adaptive attacks do
        while not flag.is_set():
            steps.append(1)
            time.sleep(0.01)

    t0 = time.monotonic()
    with pytest.raises(attack_limits.AttackTimeout):
        attack_limits.run_bounded(attack, timeout=0.2, owner="s", cancel=flag)
    assert flag.is_set() and time.monotonic() - t0 < 5
    assert _wait_until(lambda: not attack_limits._running)  # the thread ended: its session may attack again
    for _ in range(attack_limits.MAX_ATTACK_THREADS):  # and every slot is free
        assert attack_limits._attack_slots.acquire(blocking=False)


def test_errors_of_the_attack_reach_the_caller_and_free_the_session(own_slots):
    def broken():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        attack_limits.run_bounded(broken, timeout=5, owner="s")
    assert attack_limits.run_bounded(lambda: 4, timeout=5, owner="s") == 4


def test_a_process_with_an_abandoned_attack_exits_at_once():
    """An attack thread past its deadline never holds up the interpreter's exit (a stopping server): the old
    executor threads were joined at exit, so a SIGTERM waited for every abandoned attack."""
    code = ("import time\nfrom app_ui import attack_limits as a\n"
            "try:\n    a.run_bounded(time.sleep, 60, timeout=0.2)\nexcept a.AttackTimeout:\n    print('timed out')\n")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "timed out" in out.stdout, out.stderr[-2000:]
    assert time.monotonic() - t0 < 30  # the abandoned attack sleeps 60 s
