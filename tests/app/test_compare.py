"""The Compare page and the per-image detector verdicts, with AppTest on the tiny run."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import ROOT

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from tests.app.apptest import _md_table# noqa: E402  (the pages' tables are Markdown)

TIMEOUT = 120




def _roc(at: AppTest) -> dict:
    from tests.app.apptest import _vega

    return _vega(at, "compare_roc")


def test_compare_overlays_the_chosen_detectors_rocs_with_their_operating_points(tiny_run, monkeypatch):
    from core.evaluation import metrics
    from core.evaluation.rundata import RunData
    from core.evaluation.splits import split_sources
    from core.peers.evaluate import test_scores

    monkeypatch.setenv("KNNGUARD_RUNS_DIR", str(tiny_run.parent))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    at.switch_page("app_pages/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    rep = json.loads((tiny_run / "report.json").read_text())
    attack = list(rep["attacks"])[0]
    at.multiselect(key="compare_detectors").set_value(["dknn", "msp"]).run()
    at.multiselect(key="compare_attacks").set_value([attack]).run()
    assert not at.exception
    from tests.app.apptest import _lines, _mark

    spec = _roc(at)
    lines = list(_lines(spec))
    dots = [la["data"]["values"][0] for la in spec["layer"] if _mark(la) == "point"]
    assert len(lines) == 2 and len(dots) == 2
    data = RunData(tiny_run)
    ev = data.config["evaluation"]
    split = split_sources({s: data.evalset(s)["source"] for s in data.set_names}, ev["validation_share"],
                          data.config["seed"])
    for entry, line, dot in zip(["dknn", "msp"], lines, dots):
        pos, neg, th, _ = test_scores(data, split, rep["positives"], entry, attack)
        assert f"AUC {100 * metrics.roc(pos, neg).auc:.1f}" in line and dot["series"].startswith(line)
        assert dot["x"] == pytest.approx(float(np.mean(neg >= th)))
        assert dot["y"] == pytest.approx(float(np.mean(pos >= th)))
    table = _md_table(at, "detector")
    assert [r["detector"] for r in table] == ["dknn", "msp"]


def _panel_script():
    import os

    from app_ui.selection import Run, manifest, stamp
    from app_ui.widgets.detector_verdicts import show_verdicts
    from core.runs.folder import RunDir

    path = os.environ["KNNGUARD_TEST_RUN"]
    s = stamp(path)
    img = RunDir(path).load_npz("evalsets/authentic.npz")["images"][3]
    show_verdicts(Run(path, s, manifest(path, s), "pca", "dwknn", 20), img)


def test_the_verdict_panel_shows_every_detectors_verdict(tiny_run, monkeypatch):
    from core.peers import store

    monkeypatch.setenv("KNNGUARD_TEST_RUN", str(tiny_run))
    at = AppTest.from_function(_panel_script, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    df = at.dataframe[0].value
    from core.runs.folder import RunDir

    run = RunDir(tiny_run)
    assert list(df["detector"]) == list(store.entries(run))
    for e, verdict, th in zip(df["detector"], df["verdict"], df["threshold"]):
        s = store.load_scores(run, e)["authentic"][3]
        assert verdict == ("trusted" if s >= th - 1e-9 else "rejected")


def test_inspect_shows_each_peer_detectors_verdict_once_their_panel_is_opened(tiny_run, monkeypatch):
    """The panel is an expander with lazy content: closed (the first page's default) no detector is loaded or
    scored; opened, every stored detector's verdict on the current image."""
    from app_ui.widgets import detector_verdicts
    from core.peers import store
    from core.runs.folder import RunDir

    calls = []
    real = detector_verdicts.show_verdicts
    monkeypatch.setattr(detector_verdicts, "show_verdicts", lambda *a, **kw: (calls.append(1), real(*a, **kw)))
    monkeypatch.setenv("KNNGUARD_RUNS_DIR", str(tiny_run.parent))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, [e.value for e in at.exception]

    def tables():
        return [d for d in at.dataframe if {"detector", "verdict", "method"} <= set(d.value.columns)]

    assert calls == [] and not tables()
    at.session_state["inspect_peers"] = True  # the user opens the expander
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert calls == [1] and tables(), "no peer-detector verdicts on Inspect"
    df = tables()[0].value
    assert list(df["detector"]) == list(store.entries(RunDir(tiny_run)))
    assert set(df["verdict"]) <= {"trusted", "rejected"}
