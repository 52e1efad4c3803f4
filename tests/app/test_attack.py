"""The Attack page (AppTest)."""
from __future__ import annotations

import re

import numpy as np

from tests.app.apptest import PAGES, _bar_rows, _markdown, _ok, _vega


# ------------------------------------------------------------------------------------------------ Attack
def test_attack_fgsm_shows_before_after_scores_for_every_layer(app, truth):
    _ok(app.switch_page(PAGES["attack"]).run())
    assert app.selectbox(key="atk_name").value == "fgsm"
    eps = app.slider(key="atk_fgsm_eps")
    assert (eps.min, eps.max) == (0.001, 1.0)  # bounded by core.attacks.param_spec
    _ok(eps.set_value(0.2).run())
    _ok(app.button(key="atk_run").click().run())
    heads = [m for m in _markdown(app) if m.startswith("### The attack")]
    assert len(heads) == 1 and re.fullmatch(r"### The attack (failed: the CNN still says|succeeded: the CNN now says)"
                                            r" .+\.( The detector (caught|did not catch) it: .+)?", heads[0])
    bars = _bar_rows(_vega(app, "atk_chart"))
    assert [(b["when"], b["layer"]) for b in bars] == [(w, la) for w in ("before attack", "after attack")
                                                        for la in truth["layers"]]
    adv = app.session_state["atk_result"]["adv"]
    orig = app.session_state["current"]["image"]
    assert np.abs(adv.astype(int) - orig.astype(int)).max() <= round(0.2 * 255) + 1
    assert app.session_state["atk_result"]["target"] is None  # FGSM is untargeted by default


def test_attack_aim_switches_fgsm_to_a_target_class(app):
    _ok(app.switch_page(PAGES["attack"]).run())
    _ok(app.radio(key="atk_aimed_fgsm").set_value(True).run())
    _ok(app.selectbox(key="atk_target").select("random").run())
    _ok(app.button(key="atk_run").click().run())
    out = app.session_state["atk_result"]
    assert out["target"] is not None and out["params"]["targeted"] is True
    heads = [m for m in _markdown(app) if m.startswith("### The attack")]
    assert heads and ("its target" in heads[0] or "aimed at" in heads[0] or "failed" in heads[0])


def test_attack_that_raises_says_so_and_keeps_the_page(app, monkeypatch, caplog):
    """An attack's own exception (the load test once met one) is a message on the page, not Streamlit's generic
    "This app has encountered an error"; the traceback goes to the log, and the next run works again."""
    import core.attacks

    real = core.attacks.run_attack

    def broken(*a, **kw):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(core.attacks, "run_attack", broken)
    _ok(app.switch_page(PAGES["attack"]).run())
    _ok(app.button(key="atk_run").click().run())
    errors = [e.value for e in app.error]
    assert any("FGSM failed (RuntimeError; the server log has the details)" in e for e in errors), errors
    assert not any("secret detail" in e for e in errors)  # the exception's text stays in the log
    assert "secret detail" in caplog.text and "atk_result" not in app.session_state
    monkeypatch.setattr(core.attacks, "run_attack", real)
    _ok(app.button(key="atk_run").click().run())
    # The adversarial's verdict may be "rejected" (an error box too, whether it is depends on the trained weights):
    # no other error.
    assert "atk_result" in app.session_state
    assert not [e.value for e in app.error if "rejected" not in e.value.lower()], [e.value for e in app.error]
