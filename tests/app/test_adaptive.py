"""The Adaptive attacks page and the Attack page's "attack the detector too" panel, with AppTest on the tiny run."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
pytest.importorskip("streamlit")
from tests.app.apptest import _ok# noqa: E402,F401  (shared AppTest setup)


def test_adaptive_page_plots_the_reported_curves(app, tiny_run):
    ad = json.loads((tiny_run / "report.json").read_text())["adaptive"]
    _ok(app.switch_page("app_pages/adaptive.py").run())
    from tests.app.apptest import _lines, _vega

    for norm in ("linf", "l2"):
        lines = list(_lines(_vega(app, f"adp_curve_{norm}")).values())
        assert len(lines) == 3
        for (x, y), variant in zip(lines, ("oblivious", "adaptive_layer", "adaptive_all")):
            c = ad["curves"][variant][norm]
            assert x == c["budgets"]
            assert np.allclose(y, [100 * v[0] for v in c["guarded_success"]])
    text = " ".join(m.value for m in app.markdown)
    assert "unbounded linf budget" in text
    from app_ui.charts.bars import ci_text
    from tests.app.apptest import _md_table

    rows = _md_table(app, "κ")  # Carlini-Wagner at growing confidence, one row per κ
    assert [float(r["κ"]) for r in rows] == [r["kappa"] for r in ad["cw_confidence"]]
    assert [r["guarded success %"] for r in rows] == [ci_text(r["guarded_success"]) for r in ad["cw_confidence"]]


def test_adaptive_panel_runs_oblivious_and_adaptive(app, tiny_run):
    from core.detector import Detector

    _ok(app.switch_page("app_pages/attack.py").run())
    assert not [b for b in app.button if b.key == "adp_run"]  # hidden until the switch is on
    _ok(app.toggle(key="adp_on").set_value(True).run())
    _ok(app.slider(key="adp_steps").set_value(10).run())
    _ok(app.button(key="adp_run").click().run())
    res = app.session_state["adp_result"]
    assert set(res["adv"]) == {"oblivious", "adaptive"}
    det = Detector.load(tiny_run, verify="none")
    rep = json.loads((tiny_run / "report.json").read_text())
    layer = rep["operating_point"]["layer"]
    table = app.dataframe[-1].value  # the panel's table (the page shows no other before an attack runs)
    for name, adv in res["adv"].items():
        s = det.score(adv[None])
        row = table[table["attack"] == name].iloc[0]
        assert row["prediction"] == det.classes[int(s.predicted[0])]
        assert np.isclose(row[f"score {layer}"], s.scores[layer][0])
        assert "*" not in row["verdict at the operating point"]  # a table cell shows no Markdown
    bullets = [m.value for m in app.markdown if m.value.startswith("- oblivious") or m.value.startswith("- adaptive")]
    assert len(bullets) == 2


def test_repeated_or_unknown_layers_share_one_bounded_surrogate(app, tiny_run, monkeypatch):
    """Finding 10 of the security issue: the multiselect's value comes from the browser and Streamlit keeps
    duplicates; each distinct ``tuple(aim)`` built a new cached surrogate (no bound), so 20 requests with
    ``[...] + ["conv1"] * i`` took a server from 0.94 to 3.96 GB. The key is now the run's layers named, once each,
    in the run's order, and the cache keeps a few."""
    from app_ui.widgets import adaptive_panel

    asked = []
    real = adaptive_panel._surrogate

    def recording(path, stamp, layers, mode):
        asked.append(layers)
        return real(path, stamp, layers, mode)

    monkeypatch.setattr(adaptive_panel, "_surrogate", recording)
    _ok(app.switch_page("app_pages/attack.py").run())
    _ok(app.toggle(key="adp_on").set_value(True).run())
    _ok(app.slider(key="adp_steps").set_value(5).run())
    layers = list(app.multiselect(key="adp_layers").options)
    for extra in (1, 3):
        app.session_state["adp_layers"] = [layers[-1], layers[0]] + [layers[0]] * extra
        _ok(app.button(key="adp_run").click().run())
    assert asked == [(layers[0], layers[-1])] * 2
    assert adaptive_panel.aimed_layers(layers, ["nope", layers[-1], layers[-1]]) == (layers[-1],)
    assert adaptive_panel.aimed_layers(layers, ["nope"]) == ()
    assert 0 < adaptive_panel.SURROGATES_KEPT <= 8
