"""Load: 20 concurrent sessions against `streamlit run app.py` on the tiny run, through Inspect, Threshold and Attack.

    .venv/bin/python -m pytest tests/test_load_sessions.py -q -s        # or: -m load

The sessions are browser-like clients of Streamlit's own server on loopback (benchmarks/st_client.py: the app's
websocket protocol, one connection per session), all doing each action at the same moment, each with its own
image, threshold and attack; benchmarks/load.py checks every answer against what that session asked for (any
error box, exception or cross-talk fails). ``KNNGUARD_LOAD_CLIENTS`` changes the count. The same sessions in
real Chromium tabs are tests/test_load.py (fewer: 20 renderers would need more than CI's two cores).
"""
from __future__ import annotations

import os

import pytest

from benchmarks import load
from benchmarks.summary import section

SESSIONS = int(os.environ.get("KNNGUARD_LOAD_CLIENTS", "20"))

pytestmark = pytest.mark.load


def test_concurrent_sessions_no_error_no_cross_talk(tiny_run):
    result = load.measure(tiny_run, SESSIONS, rounds=1, timeout=120)
    print("\n" + section("load", result))
    assert not result["problems"], "\n".join(result["problems"])
    lat = result["latency_ms"]
    assert {a: lat[a]["n"] for a in load.ACTIONS} == {"open": SESSIONS, "inspect": SESSIONS, "page": 2 * SESSIONS,
                                                      "threshold": SESSIONS, "attack": SESSIONS}


def test_a_wrong_answer_is_caught(tiny_run, monkeypatch):
    """The checks can fail: with every stored prediction shifted by one class, each session reports it."""
    truth = load.truth_of(tiny_run)
    n = len(truth["classes"])
    shifted = {**truth, "predicted": [(p + 1) % n for p in truth["predicted"]]}
    monkeypatch.setattr(load, "truth_of", lambda run: shifted)
    result = load.measure(tiny_run, 2, rounds=1, timeout=120)
    assert sum("prediction" in p for p in result["problems"]) == 2, result["problems"]
