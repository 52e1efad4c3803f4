"""The paper's findings per layer, and the honest report on a real tiny run."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from core.bootstrap import SourceBootstrap
from core.findings import findings, verdict
from core.operating_point import Setting


def test_verdict():
    assert verdict([0.02, 0.01, 0.03]) == "holds"
    assert verdict([-0.02, -0.03, -0.01]) == "reversed"
    assert verdict([0.01, -0.01, 0.03]) == "not shown"
    assert verdict([0.0, 0.0, 0.0]) == "not shown"


def _test_scores(quality):
    """Scores where a setting's positives sit ``quality(setting)`` above its negatives."""
    rng = np.random.default_rng(0)
    src = np.arange(300)
    base_p, base_x, base_y = rng.random(300), rng.random(120), rng.random(80)

    def get(s):
        q = quality(s)
        return (base_p + q, src, {"x": (base_x, src[:120]), "y": (base_y, src[100:180])})
    return get, SourceBootstrap(src, n_boot=300, seed=0)


def test_findings_verdicts_follow_the_data():
    layers = ["c1", "c2", "fc"]
    q = {("c1", "pca"): 0.6, ("c1", "none"): 0.2, ("c2", "pca"): 0.3, ("c2", "none"): 0.3,
         ("fc", "pca"): 0.1, ("fc", "none"): 0.5}

    def quality(s):
        return q[(s.layer, s.mode)] + {"knn": 0.0, "wknn": 0.2, "dwknn": -0.2}[s.fn]

    get, bs = _test_scores(quality)
    out = findings(bs, get, layers=layers, modes=["none", "pca"], fns=["knn", "wknn", "dwknn"],
                   default=Setting("fc", "pca", "knn", 10))
    by = {(e["finding"], e["layer"]): e for e in out}
    assert by[("whitening_helps", "c1")]["verdict"] == "holds"
    assert by[("whitening_helps", "c2")]["verdict"] == "not shown"  # identical scores: zero difference
    assert by[("whitening_helps", "fc")]["verdict"] == "reversed"
    assert by[("mid_beats_last", "c1")]["verdict"] == "holds"
    assert ("mid_beats_last", "fc") not in by
    assert all(by[("wknn_beats_knn", L)]["verdict"] == "holds" for L in layers)
    assert all(by[("dwknn_beats_knn", L)]["verdict"] == "reversed" for L in layers)
    e = by[("whitening_helps", "c1")]
    assert set(e["per_attack"]) == {"x", "y"} and e["difference"][1] <= e["difference"][0] <= e["difference"][2]
    # no "none" mode: the whitening finding is left out
    assert not any(e["finding"] == "whitening_helps" for e in
                   findings(bs, get, layers=layers, modes=["pca"], fns=["knn"], default=Setting("fc", "pca", "knn", 1)))


def _three(x):
    return isinstance(x, list) and len(x) == 3 and all(isinstance(v, float) for v in x)


def test_honest_report_contract_on_tiny_run(tiny_run, monkeypatch):
    from core.evaluation import RunData
    from core.honest import honest_report

    data = RunData(tiny_run)
    rep = honest_report(data, validation_share=0.5, target_tpr=0.95, seed=0, n_boot=200)
    json.dumps(rep)  # JSON-serialisable
    sp = rep["split"]
    n_sources = len(np.unique(np.concatenate([data.evalset(s)["source"] for s in data.set_names])))
    assert sp["seed"] == 0 and sp["validation"] + sp["test"] == n_sources
    assert abs(sp["validation"] - sp["test"]) <= 1
    op = rep["operating_point"]
    assert {"layer", "processing", "fn", "k", "threshold", "target_tpr", "tpr_test"} <= set(op)
    assert op["layer"] in data.layers and op["processing"] in data.modes and _three(op["tpr_test"])
    assert op["tpr_validation"] >= 0.95
    assert set(rep["attacks"]) == set(data.attack_sets)
    for name, a in rep["attacks"].items():
        for key in ("detection_rate", "guarded_success", "eer_accuracy"):
            v, lo, hi = a[key]
            assert _three(a[key]) and lo <= v <= hi and 0 <= lo and hi <= 1, (name, key, a[key])
        assert 0 <= a["success_changed"] <= 1
        assert a["success_target"] is None or 0 <= a["success_target"] <= a["success_changed"]
        assert a["attempts_exact"]
        # guarded success never exceeds the success rate (only fooled images count)
        assert a["guarded_success"][0] <= a["success_changed"] + 1e-12
    assert rep["findings"] and all(_three(e["difference"]) and e["verdict"] in ("holds", "reversed", "not shown")
                                   for e in rep["findings"])
    assert {e["finding"] for e in rep["findings"]} >= {"mid_beats_last", "wknn_beats_knn", "dwknn_beats_knn"}

    # scores of test-split items changed: the operating point (chosen on validation) does not move
    test_ids = None
    orig = RunData.scores

    def scrambled(self, name, layer, mode, fn, k):
        s = orig(self, name, layer, mode, fn, k).copy()
        on_test = np.isin(self.evalset(name)["source"], test_ids)
        s[on_test] = np.random.default_rng(len(s)).random(int(on_test.sum()))
        return s

    from core.splits import split_sources
    test_ids = split_sources({s: data.evalset(s)["source"] for s in data.set_names}, 0.5, 0).test
    monkeypatch.setattr(RunData, "scores", scrambled)
    rep2 = honest_report(RunData(tiny_run), validation_share=0.5, target_tpr=0.95, seed=0, n_boot=200)
    for key in ("layer", "processing", "fn", "k", "threshold"):
        assert rep2["operating_point"][key] == op[key]
    assert any(not math.isclose(rep2["attacks"][a]["eer_accuracy"][0], rep["attacks"][a]["eer_accuracy"][0])
               for a in rep["attacks"])
