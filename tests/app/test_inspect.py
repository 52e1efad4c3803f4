"""The Inspect page (AppTest)."""
from __future__ import annotations

import numpy as np
import pytest

from app_ui.text import md  # run text reaches the page escaped
from tests.app.apptest import _markdown, _ok, _png, _vega_data, _vega_rows


# ----------------------------------------------------------------------------------------------- Inspect
def test_inspect_shows_the_prediction_and_one_bar_per_layer(app, truth):
    e = truth["data"].evalset("authentic")
    assert f"### Prediction: {md(truth['classes'][int(e['predicted'][0])])}" in _markdown(app)
    top = _vega_data(app, "inspect_top5")
    assert len(top) == 5 and top[0]["class"] == truth["classes"][int(e["predicted"][0])]
    probs = [r["probability"] for r in top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    rows = _vega_rows(app)
    assert [r["layer"] for r in rows] == list(truth["layers"])
    # Not colour alone: each bar is marked ✓/✗ and its legend entry says it in words; a rejected one is outlined.
    for r in rows:
        assert r["verdict"] in ("✓ trusted", "✗ rejected")
        assert r["label"].endswith(r["verdict"][0]) and r["rejected"] == (r["verdict"] == "✗ rejected")
        assert 0.0 <= r["score"] <= 1.0 and (r["score"] >= r["threshold"]) == (not r["rejected"])
    # Verdict of the chosen layer in words, and both rows of neighbours.
    assert any("by layer" in m.value for m in [*app.success, *app.error])
    assert sum("Nearest training images" in m for m in _markdown(app)) == 2
    # The class's row is drawn only when it differs from the first: else a line says so (8 images fewer to load).
    same = [c.value for c in app.caption if c.value.startswith("The same ")]
    grids = [e for e in app.get("image") if len(e.proto.imgs) > 1]
    assert len(same) + len(grids) == 2


def test_inspect_follows_the_index_widget(app, truth):
    e = truth["data"].evalset("authentic")
    i = min(5, len(e["predicted"]) - 1)
    _ok(app.number_input(key="inspect_index").set_value(i).run())
    assert f"### Prediction: {md(truth['classes'][int(e['predicted'][i])])}" in _markdown(app)
    assert app.session_state["current"]["source"] == f"authentic #{i}"


def test_upload_of_bad_bytes_shows_the_upload_error_and_the_page_keeps_working(app, truth):
    from core.uploads.policy import UploadError
    from core.uploads.read import read_upload

    bad = b"this is not an image at all"
    with pytest.raises(UploadError) as err:
        read_upload(bad)
    _ok(app.radio(key="inspect_source").set_value("Upload").run())
    _ok(app.file_uploader(key="inspect_upload").set_value(("photo.png", bad, "image/png")).run())
    assert str(err.value) in [e.value for e in app.error]
    # Still a prediction on screen: the previous (authentic) image.
    assert any(m.startswith("### Prediction: ") for m in _markdown(app))
    # A good PNG then replaces the current image and clears the error.
    _ok(app.file_uploader(key="inspect_upload").set_value(("photo.png", _png(), "image/png")).run())
    assert str(err.value) not in [e.value for e in app.error]
    assert app.session_state["current"]["source"] == "your upload"
    img = app.session_state["current"]["image"]
    assert img.shape == truth["data"].evalset("authentic")["images"].shape[1:] and img.dtype == np.uint8
    assert any(m.startswith("### Prediction: ") for m in _markdown(app))
