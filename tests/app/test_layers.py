"""The Layers page (AppTest)."""
from __future__ import annotations

import numpy as np

from tests.app.apptest import PAGES, _lines, _mark, _md_table, _ok, _vega


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


def test_layers_page_opens_on_the_new_report(app, honest, monkeypatch):
    from app_ui import cache as loaders

    monkeypatch.setattr(loaders, "report", lambda run: honest)
    _ok(app.switch_page(PAGES["layers"]).run())
    table = _md_table(app, "Aggr.")
    assert len(table) == len(honest["rows"]) and set(honest["attack_sets"]) <= set(table[0]) | {"errors"}
