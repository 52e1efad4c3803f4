"""The Run page, a run with a broken manifest, the Failure cases "caught" column and the Layers comparison, with
``streamlit.testing.v1.AppTest`` on the tiny run of conftest.py.

    .venv/bin/python -m pytest tests/app/test_run_pages.py -q
"""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from tests.app.apptest import PAGES, _app, _md_table, _ok  # noqa: E402  (shared setup)


def _frame(at: AppTest, key: str):
    return next(d for d in at.dataframe if d.proto.id.endswith(key) or key in d.proto.id).value


# ------------------------------------------------------------------------------------------ broken manifest
def test_broken_manifest_shows_the_real_error_and_the_whole_command_in_the_main_area(tmp_path, monkeypatch):
    run = tmp_path / "fmnist"
    run.mkdir()
    (run / "manifest.json").write_text('{"config": {"name": "fmnist"}, "stages": ')
    at = _ok(_app(tmp_path, monkeypatch))
    err = " ".join(e.value for e in at.main.error)
    assert "not valid JSON" in err and "not finished" not in err
    assert [c.value for c in at.main.code] == ["python -m precompute --config precompute/configs/fmnist.toml"]
    assert not at.sidebar.error and not at.sidebar.code


def test_unfinished_run_is_reported_in_the_main_area(tmp_path, monkeypatch):
    run = tmp_path / "fmnist"
    run.mkdir()
    stages = {s: {"status": "done"} for s in ("data", "train", "features")}
    (run / "manifest.json").write_text(json.dumps({"config": {"name": "fmnist"}, "stages": stages, "files": {}}))
    at = _ok(_app(tmp_path, monkeypatch))
    err = " ".join(e.value for e in at.main.error)
    assert "not finished" in err and "neighbours" in err and "report" in err


# ------------------------------------------------------------------------------------------- failure cases
def test_failure_cases_show_a_training_image_of_the_predicted_class_on_every_card(app, tiny_run):
    from core.evaluation.rundata import RunData

    data = RunData(tiny_run, verify=False)
    layer = data.layers[-1]
    _ok(app.switch_page(PAGES["failures"]).run())
    app.selectbox(key="fail_layer").set_value(layer)
    app.slider(key="fail_n").set_value(16)
    _ok(app.run())
    cards = [b.key[len("fail_go_"):].rsplit("_", 1) for b in app.button if b.key and b.key.startswith("fail_go_")]
    assert cards
    captions = [i.proto.imgs[0].caption for i in app.get("image")]
    assert not [c for c in captions if "no training image" in c]
    shown = [c for c in captions if " · nearest " in c and "training id" not in c]
    assert len(shown) == len(cards) == len(captions)  # one picture per card: the image and its training image
    missing = [(s, int(i)) for s, i in cards
               if not (data.train_labels[data.neighbours(s, layer, data.summary["defaults"]["mode"]).I[int(i)]]
                       == data.evalset(s)["predicted"][int(i)]).any()]
    assert missing  # the tiny run has cards whose stored neighbours hold no training image of the class
    caught = [s for s, _ in cards[:16]]
    assert len(set(caught)) > 1  # ties mix the attacks


# ---------------------------------------------------------------------------------------------- Run page
def test_run_page_rates_in_one_format_whole_parameters_and_no_cpu_count_among_libraries(app, tiny_run):
    m = json.loads((tiny_run / "manifest.json").read_text())
    _ok(app.switch_page(PAGES["run"]).run())
    sets = _md_table(app, "set")
    rates = {k: v.get("success_rate") for k, v in m["summary"]["sets"].items()}
    got = {r["set"]: r["success rate"] for r in sets}
    for k, v in rates.items():  # "25.0 %" and "95.3 %", not "25%" and "95.33%"; a set without one: a dash
        assert got[k] == ("–" if v is None else f"{100 * v:.1f} %")
    for r in sets:  # every parameter of the attack, none cut
        p = m["summary"]["sets"][r["set"]].get("params")
        if isinstance(p, dict):
            assert r["parameters"] == ", ".join(f"{k}={v}" for k, v in p.items() if k not in ("attack", "targeted"))
    libs = {r["library"] for r in _md_table(app, "library")}
    assert "cpu_count" not in libs and "torch" in libs
    assert any(f"{m['versions']['cpu_count']} CPU cores" in c.value for c in app.caption)


def test_evaluation_set_labels_fit_a_select_box(app, tiny_run):
    m = json.loads((tiny_run / "manifest.json").read_text())
    opts = app.selectbox(key="inspect_set").options
    assert len(opts) == sum(1 for v in m["summary"]["sets"].values() if v["n"])
    assert all(len(o) <= 32 for o in opts), opts
    assert any(o.endswith("adversarial") for o in opts) and opts[0].startswith("authentic · ")


# --------------------------------------------------------------------------------------------- downloads
def test_threshold_and_run_pages_offer_their_downloads(app):
    _ok(app.switch_page(PAGES["threshold"]).run())
    assert not app.get("download_button")  # drawn when their expander is opened
    app.session_state["th_downloads"] = True
    _ok(app.run())
    labels = sorted(b.proto.label for b in app.get("download_button"))
    assert labels == ["Confusion counts (CSV)", "ROC points (CSV)", "Scores per image (CSV)"]
    _ok(app.switch_page(PAGES["run"]).run())
    assert sorted(b.proto.label for b in app.get("download_button")) == ["Report (HTML)", "Report (Markdown)"]


# ------------------------------------------------------------------------------------------ Layers: compare
def _curves(at: AppTest) -> list[dict]:
    """The overlay's curves but chance: ``name``, ``x``, ``y``."""
    from tests.app.apptest import _lines, _vega

    return [{"name": n, "x": np.asarray(x, dtype=float), "y": y} for n, (x, y) in _lines(_vega(at, "cmp_roc")).items()
            if n != "chance"]


