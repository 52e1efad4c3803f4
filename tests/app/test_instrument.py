"""The app as one instrument (issue 13): one operating point on every page, the overall verdict, the
out-of-distribution flag, the view in the URL, and the Inspect / Attack bugs (AppTest on the tiny run)."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from tests.app.apptest import PAGES, _app, _markdown, _md_table, _ok# noqa: F401

pytest.importorskip("streamlit")


@pytest.fixture()
def app(tiny_run, monkeypatch):
    return _ok(_app(tiny_run.parent, monkeypatch))


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _layer_msg(at) -> str:
    return next(m.value for m in [*at.success, *at.error] if " by layer " in m.value)


def _overall(at) -> str:
    return next(m.value for m in [*at.success, *at.error] if m.value.startswith("**Overall: "))


def _val(truth, layer):
    from core.evaluation.verdict import validation_thresholds

    return validation_thresholds(truth["data"], truth["mode"], truth["fn"], truth["k"])[layer]


def test_threshold_set_on_threshold_page_is_used_by_inspect_attack_and_failures(app, truth):
    layer = truth["best_layer"]
    assert f"threshold {_val(truth, layer):.3f}" in _layer_msg(app)
    _ok(app.switch_page(PAGES["threshold"]).run())
    _ok(app.slider(key="th_threshold").set_value(0.999).run())
    _ok(app.switch_page(PAGES["inspect"]).run())
    assert "threshold 0.999" in _layer_msg(app) and "✗ rejected" in _layer_msg(app)
    assert "Overall: ✗ rejected" in _overall(app)
    _ok(app.switch_page(PAGES["attack"]).run())
    assert "Overall: ✗ rejected" in _overall(app)
    _ok(app.switch_page(PAGES["failures"]).run())
    head = next(m for m in _markdown(app) if m.startswith("Threshold at"))
    assert "**0.999**" in head and "set on the Threshold page" in head
    # Reset: every page back to the validation-chosen threshold.
    _ok(app.switch_page(PAGES["threshold"]).run())
    _ok(app.button(key="th_reset").click().run())
    _ok(app.switch_page(PAGES["inspect"]).run())
    assert f"threshold {_val(truth, layer):.3f}" in _layer_msg(app)


def test_threshold_layer_switch_shows_that_layers_own_threshold(app, truth):
    _ok(app.switch_page(PAGES["threshold"]).run())
    for layer in truth["layers"]:
        _ok(app.selectbox(key="th_layer").set_value(layer).run())
        assert app.slider(key="th_threshold").value == pytest.approx(round(_val(truth, layer), 3))
    assert len({round(_val(truth, la), 3) for la in truth["layers"]}) > 1  # the check above can tell layers apart


def test_overall_verdict_follows_the_combination(app, truth):
    from core.evaluation.verdict import overall_verdict

    data, layers = truth["data"], truth["layers"]
    scores = {la: float(data.scores("authentic", la, truth["mode"], truth["fn"], truth["k"])[0]) for la in layers}
    th = {la: _val(truth, la) for la in layers}
    for how in ("validation", "any", "majority"):
        _ok(app.radio(key="inspect_overall").set_value(how).run())
        v = overall_verdict(scores, th, how=how, operating_layer=truth["best_layer"], strict=False)
        assert _overall(app).startswith(f"**Overall: {'✓ trusted' if v.trusted else '✗ rejected'}**")
    _ok(app.switch_page(PAGES["attack"]).run())
    assert app.radio(key="atk_overall").value == "majority"  # one choice for both pages


def test_out_of_distribution_flag_on_white_and_noise_uploads(app, truth):
    shape = truth["data"].evalset("authentic")["images"].shape[1:3]
    _ok(app.radio(key="inspect_source").set_value("Upload").run())
    for arr in (np.full(shape, 255, np.uint8), np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)):
        _ok(app.file_uploader(key="inspect_upload").set_value(("x.png", _png(arr), "image/png")).run())
        assert any("Unlike anything in training" in w.value for w in app.warning)
        assert any("kNN score alone does not catch" in w.value for w in app.warning)


def test_attack_page_shows_the_image_first_and_hides_another_attacks_result(app):
    _ok(app.switch_page(PAGES["attack"]).run())
    assert any("current image" in str(i.proto) for i in app.get("image"))
    assert not [m for m in _markdown(app) if m.startswith("### ")]
    _ok(app.button(key="atk_run").click().run())
    assert [m for m in _markdown(app) if m.startswith("### The attack")]
    _ok(app.selectbox(key="atk_name").set_value("ifgsm").run())
    assert not [m for m in _markdown(app) if m.startswith("### ")]  # FGSM's result is not shown under I-FGSM


def test_failure_card_to_inspect_keeps_the_layer(app, truth):
    other = next(la for la in truth["layers"] if la != truth["best_layer"])
    _ok(app.switch_page(PAGES["failures"]).run())
    _ok(app.selectbox(key="fail_layer").set_value(other).run())
    buttons = [b for b in app.button if b.key and b.key.startswith("fail_go_")]
    _ok(buttons[0].click().run())
    assert app.selectbox(key="inspect_layer").value == other
    assert f"by layer {other}" in _layer_msg(app)


def test_uploads_small_white_and_failed(app):
    from app_ui.widgets.images import FRAME_GREY, framed

    f = framed(np.full((4, 4, 1), 255, np.uint8))
    assert f.shape == (8, 8, 1) and (f[0] == FRAME_GREY).all() and (f[2:-2, 2:-2] == 255).all()
    _ok(app.radio(key="inspect_source").set_value("Upload").run())
    _ok(app.file_uploader(key="inspect_upload").set_value(("t.png", _png(np.full((5, 5), 200, np.uint8)),
                                                            "image/png")).run())
    assert app.session_state["current"]["source"] == "your upload"
    assert any("upscaled from 5×5" in c.value for c in app.caption)
    _ok(app.file_uploader(key="inspect_upload").set_value(("bad.png", b"not an image", "image/png")).run())
    assert app.error and app.session_state["current"]["source"] != "your upload"
    assert "upload_array" not in app.session_state


def test_url_restores_the_view_and_ignores_bad_values(tiny_run, monkeypatch, truth):
    from streamlit.testing.v1 import AppTest

    from tests.app.apptest import ROOT, TIMEOUT

    monkeypatch.setenv("KNNGUARD_RUNS_DIR", str(tiny_run.parent))
    other = next(la for la in truth["layers"] if la != truth["best_layer"])
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.query_params.update({"img": "authentic:3", "layer": other, "mode": truth["mode"], "fn": "knn", "k": "5",
                            "th": "0.25", "verdict": "any"})
    _ok(at.run())
    ss = at.session_state
    assert ss["current"]["source"] == "authentic #3" and ss["op_layer"] == other
    assert (ss["det_fn"], ss["det_k"], ss["op_combine"]) == ("knn", 5, "any")
    assert "threshold 0.250" in _layer_msg(at) and at.selectbox(key="inspect_layer").value == other
    # What the page shows is written back (a reload or a copied link gives the same view).
    qp = {k: v[0] if isinstance(v, list) else v for k, v in at.query_params.items()}
    assert qp["img"] == "authentic:3" and qp["layer"] == other and qp["k"] == "5" and qp["th"] == "0.25"

    bad = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    bad.query_params.update({"img": "../../etc/passwd:1", "layer": "<script>", "fn": "evil", "k": "99999",
                             "th": "1e9", "verdict": "all", "mode": "../x"})
    _ok(bad.run())
    m = json.loads((tiny_run / "manifest.json").read_text())["summary"]["defaults"]
    assert bad.session_state["current"]["source"] == "authentic #0"
    assert (bad.session_state["det_fn"], bad.session_state["det_mode"]) == (m["fn"], m["mode"])
    assert bad.session_state["op_layer"] == truth["best_layer"]


def test_a_page_that_ends_early_still_writes_its_view_into_the_url(app):
    """The Attack page ends before any attack is run; the view (here a new k) still reaches the URL.

    With ``st.stop()`` the runner dropped app.py's URL write: the query string kept the old k."""
    for key in ("attack", "threshold"):
        _ok(app.switch_page(PAGES[key]).run())
        k = 3 if app.session_state["det_k"] != 3 else 4
        _ok(app.slider(key="det_k").set_value(k).run())
        qp = {n: v[0] if isinstance(v, list) else v for n, v in app.query_params.items()}
        assert qp.get("k") == str(k), (key, qp)


