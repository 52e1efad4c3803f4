"""Operating point chosen on validation, figures at it, and the authors' pooled threshold."""
from __future__ import annotations

import numpy as np
import pytest

from core.evaluation import metrics
from core.evaluation.bootstrap import SourceBootstrap
from core.evaluation.metrics import detection_rate, threshold_at_tpr
from core.evaluation.operating_point import (
    AttackItems,
    Setting,
    choose_operating_point,
    measure,
    nearest_eer_threshold,
    selection_criterion,
)
from core.evaluation.report import attempted_sources, success_rates
from core.evaluation.splits import split_sources


def test_threshold_follows_rejected_at_tpr_rule():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pos, neg = np.round(rng.random(97), 2), rng.random(40) * 0.8
        for tpr in (0.5, 0.9, 0.95, 1.0):
            th = threshold_at_tpr(pos, tpr)
            assert (pos >= th).mean() >= tpr
            assert detection_rate(neg, th) == pytest.approx(metrics.rejected_at_tpr(pos, neg, tpr))


def _synthetic(seed=0):
    """Scores of 4 candidate settings for items derived from 200 source images."""
    rng = np.random.default_rng(seed)
    src = np.arange(200) + 1000
    settings = [Setting(L, "pca", "dwknn", 50) for L in ("a", "b", "c", "d")]
    scores = {}
    for i, s in enumerate(settings):
        sep = 0.1 * (i + 1)
        scores[s] = {"pos": rng.random(200) * 0.6 + sep, "x": rng.random(80) * 0.6, "y": rng.random(50) * 0.6}
    srcs = {"pos": src, "x": src[:80], "y": src[40:90]}
    return settings, scores, srcs


def test_choice_ignores_test_scores():
    settings, scores, srcs = _synthetic()
    split = split_sources(srcs, 0.5, seed=0)
    val = {k: split.mask(v, "validation") for k, v in srcs.items()}

    def chooser(sc):
        return choose_operating_point(settings, lambda s: (sc[s]["pos"][val["pos"]],
                                                           {a: sc[s][a][val[a]] for a in ("x", "y")}))

    op = chooser(scores)
    crit = {s: selection_criterion(scores[s]["pos"][val["pos"]], {a: scores[s][a][val[a]] for a in "xy"}, 0.95)[1]
            for s in settings}
    assert op.criterion == max(crit.values()) and op.setting == max(crit, key=crit.get)
    # scramble every test-split score: the choice and its threshold do not move
    rng = np.random.default_rng(9)
    moved = {s: {k: np.where(val[k], v, rng.random(len(v))) for k, v in d.items()} for s, d in scores.items()}
    worse = {s: {k: np.where(val[k], v, 0.0 if k == "pos" else 1.0) for k, v in d.items()} for s, d in scores.items()}
    for sc in (moved, worse):
        again = chooser(sc)
        assert again.setting == op.setting and again.threshold == op.threshold
    # whereas changing validation scores does move it
    flipped = {s: {k: (np.where(val[k], 0.0, v) if s == op.setting and k == "pos" else v) for k, v in d.items()}
               for s, d in scores.items()}
    assert chooser(flipped).setting != op.setting


def test_measure_hand_made():
    src = np.arange(10)
    bs = SourceBootstrap(src, n_boot=50, seed=0)
    pos = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.95])
    # attacks attempted on sources 0..5; stored items (changed predictions) on 0, 1, 2, 4; item 2 not fooled
    scores = np.array([0.6, 0.1, 0.9, 0.2])
    fooled = np.array([True, True, False, True])
    attempts = np.r_[np.ones(6), np.zeros(4)]
    out = measure(bs, 0.5, pos, src, {"a": AttackItems(scores, np.array([0, 1, 2, 4]), fooled, attempts)})
    assert out["tpr"].value == pytest.approx(0.6)
    assert out["attacks"]["a"]["detection_rate"].value == pytest.approx(0.5)
    assert out["attacks"]["a"]["guarded_success"].value == pytest.approx(1 / 6)  # only item 0: fooled and trusted
    v, lo, hi = out["attacks"]["a"]["guarded_success"].interval()
    assert lo <= v <= hi


