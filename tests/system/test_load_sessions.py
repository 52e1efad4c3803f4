"""Load: 20 concurrent sessions against `streamlit run app.py` on the tiny run, through Inspect, Threshold and Attack.

    .venv/bin/python -m pytest tests/system/test_load_sessions.py -q -s        # or: -m load

The sessions are browser-like clients of Streamlit's own server on loopback (tools/st_client.py: the app's
websocket protocol, one connection per session), all doing each action at the same moment, each with its own
image, threshold and attack; benchmarks/load.py checks every answer against what that session asked for (any
error box, exception or cross-talk fails). ``KNNGUARD_LOAD_CLIENTS`` changes the count. The same sessions in
real Chromium tabs are tests/system/test_load.py (fewer: 20 renderers would need more than CI's two cores).
"""
from __future__ import annotations

import os

import pytest

from benchmarks import load
from benchmarks.summary import section

SESSIONS = int(os.environ.get("KNNGUARD_LOAD_CLIENTS", "20"))

pytestmark = pytest.mark.load


def test_concurrent_sessions_no_error_no_cross_talk(tiny_run, monkeypatch):
    # 20 attacks at once share 4 slots, and one waits at most half the attack time limit for a slot (10 s): on a
    # slower CPU (or one core) the last would be told the server is busy. This test is about cross-talk, not
    # latency (benchmarks/load.py measures that), so the server gets a generous limit.
    monkeypatch.setenv("KNNGUARD_ATTACK_TIMEOUT_S", "240")
    result = load.measure(tiny_run, SESSIONS, rounds=1, timeout=240)
    print("\n" + section("load", result))
    assert not result["problems"], "\n".join(result["problems"])
    lat = result["latency_ms"]
    assert {a: lat[a]["n"] for a in load.ACTIONS} == {"open": SESSIONS, "inspect": SESSIONS, "page": 2 * SESSIONS,
                                                      "threshold": SESSIONS, "attack": SESSIONS}


def test_a_wrong_prediction_is_caught(tiny_run, monkeypatch):
    """The checks can fail: with every stored prediction shifted by one class, each session reports it, on the
    Inspect page and in the attack result."""
    truth = load.truth_of(tiny_run)
    n = len(truth["classes"])
    shifted = {**truth, "predicted": [(p + 1) % n for p in truth["predicted"]]}
    monkeypatch.setattr(load, "truth_of", lambda run: shifted)
    result = load.measure(tiny_run, 2, rounds=1, timeout=120)
    assert sum("inspect: image #" in p and "prediction" in p for p in result["problems"]) == 2, result["problems"]
    assert sum("attack: attack result" in p for p in result["problems"]) == 2, result["problems"]


def test_a_session_served_someone_elses_state_is_caught(tiny_run, monkeypatch):
    """Each session's requests are changed on the way out (another image, threshold and eps than it checks
    for), as cross-talk would change them: every check of every session reports it."""
    from tools.st_client import Session

    set_int, set_slider = Session.set_int, Session.set_slider
    monkeypatch.setattr(Session, "set_int", lambda self, key, v: set_int(self, key, v + 1))
    monkeypatch.setattr(Session, "set_slider",
                        lambda self, key, v: set_slider(self, key, v + (0.002 if key == "th_threshold" else 3 / 255)))
    result = load.measure(tiny_run, 2, rounds=1, timeout=120)
    found = result["problems"]
    for what in ("the page shows another", "threshold shows", "attack page lost image", "L∞"):
        assert sum(what in p for p in found) == 2, (what, found)


def test_streamlit_config_turns_off_the_full_gc_after_each_rerun():
    """The setting the load figures rest on (README, Reliability): Streamlit's default runs gc.collect(2) after
    every script run, ~400 ms with torch and ART loaded (`python -m benchmarks.load --post-script-gc`)."""
    import tomllib

    from benchmarks._common import ROOT

    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["runner"]["postScriptGC"] is False