def test_url_parse_is_strict():
    from app_ui.url_state import parse

    manifest = {"summary": {"layers": ["conv2", "fc1"], "modes": ["l2"], "k_max": 50,
                            "sets": {"authentic": {"n": 10}}}}
    assert parse({"img": "authentic:9", "k": "50", "th": "0.5", "layer": "fc1"}, manifest) == \
        {"img": ("authentic", 9), "k": 50, "th": 0.5, "layer": "fc1"}
    for bad in ({"img": "authentic:10"}, {"img": "x:1"}, {"k": "0"}, {"k": "51"}, {"k": "-1"}, {"th": "1.5"},
                {"th": "nan"}, {"th": "inf"}, {"layer": "FC1"}, {"mode": "pca"}, {"fn": "x"}, {"verdict": "x"},
                {"img": "authentic:1" * 20}):
        assert parse(bad, manifest) == {}, bad


def _authors_run(run) -> None:
    """Turn a copy of the tiny run into one evaluated under the authors' protocol (trust ``score > threshold``):
    the recorded config and the report say so (the report's hash in the manifest follows)."""
    import hashlib

    m = json.loads((run / "manifest.json").read_text())
    m["config"].setdefault("evaluation", {})["protocol"] = "authors"
    rep = json.loads((run / "report.json").read_text())
    rep["protocol"] = "authors"
    raw = json.dumps(rep).encode()
    (run / "report.json").write_bytes(raw)
    m["files"]["report.json"].update(sha256=hashlib.sha256(raw).hexdigest(), size=len(raw))
    (run / "manifest.json").write_text(json.dumps(m, indent=1, sort_keys=True))
    (run / "manifest.sig").unlink(missing_ok=True)