def test_layers_page_overlays_rocs_of_layers_settings_and_attacks(app, tiny_run):
    from core.evaluation import metrics
    from core.evaluation.rundata import RunData

    data = RunData(tiny_run, verify=False)
    m = json.loads((tiny_run / "manifest.json").read_text())
    d = m["summary"]["defaults"]
    k = min(d["k"], m["summary"]["k_max"])
    attacks = [a for a in data.attack_sets if m["summary"]["sets"][a]["n"]]

    def pos(la, fn=d["fn"]):
        return np.concatenate([data.scores(s, la, d["mode"], fn, k) for s in ("authentic", "noise")])

    _ok(app.switch_page(PAGES["layers"]).run())
    assert any("Why the Threshold page's EER differs from Aggr." in mk.value for mk in app.markdown)
    curves = _curves(app)
    assert len(curves) == len(data.layers)
    for la, t in zip(data.layers, curves):
        neg = np.concatenate([data.scores(a, la, d["mode"], d["fn"], k) for a in attacks])
        r = metrics.roc(pos(la), neg)
        assert t["name"].startswith(f"{la} (AUC {r.auc:.3f}")
        from app_ui.charts.lines import SIMPLIFY
        from core.evaluation.polyline import deviation

        cx, cy = metrics.roc_corners(r)  # the curve's corners, then those the plot cannot show left out
        kept = np.flatnonzero(np.isin(np.round(cx, 12) + 2 * np.round(cy, 12), np.round(t["x"], 12) + 2 * np.round(t["y"], 12)))
        assert len(kept) == len(t["x"]) and kept[0] == 0 and kept[-1] == len(cx) - 1
        np.testing.assert_array_equal(cx[kept], t["x"])
        np.testing.assert_array_equal(cy[kept], t["y"])
        assert deviation(cx, cy, kept, x_range=(-0.02, 1.02), y_range=(-0.02, 1.02)) <= SIMPLIFY
        assert len(t["x"]) <= len(cx) < len(r.fpr)
    app.session_state["cmp_vary"] = "fn"
    _ok(app.run())
    layer = app.selectbox(key="cmp_layer").value
    curves = _curves(app)
    assert len(curves) == 3
    neg = np.concatenate([data.scores(a, layer, d["mode"], "knn", k) for a in attacks])
    assert f"AUC {metrics.roc(pos(layer, 'knn'), neg).auc:.3f}" in curves[0]["name"]
    app.session_state["cmp_vary"] = "attack"
    _ok(app.run())
    curves = _curves(app)
    assert [t["name"].split(" ")[0] for t in curves] == attacks
    for a, t in zip(attacks, curves):
        auc = metrics.roc(pos(layer), data.scores(a, layer, d["mode"], d["fn"], k)).auc
        assert f"AUC {auc:.3f}" in t["name"]


def test_layers_k_box_and_quick_picks_set_the_sidebar_k(app):
    _ok(app.switch_page(PAGES["layers"]).run())
    _ok(app.number_input(key="layers_k").set_value(7).run())
    assert app.session_state["det_k"] == 7 and app.slider(key="det_k").value == 7
    assert app.number_input(key="layers_k").value == 7
    _ok(app.slider(key="det_k").set_value(12).run())
    assert app.number_input(key="layers_k").value == 12  # the box follows the slider
    pills = app.get("button_group")
    pick = next(p for p in pills if "layers_k_pick" in p.proto.id)
    assert [o.content for o in pick.proto.options] == ["10", "50"]  # the report's k values up to K_max (50)
    _ok(pick.set_value(50).run())
    assert app.session_state["det_k"] == 50 and app.slider(key="det_k").value == 50


def test_layers_figure_bootstraps_a_new_k_only_on_request(app):
    """At a k other than the report's, Fig. 6 shows the report's (precomputed intervals) until asked: 15 bootstraps
    per k change took 4 s on the default run."""
    from tests.app.apptest import _vega

    _ok(app.switch_page(PAGES["layers"]).run())
    report_k = int(app.slider(key="det_k").value)
    _ok(app.slider(key="det_k").set_value(7).run())
    assert _vega(app, "layers_fig6")["title"]["text"].endswith(f"k = {report_k}")
    assert app.toggle(key="layers_live_k").value is False
    _ok(app.toggle(key="layers_live_k").set_value(True).run())
    assert _vega(app, "layers_fig6")["title"]["text"].endswith("k = 7")


def test_side_by_side_frames_each_image_and_leaves_a_transparent_gap():
    from app_ui.widgets.images import FRAME_GREY, FRAME_PX, side_by_side

    a = np.full((28, 28, 1), 255, np.uint8)
    b = np.zeros((28, 28, 1), np.uint8)
    row = side_by_side([a, b], size=56, gap=8)
    side = 56 + 2 * FRAME_PX
    assert row.shape == (side, 2 * side + 8, 4) and row.dtype == np.uint8
    assert (row[:, side:side + 8, 3] == 0).all() and (row[:, :side, 3] == 255).all()  # the gap is transparent
    assert (row[FRAME_PX:-FRAME_PX, FRAME_PX:side - FRAME_PX, :3] == 255).all()  # the first image, upscaled
    assert (row[FRAME_PX:-FRAME_PX, side + 8 + FRAME_PX:-FRAME_PX, :3] == 0).all()
    assert (row[0, :side, :3] == FRAME_GREY).all()  # framed
    with pytest.raises(ValueError, match="one shape"):
        side_by_side([a, np.zeros((20, 20, 1), np.uint8)], size=56)