def test_success_rates_and_attempts():
    true = np.array([1, 2, 3, 4, 5])
    pred = np.array([1, 7, 3, 9, 6])
    target = np.array([0, 7, 8, 2, 6])
    r = success_rates(true, pred, target, 10)
    assert r == {"changed": 0.3, "target": 0.2}
    assert success_rates(true, pred, np.full(5, -1), 10)["target"] is None
    auth = np.array([5, 9, 2, 7])
    ids, n, exact = attempted_sources(auth, 2, np.array([9]))
    assert exact and ids.tolist() == [5, 9] and n.tolist() == [1, 1]
    ids, n, exact = attempted_sources(auth, 2, np.array([7]))
    assert not exact and n.sum() == pytest.approx(2)


def _brute_nearest(pos, neg):
    best = None
    for t in sorted(set(np.r_[pos, neg]) | {-np.inf}, reverse=True):
        tpr, fpr = (pos > t).mean(), (neg > t).mean()
        d = abs((1 - tpr) - fpr)
        if best is None or d < best[0]:
            best = (d, t, tpr, fpr)
    return best


def test_authors_threshold_equals_eer_on_toy_case():
    pos = np.array([0.2, 0.6, 0.7, 0.8, 0.9])
    neg = np.array([0.1, 0.3, 0.4, 0.5, 0.65])
    r = nearest_eer_threshold(pos, neg)
    # trusting score > 0.5: FNR = 1/5 = FPR, the exact crossing
    assert r["threshold"] == 0.5 and r["tpr"] == 0.8 and r["fpr"] == 0.2
    assert r["accuracy"] == pytest.approx(metrics.roc(pos, neg).eer_accuracy)
    rng = np.random.default_rng(3)
    for _ in range(30):
        p, n = np.round(rng.random(30), 1), np.round(rng.random(20) * 0.7, 1)
        d, t, tpr, fpr = _brute_nearest(p, n)
        got = nearest_eer_threshold(p, n)
        assert got["threshold"] == t and got["tpr"] == tpr and got["fpr"] == fpr


def test_authors_rule_threshold_is_nearest_point_on_pooled_validation():
    settings, scores, srcs = _synthetic(1)
    split = split_sources(srcs, 0.5, seed=0)
    val = {k: split.mask(v, "validation") for k, v in srcs.items()}

    def vs(s):
        return scores[s]["pos"][val["pos"]], {a: scores[s][a][val[a]] for a in ("x", "y")}

    op = choose_operating_point(settings, vs, rule="nearest_eer")
    acc = {}
    for s in settings:
        pos, att = vs(s)
        acc[s] = nearest_eer_threshold(pos, np.r_[att["x"], att["y"]])
    best = max(settings, key=lambda s: acc[s]["accuracy"])
    assert op.setting == best and op.rule == "nearest_eer" and op.strict and op.target_tpr is None
    assert op.threshold == acc[best]["threshold"] and op.criterion == acc[best]["accuracy"]
    assert op.tpr_validation == acc[best]["tpr"]
    # trusted means score > threshold under this rule
    assert not op.trusted([op.threshold])[0] and op.trusted([np.nextafter(op.threshold, 2)])[0]
    with pytest.raises(ValueError):
        choose_operating_point(settings, vs, rule="oracle")


def test_measure_strict_rejects_a_score_at_the_threshold():
    src = np.arange(4)
    bs = SourceBootstrap(src, n_boot=20, seed=0)
    pos = np.array([0.5, 0.7, 0.9, 0.2])
    items = {"a": AttackItems(np.array([0.5, 0.1]), np.array([0, 1]), np.array([True, True]), np.ones(4))}
    loose = measure(bs, 0.5, pos, src, items)
    strict = measure(bs, 0.5, pos, src, items, strict=True)
    assert loose["tpr"].value == 0.75 and strict["tpr"].value == 0.5
    assert loose["attacks"]["a"]["detection_rate"].value == 0.5
    assert strict["attacks"]["a"]["detection_rate"].value == 1.0
    assert loose["attacks"]["a"]["guarded_success"].value == 0.25 and strict["attacks"]["a"]["guarded_success"].value == 0


def test_a_candidate_without_validation_positives_is_no_candidate():
    """No positives -> no threshold: such a setting is skipped, not chosen with a NaN threshold."""
    from core.evaluation.operating_point import Setting, choose_operating_point

    with pytest.raises(ValueError, match="no candidate"):
        choose_operating_point([Setting("a", "none", "knn", 1)], lambda s: (np.zeros(0), {"x": np.array([.1, .2])}))