def test_authors_protocol_rule_on_charts_and_confusion_counts(tiny_run_copy, monkeypatch, truth):
    """Under the authors' protocol a score equal to the threshold is rejected on every chart and count."""
    from tests.app.apptest import _vega, _vega_rows

    _authors_run(tiny_run_copy)
    app = _ok(_app(tiny_run_copy.parent, monkeypatch))
    layer, mode, fn, k = truth["best_layer"], truth["mode"], truth["fn"], truth["k"]

    # The threshold set exactly at the image's score: the bar, the legend and the verdict say rejected.
    def inspect_bar() -> dict:
        return {r["verdict"]: r["score"] for r in _vega_rows(app) if r["layer"] == layer}

    score = next(iter(inspect_bar().values()))
    app.session_state["op_overrides"] = {(layer, mode, fn, int(k)): score}
    _ok(app.run())
    assert inspect_bar() == {"✗ rejected": score}
    assert "✗ rejected" in _layer_msg(app) and "score ≤ threshold" in _vega(app, "inspect_layers")["title"]["subtitle"][0]
    _ok(app.switch_page(PAGES["attack"]).run())
    assert inspect_bar() == {"✗ rejected": score}  # the Attack page's chart before an attack: the same one

    # The Threshold page's counts at a threshold equal to a positive's score (the authors' positives).
    from core.evaluation.report import PROTOCOLS

    pos = np.nan_to_num(np.concatenate([truth["data"].scores(s, layer, mode, fn, k)
                                        for s in PROTOCOLS["authors"][0]]).astype(np.float64))
    th = float(np.sort(pos)[len(pos) // 2])
    assert (pos > th).sum() != (pos >= th).sum()  # the check below can tell the rules apart
    app.session_state["op_overrides"] = {(layer, mode, fn, int(k)): th}
    _ok(app.switch_page(PAGES["threshold"]).run())
    conf = _md_table(app, "trusted (score > threshold)")
    assert list(conf[0]) == ["", "trusted (score > threshold)", "rejected (score ≤ threshold)"]
    assert int(conf[0]["trusted (score > threshold)"]) == (pos > th).sum()
    assert int(conf[0]["rejected (score ≤ threshold)"]) == (pos <= th).sum()
