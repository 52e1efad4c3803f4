"""The Failure cases page (AppTest)."""
from __future__ import annotations

import numpy as np

from app_ui.text import md  # run text reaches the page escaped
from tests.app.apptest import (
    PAGES,
    _markdown,
    _ok,
    _threshold_scores,
    _validation_threshold,
)


def test_failure_cases_threshold_and_count_follow_the_scores(app, truth):

    _ok(app.switch_page(PAGES["failures"]).run())
    pos, neg = _threshold_scores(truth)
    th = _validation_threshold(truth)
    head = next(m for m in _markdown(app) if m.startswith("Threshold at"))
    caught = int((np.nan_to_num(neg) < th).sum())
    assert f"**{th:.3f}**" in head and f"caught {caught} of {len(neg)}" in head


# ----------------------------------------------------------------------------------------- Failure cases
def test_failure_cases_gallery_and_click_through_to_inspect(app, truth):
    _ok(app.switch_page(PAGES["failures"]).run())
    assert any(m.startswith("Threshold at") for m in _markdown(app))
    buttons = [b for b in app.button if b.key and b.key.startswith("fail_go_")]
    assert buttons
    name, idx = buttons[0].key[len("fail_go_"):].rsplit("_", 1)
    e = truth["data"].evalset(name)
    cls = truth["classes"]
    card = f"actual **{md(cls[int(e['true'][int(idx)])])}**  \npredicted **{md(cls[int(e['predicted'][int(idx)])])}**"
    assert any(m.startswith(card) for m in _markdown(app))
    _ok(buttons[0].click().run())
    assert app.session_state["current"]["source"] == f"{name} #{idx}"
    assert f"### Prediction: {md(cls[int(e['predicted'][int(idx)])])}" in _markdown(app)
    assert app.selectbox(key="inspect_set").value == name
