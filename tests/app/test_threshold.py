"""The Threshold page (AppTest): its figures are core's, its slider and buttons move them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.app.apptest import (
    PAGES,
    _counts,
    _lines,
    _mark,
    _markdown,
    _md_table,
    _ok,
    _threshold_scores,
    _tpr_on_test,
    _validation_threshold,
    _vega,
)


def test_threshold_auc_equals_core_metrics(app, truth):
    from core.evaluation import metrics

    _ok(app.switch_page(PAGES["threshold"]).run())
    assert app.selectbox(key="th_layer").value == truth["best_layer"]
    assert app.multiselect(key="th_negatives").value == truth["attacks"]
    pos, neg = _threshold_scores(truth)
    r = metrics.roc(pos, neg)
    auc = _md_table(app, "AUC")[0]["AUC"]
    assert auc == f"{r.auc:.4f}"
    # The page opens at the threshold chosen on validation; the confusion counts are core.evaluation.metrics.rates_at at it.
    th = _validation_threshold(truth)
    assert app.slider(key="th_threshold").value == pytest.approx(round(th, 3))
    at = metrics.rates_at(pos, neg, th)
    assert _counts(app) == [at["tp"], at["fn"], at["fp"], at["tn"]]


def test_threshold_slider_moves_the_counts_and_the_eer_button_sets_it(app, truth):
    from core.evaluation import metrics

    _ok(app.switch_page(PAGES["threshold"]).run())
    before = _counts(app)
    _ok(app.slider(key="th_threshold").set_value(0.95).run())
    after = _counts(app)
    assert after != before
    pos, neg = _threshold_scores(truth)
    at = metrics.rates_at(pos, neg, 0.95)
    assert after == [at["tp"], at["fn"], at["fp"], at["tn"]]
    assert "0.950" in app.markdown[[i for i, m in enumerate(_markdown(app)) if "All stored images" in m][0]].value
    _ok(app.button(key="th_jump_eer").click().run())
    eer = round(float(np.clip(metrics.roc(pos, neg).eer_threshold, 0, 1)), 3)
    assert app.slider(key="th_threshold").value == pytest.approx(eer)
    # The button sets the EER rounded as it is labelled: counted there (a score between the exact and the rounded
    # EER, as a run trained with other CPU kernels had, moves one image across).
    at = metrics.rates_at(pos, neg, eer)
    assert _counts(app) == [at["tp"], at["fn"], at["fp"], at["tn"]]
    # Reset: back to the threshold chosen on validation.
    _ok(app.button(key="th_reset").click().run())
    assert _counts(app) == before
    # Counting authentic errors as negatives too changes the negatives' total.
    _ok(app.checkbox(key="th_errors").check().run())
    assert sum(_counts(app)[2:]) == len(neg) + len(truth["data"].evalset("errors")["predicted"])


def test_threshold_curves_are_the_trusted_share_of_each_set(app, truth):
    _ok(app.switch_page(PAGES["threshold"]).run())
    assert not app.get("vega_lite_chart") or not [c for c in app.get("vega_lite_chart")
                                                   if "Trusted share" in json.loads(c.proto.spec)["title"]["text"]]
    _ok(app.segmented_control(key="th_view").set_value("shares").run())  # one distribution chart at a time
    assert not [c for c in app.get("vega_lite_chart") if "densities" in json.loads(c.proto.spec)["title"]["text"]]
    lines = _lines(_vega(app, "th_rates"))
    pos, _ = _threshold_scores(truth)
    args = (truth["best_layer"], truth["mode"], truth["fn"], truth["k"])
    groups = [pos] + [truth["data"].scores(a, *args) for a in truth["attacks"]]
    assert len(lines) == len(groups)
    from app_ui.charts.lines import SIMPLIFY
    from core.evaluation.polyline import deviation

    full = np.linspace(0, 1, 501)  # the page's grid of thresholds
    for (grid, share), sc in zip(lines.values(), groups):
        want = np.array([(np.nan_to_num(sc) >= t).mean() for t in full])
        kept = np.searchsorted(full, grid)
        np.testing.assert_allclose(full[kept], grid)  # points of the grid, drawn at their true share
        np.testing.assert_allclose(share, want[kept])
        assert kept[0] == 0 and kept[-1] == 500 and len(kept) < 501
        assert deviation(full, want, kept, x_range=(0, 1)) <= SIMPLIFY  # the points left out are on the line


def test_threshold_roc_view_draws_the_roc_and_the_operating_point(app, truth):
    from app_ui.charts.lines import SIMPLIFY
    from core.evaluation import metrics
    from core.evaluation.polyline import deviation

    _ok(app.switch_page(PAGES["threshold"]).run())
    _ok(app.segmented_control(key="th_view").set_value("roc").run())
    assert [json.loads(c.proto.spec)["title"]["text"] for c in app.get("vega_lite_chart")
            if "Score densities" in json.loads(c.proto.spec)["title"]["text"]] == []
    spec = _vega(app, "th_roc")
    pos, neg = _threshold_scores(truth)
    r = metrics.roc(pos, neg)
    (x, y), = [v for name, v in _lines(spec).items() if name.startswith("ROC")]
    fx, fy = metrics.roc_corners(r)
    kept = [int(np.flatnonzero((fx == a) & (fy == b))[0]) for a, b in zip(x, y)]  # every drawn point a corner
    assert kept == sorted(kept) and kept[0] == 0 and kept[-1] == len(fx) - 1
    assert deviation(fx, fy, np.array(kept), x_range=(-0.02, 1.02), y_range=(-0.02, 1.02)) <= SIMPLIFY
    th = _validation_threshold(truth)
    at = metrics.rates_at(pos, neg, th)
    point = next(row for layer in spec["layer"] if _mark(layer) == "point" for row in layer["data"]["values"]
                 if row["series"] == "operating point")
    assert (point["x"], point["y"]) == pytest.approx((at["fpr"], at["tpr"]))


def test_threshold_shows_the_operating_point_and_its_button_sets_slider_and_settings(app, truth, honest, monkeypatch):
    from app_ui import cache as loaders
    from app_ui.charts.bars import ci_text

    monkeypatch.setattr(loaders, "report", lambda run: honest)
    op = honest["operating_point"]
    _ok(app.switch_page(PAGES["threshold"]).run())
    assert app.selectbox(key="th_layer").value == op["layer"]
    text = next(m for m in _markdown(app) if m.startswith("**The run's operating point**"))
    assert f"{op['threshold']:.4f}" in text and ci_text(op["tpr_test"]) in text
    _ok(app.slider(key="th_threshold").set_value(0.999).run())
    _ok(app.selectbox(key="det_fn").set_value(next(f for f in ("knn", "wknn", "dwknn") if f != op["fn"])).run())
    _ok(app.button(key="th_use_op").click().run())
    assert app.slider(key="th_threshold").value == pytest.approx(round(op["threshold"], 3))
    assert (app.session_state["det_mode"], app.session_state["det_fn"], app.session_state["det_k"]) == \
        (op["processing"], op["fn"], op["k"])
    # At the operating point the live test-split figures are the report's, each with its 95 % interval.
    assert f"**{ci_text(op['tpr_test'])} %**" in _tpr_on_test(app)
    rows = _md_table(app, "guarded success % (fools the CNN and trusted)")
    assert [r["attack"] for r in rows] == list(honest["attacks"])
    for row in rows:
        a = honest["attacks"][row["attack"]]
        assert row["detection rate % (rejected)"] == ci_text(a["detection_rate"])
        assert row["guarded success % (fools the CNN and trusted)"] == ci_text(a["guarded_success"])
        assert row["test images"] == str(a["n_test"])


def test_threshold_on_an_old_report_says_rebuild_and_still_shows_live_intervals(app, truth):
    from app_ui.charts.bars import ci_text
    from core.evaluation.setting_figures import LiveFigures

    _ok(app.switch_page(PAGES["threshold"]).run())
    th = app.slider(key="th_threshold").value
    if "operating_point" not in truth["report"]:
        assert any("rebuild the run" in i.value for i in app.info)
        assert not [b for b in app.button if b.key == "th_use_op"]
    fig = LiveFigures.for_run(truth["data"]).at((truth["best_layer"], truth["mode"], truth["fn"], truth["k"]), th)
    assert f"**{ci_text(fig['tpr'])} %**" in _tpr_on_test(app)
    assert f"**{ci_text(fig['detection_rate'])} %**" in _tpr_on_test(app)
    rows = _md_table(app, "detection rate % (rejected)")
    assert [r["detection rate % (rejected)"] for r in rows] == [ci_text(v["detection_rate"])
                                                                for v in fig["attacks"].values()]
