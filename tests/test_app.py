"""The Streamlit app, page by page, with ``streamlit.testing.v1.AppTest`` on the tiny run of conftest.py.

    .venv/bin/python -m pytest tests/test_app.py -q

Each test asserts real content computed independently from the run folder (core.evaluation.paper_figures / core.evaluation.metrics):
the prediction text, one bar per layer, the ROC's AUC, confusion counts that follow the threshold slider.
"""
from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest

from tests.conftest import ROOT

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from app_pages._text import md  # noqa: E402  (run text reaches the page escaped)

TIMEOUT = 120  # seconds per script run (the first one loads torch, the model and the indexes)
PAGES = {"inspect": "app_pages/inspect_image.py", "attack": "app_pages/attack_live.py",
         "threshold": "app_pages/threshold.py", "layers": "app_pages/layers.py",
         "failures": "app_pages/failure_cases.py", "run": "app_pages/run_info.py"}




def _app(runs_dir, monkeypatch) -> AppTest:
    monkeypatch.setenv("KNNGUARD_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    return at


def _ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture()
def app(tiny_run, monkeypatch) -> AppTest:
    """The app on the tiny run, first page (Inspect) rendered."""
    return _ok(_app(tiny_run.parent, monkeypatch))


@pytest.fixture(scope="module")
def truth(tiny_run) -> dict:
    """What the pages should show, computed from the run folder without the app."""
    from core.evaluation.rundata import RunData
    from core.evaluation.setting_figures import operating_layer

    data = RunData(tiny_run, verify=False)
    m = json.loads((tiny_run / "manifest.json").read_text())
    rep = json.loads((tiny_run / "report.json").read_text())
    d = m["summary"]["defaults"]
    attacks = [a for a in data.attack_sets if m["summary"]["sets"][a]["n"]]
    return {"data": data, "manifest": m, "report": rep, "classes": json.loads((tiny_run / "classes.json").read_text()),
            "layers": m["summary"]["layers"], "mode": d["mode"], "fn": d["fn"], "k": min(d["k"], m["summary"]["k_max"]),
            "attacks": attacks, "best_layer": operating_layer(rep, m["summary"]["layers"])}


def _markdown(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown]


def _cells(line: str) -> list[str]:
    """The cells of one Markdown table row, split at unescaped ``|`` and unescaped (``\\X`` -> ``X``)."""
    cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [re.sub(r"\\(.)", r"\1", c.strip()) for c in cells]


def _md_tables(at: AppTest) -> list[tuple[list[str], list[dict[str, str]]]]:
    """Every Markdown table of the page, as (header, rows of cell texts)."""
    out = []
    for body in _markdown(at):
        lines = body.strip().splitlines()
        if len(lines) >= 2 and lines[0].startswith("| ") and re.fullmatch(r"\|(:?-+:?\|)+", lines[1]):
            header = _cells(lines[0])
            out.append((header, [dict(zip(header, _cells(r), strict=True)) for r in lines[2:]]))
    return out


def _md_table(at: AppTest, column: str) -> list[dict[str, str]]:
    """The rows of the page's first Markdown table with a column named ``column``, as dicts of cell texts."""
    for header, rows in _md_tables(at):
        if column in header:
            return rows
    raise AssertionError(f"no Markdown table with a column {column!r}")


def _vega_element(at: AppTest, key: str):
    """The Vega-Lite chart element that app_pages.charts.show drew in the container keyed ``key`` (the chart's
    proto carries no key; its container's id ends with it)."""
    def find(node, inside: bool):
        proto = getattr(node, "proto", None)
        inside = inside or str(getattr(proto, "id", "") if hasattr(proto, "id") else "").endswith(f"-{key}")
        if inside and getattr(node, "type", "") == "vega_lite_chart":
            return node
        for child in getattr(node, "children", {}).values():
            got = find(child, inside)
            if got is not None:
                return got
        return None

    got = find(at.main, False)
    assert got is not None, f"no Vega-Lite chart with key {key!r}"
    return got


def _vega(at: AppTest, key: str) -> dict:
    """The Vega-Lite spec of the chart that app_pages.charts.show drew under ``key``."""
    return json.loads(_vega_element(at, key).proto.spec)


def _rows_of(element) -> list[dict]:
    """The data rows of a Vega-Lite chart element drawn by charts.show: its first layer's inline data (charts.show
    moves top-level data into the layers; none reaches Streamlit's Arrow conversion)."""
    assert not element.proto.data.data, "top-level chart data: converted to Arrow by Streamlit"
    return json.loads(element.proto.spec)["layer"][0]["data"]["values"]


def _vega_data(at: AppTest, key: str) -> list[dict]:
    """The data rows of the Vega-Lite chart shown under ``key``."""
    return _rows_of(_vega_element(at, key))


def _mark(layer: dict) -> str:
    return layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"]


def _lines(spec: dict) -> dict[str, tuple[list, np.ndarray]]:
    """{series name: (x values, y values)} of a line_chart.lines_spec chart's lines, in drawing order (null y: NaN)."""
    out: dict[str, tuple[list, list]] = {}
    for layer in spec["layer"]:
        if _mark(layer) == "line":
            for r in layer["data"]["values"]:
                xs, ys = out.setdefault(r["series"], ([], []))
                xs.append(r["x"])
                ys.append(np.nan if r["y"] is None else r["y"])
    return {k: (xs, np.array(ys, dtype=float)) for k, (xs, ys) in out.items()}


def _bar_rows(spec: dict) -> list[dict]:
    """The rows of a charts.before_after_spec chart's bars: ``layer, when, score, threshold, verdict, ...``."""
    return next(la["data"]["values"] for la in spec["layer"] if _mark(la) == "bar")


def _vega_rows(at: AppTest, title_fragment: str = "per layer") -> list[dict]:
    """The data rows of the Vega-Lite chart whose title contains ``title_fragment``."""
    charts = [c for c in at.get("vega_lite_chart")
              if title_fragment in json.loads(c.proto.spec).get("title", {}).get("text", "")]
    assert charts, f"no Vega-Lite chart titled with {title_fragment!r}"
    return _rows_of(charts[0])


def _png(size=(40, 30), color=(200, 200, 200)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


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


# --------------------------------------------------------------------------------------------- Threshold
def _threshold_scores(truth) -> tuple[np.ndarray, np.ndarray]:
    data, layer = truth["data"], truth["best_layer"]
    args = (layer, truth["mode"], truth["fn"], truth["k"])
    pos = data.positives(*args)
    neg = np.concatenate([data.scores(a, *args) for a in truth["attacks"]])
    return pos, neg


def _counts(at: AppTest) -> list[int]:
    """The Threshold page's confusion counts: [tp, fn, fp, tn]."""
    rows = _md_table(at, "")
    return [int(v) for r in rows for k, v in r.items() if k]


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


def _validation_threshold(truth, layer=None) -> float:
    from core.evaluation.verdict import validation_thresholds

    return validation_thresholds(truth["data"], truth["mode"], truth["fn"], truth["k"])[layer or truth["best_layer"]]


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
    from app_pages.line_chart import SIMPLIFY
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
    from app_pages.line_chart import SIMPLIFY
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


@pytest.fixture(scope="module")
def honest(truth) -> dict:
    """The run's report.json with issue 12's keys (core.evaluation.report.honest_report at the run's evaluation config)."""
    from core.evaluation.report import honest_report
    from core.evaluation.setting_figures import EvaluationConfig

    c = EvaluationConfig.from_config(truth["data"].config)
    rep = honest_report(truth["data"], protocol=c.protocol, validation_share=c.validation_share,
                        target_tpr=c.target_tpr, seed=c.seed, n_boot=c.n_boot)
    old = {k: v for k, v in truth["report"].items() if k not in ("headline", "best_mode", "findings")}
    return {**old, **rep, "attack_sets": truth["attacks"]}


#: A column only each page's table has (the pages' tables are Markdown: no key reaches AppTest).
FRAMES = {"run_findings": "verdict", "run_reversals": "difference (points)", "run_attacks": "EER accuracy % (oracle)"}


def _frame(at: AppTest, key: str) -> list[dict[str, str]]:
    """The rows of the table of ``key`` (:data:`FRAMES`): the first one holding its column (run_reversals: with no
    verdict)."""
    col = FRAMES[key]
    tables = [rows for header, rows in _md_tables(at)
              if col in header and (key != "run_reversals" or "verdict" not in header)]
    assert tables, f"no table {key!r}"
    return tables[0]


def _tpr_on_test(at: AppTest) -> str:
    """The Threshold page's line of test-split figures (TPR and the pooled detection rate, with intervals)."""
    return next(m for m in _markdown(at) if m.startswith("**TPR on test**"))


def test_threshold_shows_the_operating_point_and_its_button_sets_slider_and_settings(app, truth, honest, monkeypatch):
    from app_pages import loaders
    from app_pages.charts import ci_text

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
    from app_pages.charts import ci_text
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


def test_failure_cases_threshold_and_count_follow_the_scores(app, truth):
    from core.evaluation import metrics

    _ok(app.switch_page(PAGES["failures"]).run())
    pos, neg = _threshold_scores(truth)
    th = _validation_threshold(truth)
    head = next(m for m in _markdown(app) if m.startswith("Threshold at"))
    caught = int((np.nan_to_num(neg) < th).sum())
    assert f"**{th:.3f}**" in head and f"caught {caught} of {len(neg)}" in head


# ------------------------------------------------------------------------------------------------ Layers
def test_layers_fig6_and_the_report_table(app, truth):
    _ok(app.switch_page(PAGES["layers"]).run())
    spec = _vega(app, "layers_fig6")
    lines = _lines(spec)
    assert len(lines) == 3 and all(x == truth["layers"] for x, _ in lines.values())
    # Live values at the sidebar settings: the test split's Aggr. EER accuracy (core.evaluation.metrics) with 95 % error bars.
    from core.evaluation import metrics
    from core.evaluation.rundata import POSITIVE_SETS
    from core.evaluation.splits import split_sources

    data = truth["data"]
    share = float(data.config.get("evaluation", {}).get("validation_share", 0.5))
    split = split_sources({s: data.evalset(s)["source"] for s in data.set_names}, share, data.config.get("seed", 0))

    def test_scores(name, la):
        return data.scores(name, la, truth["mode"], "dwknn", truth["k"])[np.isin(data.evalset(name)["source"],
                                                                                 split.test)]

    want = []
    for la in truth["layers"]:
        pos = np.concatenate([test_scores(s, la) for s in POSITIVE_SETS if s in data.set_names])
        negs = [n for n in (test_scores(a, la) for a in truth["attacks"]) if len(n)]
        want.append(100 * metrics.aggregate([metrics.roc(pos, n).eer_accuracy for n in negs], [len(n) for n in negs]))
    dw = next(name for name in lines if name.startswith("DW-kNN"))
    assert np.allclose(lines[dw][1], want)
    rows = [r for la in spec["layer"] if _mark(la) == "rule" and "lo" in la["data"]["values"][0]
            for r in la["data"]["values"] if r["series"] == dw]  # its error bars
    lo, y, hi = (np.array([r[f] for r in rows], dtype=float) for f in ("lo", "y", "hi"))
    assert len(y) == len(want) and (hi >= y).all() and (y >= lo).all() and (hi - lo > 0).any()
    table = _md_table(app, "Aggr.")
    assert len(table) == len(truth["report"]["rows"])
    assert {"layer", "processing", "score", "Aggr."} <= set(table[0])
    # The report's EER accuracies (%), one decimal; each column's best in bold.
    from core.evaluation.paper_figures import row_accuracy

    aggr = [100 * row_accuracy(r, "aggr") for r in truth["report"]["rows"]]
    cells = [row["Aggr."] for row in table]
    assert [float(c.strip("*")) for c in cells] == [round(v, 1) for v in aggr]
    assert [c.startswith("**") for c in cells] == [round(v, 1) == round(max(aggr), 1) for v in aggr]


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


# --------------------------------------------------------------------------------------------------- Run
def test_run_page_summarises_the_manifest(app, truth, tiny_run):
    _ok(app.switch_page(PAGES["run"]).run())
    model = json.loads((tiny_run / "model.json").read_text())
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Test accuracy"] == f"{model['test_accuracy']:.2%}"
    sets = _md_table(app, "set")  # the table of evaluation sets
    assert sets[0]["set"] == "authentic"
    want = {k: str(v["n"]) for k, v in truth["manifest"]["summary"]["sets"].items()}
    assert {r["set"]: r["images"] for r in sets} == want
    assert any("`python -m precompute --config precompute/configs/fmnist.toml`" in m for m in _markdown(app))
    assert not app.code  # no code block (the highlighter it loads cost the browser 0.5-0.8 s): the config on request
    app.session_state["run_config"] = True
    _ok(app.run())
    assert json.loads(app.code[0].value) == truth["manifest"]["config"]


def test_run_page_shows_the_split_operating_point_and_findings_per_layer(app, honest, monkeypatch):
    from app_pages import loaders

    monkeypatch.setattr(loaders, "report", lambda run: honest)
    _ok(app.switch_page(PAGES["run"]).run())
    split = honest["split"]
    text = " ".join(_markdown(app))
    assert f"{split['validation']} validation, {split['test']} test" in text
    assert f"{honest['operating_point']['threshold']:.4f}" in text
    f = _frame(app, "run_findings")
    assert len(f) == len(honest["findings"])
    assert [r["verdict"] for r in f] == [e["verdict"] for e in honest["findings"]]
    assert {r["verdict"] for r in f} <= {"holds", "reversed", "not shown"}
    if honest["reversals"]:
        assert len(_frame(app, "run_reversals")) == len(honest["reversals"])
    attacks = _frame(app, "run_attacks")
    assert [r["attack"] for r in attacks] == list(honest["attacks"])
    for r in attacks:  # rates as percent with one decimal, a missing one as a dash
        v = honest["attacks"][r["attack"]].get("success_changed")
        assert r["success (prediction changed)"] == ("–" if v is None else f"{100 * v:.1f} %")


def test_layers_page_opens_on_the_new_report(app, honest, monkeypatch):
    from app_pages import loaders

    monkeypatch.setattr(loaders, "report", lambda run: honest)
    _ok(app.switch_page(PAGES["layers"]).run())
    table = _md_table(app, "Aggr.")
    assert len(table) == len(honest["rows"]) and set(honest["attack_sets"]) <= set(table[0]) | {"errors"}


# ------------------------------------------------------------------------------------------ missing runs
def test_no_run_shows_the_command_that_builds_one(tmp_path, monkeypatch):
    (tmp_path / "fmnist").mkdir()  # an empty folder: no manifest
    at = _ok(_app(tmp_path, monkeypatch))
    assert any("No run found" in e.value for e in at.error)
    assert [c.value for c in at.code] == ["python -m precompute --config precompute/configs/fmnist.toml"]
    assert not at.get("vega_lite_chart")


def test_unfinished_run_shows_the_command_that_finishes_it(tmp_path, monkeypatch):
    run = tmp_path / "fmnist"
    run.mkdir()
    stages = {s: {"status": "done"} for s in ("data", "train", "features")}
    (run / "manifest.json").write_text(json.dumps({"config": {"name": "fmnist"}, "stages": stages, "files": {}}))
    at = _ok(_app(tmp_path, monkeypatch))
    err = " ".join(e.value for e in at.error)
    assert "not finished" in err and "neighbours" in err and "report" in err
    assert any("python -m precompute --config precompute/configs/fmnist.toml" in c.value for c in at.code)


def test_damaged_run_says_which_file_and_how_to_rebuild(tiny_run_copy, monkeypatch):
    with open(tiny_run_copy / "model.pt", "ab") as f:
        f.write(b"\0")  # size no longer matches the manifest
    at = _ok(_app(tiny_run_copy.parent, monkeypatch))
    err = " ".join(e.value for e in at.error)
    assert "cannot be loaded" in err and md("model.pt") in err
    assert any(c.value.startswith("python -m precompute --config") for c in at.code)


def test_charts_carry_their_data_inside_the_layers():
    """charts.show moves a spec's top-level data into its layers: Streamlit would convert it to pandas and Arrow."""
    from app_pages.charts import inline_data

    rows = [{"x": 1}]
    spec = {"title": "t", "data": {"values": rows},
            "layer": [{"mark": "bar"}, {"mark": "text", "data": {"values": [{"x": 2}]}}]}
    out = inline_data(spec)
    assert "data" not in out and out["layer"][0]["data"] == {"values": rows}
    assert out["layer"][1]["data"] == {"values": [{"x": 2}]}  # a layer's own data kept
    assert spec["data"] == {"values": rows} and "data" not in spec["layer"][0]  # the caller's spec untouched
    assert inline_data({"data": {"values": rows}, "mark": "bar"})["data"] == {"values": rows}  # no layers: as is
