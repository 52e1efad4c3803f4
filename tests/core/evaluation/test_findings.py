"""The paper's findings per layer, and the honest report on a real tiny run."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.evaluation.bootstrap import SourceBootstrap
from core.evaluation.findings import findings, reversals, verdict
from core.evaluation.operating_point import Setting


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


def test_findings_verdicts_follow_the_data_per_layer_and_mode():
    layers = ["c1", "c2", "fc"]
    q = {("c1", "pca"): 0.6, ("c1", "none"): 0.2, ("c2", "pca"): 0.3, ("c2", "none"): 0.3,
         ("fc", "pca"): 0.1, ("fc", "none"): 0.5}

    def quality(s):
        return q[(s.layer, s.mode)] + {"knn": 0.0, "wknn": 0.2, "dwknn": -0.2}[s.fn]

    get, bs = _test_scores(quality)
    out = findings(bs, get, layers=layers, modes=["none", "pca"], fns=["knn", "wknn", "dwknn"],
                   default=Setting("fc", "pca", "knn", 10))
    by = {(e["finding"], e["layer"], e["mode"]): e for e in out}
    assert by[("whitening_helps", "c1", "pca")]["verdict"] == "holds"
    assert by[("whitening_helps", "c2", "pca")]["verdict"] == "not shown"  # identical scores: zero difference
    assert by[("whitening_helps", "fc", "pca")]["verdict"] == "reversed"
    assert not any(f == "whitening_helps" and m == "none" for f, _, m in by)
    # the last layer loses under "pca" but wins under "none": each mode is stated on its own
    assert by[("mid_beats_last", "c1", "pca")]["verdict"] == "holds"
    assert by[("mid_beats_last", "c1", "none")]["verdict"] == "reversed"
    assert by[("mid_beats_last", "c2", "none")]["verdict"] == "reversed"
    assert ("mid_beats_last", "fc", "pca") not in by
    assert all(by[("wknn_beats_knn", L, m)]["verdict"] == "holds" for L in layers for m in ("none", "pca"))
    assert all(by[("dwknn_beats_knn", L, m)]["verdict"] == "reversed" for L in layers for m in ("none", "pca"))
    e = by[("whitening_helps", "c1", "pca")]
    assert set(e["per_attack"]) == {"x", "y"} and e["difference"][1] <= e["difference"][0] <= e["difference"][2]
    assert all(p["verdict"] == "holds" for p in e["per_attack"].values())
    # no "none" mode: the whitening finding is left out; pca_nw is compared with none when present
    assert not any(e["finding"] == "whitening_helps" for e in
                   findings(bs, get, layers=layers, modes=["pca"], fns=["knn"], default=Setting("fc", "pca", "knn", 1)))
    q.update({(L, "pca_nw"): q[(L, "none")] for L in layers})
    nw = findings(bs, get, layers=layers, modes=["none", "pca_nw"], fns=["knn"], default=Setting("fc", "none", "knn", 1))
    assert {(e["layer"], e["mode"], e["verdict"]) for e in nw if e["finding"] == "whitening_helps"} == \
        {(L, "pca_nw", "not shown") for L in layers}

    rev = reversals(out)
    assert {"finding": "mid_beats_last", "layer": "c1", "mode": "none", "attack": "aggr",
            "difference": by[("mid_beats_last", "c1", "none")]["difference"]} in rev
    assert any(r["attack"] == "x" and r["finding"] == "whitening_helps" and r["layer"] == "fc" for r in rev)
    assert not any(r["finding"] == "wknn_beats_knn" for r in rev)
    n_rev = sum((e["verdict"] == "reversed") + sum(p["verdict"] == "reversed" for p in e["per_attack"].values())
                for e in out)
    assert len(rev) == n_rev


def test_json_safe():
    from core.evaluation.report import json_safe
    got = json_safe({"a": [np.float32(0.5), float("nan"), np.inf], "b": (np.int64(3), np.bool_(True)),
                     "c": np.array([1.0, np.nan]), 4: None})
    assert got == {"a": [0.5, None, None], "b": [3, True], "c": [1.0, None], "4": None}
    json.dumps(got, allow_nan=False)


def _three(x):
    return isinstance(x, list) and len(x) == 3 and all(isinstance(v, float) for v in x)


def _scramble_test_neighbours(monkeypatch, test_ids):
    """Make RunData return random neighbours for every test-split item (validation items unchanged)."""
    from core.evaluation.rundata import RunData, SetNeighbours
    orig = RunData.neighbours

    def scrambled(self, name, layer, mode):
        nb = orig(self, name, layer, mode)
        on_test = np.isin(self.evalset(name)["source"], test_ids)
        I = nb.I.copy()
        I[on_test] = np.random.default_rng(len(I)).integers(0, len(self.train_labels), (int(on_test.sum()),
                                                                                          I.shape[1]))
        return SetNeighbours(I, nb.D)

    monkeypatch.setattr(RunData, "neighbours", scrambled)


@pytest.mark.parametrize("protocol", ["paper", "authors"])
def test_honest_report_contract_on_tiny_run(tiny_run, monkeypatch, protocol):
    from core.evaluation.operating_point import nearest_eer_threshold
    from core.evaluation.report import honest_report
    from core.evaluation.rundata import RunData
    from core.evaluation.splits import split_sources

    data = RunData(tiny_run)
    rep = honest_report(data, protocol=protocol, validation_share=0.5, target_tpr=0.95, seed=0, n_boot=200)
    json.dumps(rep, allow_nan=False)  # strict JSON: no NaN anywhere
    assert rep["protocol"] == protocol
    sp = rep["split"]
    n_sources = len(np.unique(np.concatenate([data.evalset(s)["source"] for s in data.set_names])))
    assert sp["seed"] == 0 and sp["validation"] + sp["test"] == n_sources
    assert abs(sp["validation"] - sp["test"]) <= 1
    op = rep["operating_point"]
    assert {"layer", "processing", "fn", "k", "threshold", "target_tpr", "tpr_test", "rule"} <= set(op)
    assert op["layer"] in data.layers and op["processing"] in data.modes and _three(op["tpr_test"])
    split = split_sources({s: data.evalset(s)["source"] for s in data.set_names}, 0.5, 0)

    def side(name, which):
        sc = data.scores(name, op["layer"], op["processing"], op["fn"], op["k"])
        return np.nan_to_num(sc[split.mask(data.evalset(name)["source"], which)], nan=0.0)

    if protocol == "paper":
        assert rep["positives"] == ["authentic", "noise"] and op["rule"] == "target_tpr"
        assert op["target_tpr"] == 0.95 and op["tpr_validation"] >= 0.95
    else:
        # positives = authentic only; one threshold: the nearest point of validation authentic vs pooled attacks
        assert rep["positives"] == ["authentic"] and op["rule"] == "nearest_eer" and op["target_tpr"] is None
        ref = nearest_eer_threshold(side("authentic", "validation"),
                                    np.concatenate([side(a, "validation") for a in data.attack_sets]))
        assert op["threshold"] == ref["threshold"] and op["tpr_validation"] == ref["tpr"]
        assert op["criterion_validation"] == ref["accuracy"]
        pos_t = side("authentic", "test")
        assert op["tpr_test"][0] == pytest.approx((pos_t > op["threshold"]).mean())
        for a in data.attack_sets:
            assert rep["attacks"][a]["detection_rate"][0] == pytest.approx((side(a, "test") <= op["threshold"]).mean())
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
    assert rep["findings"] and all(e["verdict"] in ("holds", "reversed", "not shown") and len(e["difference"]) == 3
                                   for e in rep["findings"])
    assert {e["finding"] for e in rep["findings"]} >= {"mid_beats_last", "wknn_beats_knn", "dwknn_beats_knn"}
    # stated for every processing mode of the run
    assert {e["mode"] for e in rep["findings"] if e["finding"] == "mid_beats_last"} == set(data.modes)
    assert rep["reversals"] == reversals(rep["findings"])

    # neighbours of test-split items changed: the operating point (chosen on validation) does not move
    _scramble_test_neighbours(monkeypatch, split.test)
    rep2 = honest_report(RunData(tiny_run, verify=False), protocol=protocol, validation_share=0.5, target_tpr=0.95,
                         seed=0, n_boot=200)
    for key in ("layer", "processing", "fn", "k", "threshold"):
        assert rep2["operating_point"][key] == op[key]
    assert any(rep2["attacks"][a]["eer_accuracy"][0] != rep["attacks"][a]["eer_accuracy"][0] for a in rep["attacks"])


def test_no_validation_adversarial_falls_back_to_the_default_setting(tiny_run, monkeypatch):
    """A run whose validation side has no adversarial (a tiny random-weight run) still gets its report: the
    configured default setting, its threshold at the target TPR of the validation positives."""
    from core.evaluation import report as honest
    from core.evaluation.metrics import threshold_at_tpr
    from core.evaluation.rundata import RunData

    data = RunData(tiny_run, verify=False)
    sets = set(data.attack_sets)
    real = honest._SplitScores.get

    def no_validation_attacks(self, s, name, side):
        scores, src = real(self, s, name, side)
        return (scores[:0], src[:0]) if side == "validation" and name in sets else (scores, src)

    monkeypatch.setattr(honest._SplitScores, "get", no_validation_attacks)
    rep = honest.honest_report(data, protocol="paper", validation_share=0.5, target_tpr=0.9, seed=0, n_boot=100)
    op, d = rep["operating_point"], honest._default_setting(data)
    assert (op["layer"], op["processing"], op["fn"], op["k"]) == (d.layer, d.mode, d.fn, d.k)
    assert op["criterion"] == honest.FALLBACK and op["criterion_validation"] is None
    honest_split = honest.split_sources({s: data.evalset(s)["source"] for s in data.set_names}, 0.5, 0)
    pos = honest._SplitScores(data, honest_split, [d.k], honest.POSITIVE_SETS).positives(d, "validation")[0]
    assert op["threshold"] == pytest.approx(threshold_at_tpr(pos, 0.9))
    json.dumps(rep, allow_nan=False)
