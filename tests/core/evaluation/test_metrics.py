"""ROC / EER against a brute-force threshold scan."""
import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from core.evaluation import metrics


def brute_eer(pos, neg):
    """min over all thresholds of max(FPR, FNR), and |FPR - FNR| at the best one."""
    best = None
    for t in np.unique(np.r_[pos, neg, np.inf]):
        fpr, fnr = (neg >= t).mean(), (pos < t).mean()
        if best is None or abs(fpr - fnr) < best[0]:
            best = (abs(fpr - fnr), (fpr + fnr) / 2)
    return best[1]


@pytest.mark.parametrize("seed", range(5))
def test_eer_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    pos = rng.normal(1.0, 1.0, 400)
    neg = rng.normal(-0.5, 1.0, 300)
    r = metrics.roc(pos, neg)
    # interpolation lies within one step (1/n) of the brute-force scan
    assert r.eer == pytest.approx(brute_eer(pos, neg), abs=1 / 300 + 1 / 400)
    assert r.eer_accuracy == pytest.approx(1 - r.eer)
    assert r.auc == pytest.approx(roc_auc_score(np.r_[np.ones(400), np.zeros(300)], np.r_[pos, neg]))
    at = metrics.rates_at(pos, neg, r.eer_threshold)
    assert at["fpr"] == pytest.approx(1 - at["tpr"], abs=0.02)


def test_perfect_and_degenerate():
    r = metrics.roc(np.array([0.9, 0.8]), np.array([0.1, 0.2]))
    assert r.eer == 0 and r.auc == 1 and 0.2 <= r.eer_threshold <= 0.8
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        r = metrics.roc(np.array([0.5]), np.array([]))
    assert np.isnan(r.eer) and any("both classes" in str(x.message) for x in w)


def test_rates_and_rejection():
    pos = np.linspace(0, 1, 101)
    neg = np.linspace(-1, 0.5, 101)
    d = metrics.rates_at(pos, neg, 0.5)
    assert d["tp"] == 51 and d["fp"] == 1 and d["tp"] + d["fn"] == 101
    assert metrics.rejected_at_tpr(pos, neg, 0.95) == pytest.approx((neg < 0.05).mean())


def test_aggregate_weighted():
    assert metrics.aggregate([0.8, 0.6], [300, 100]) == pytest.approx(0.75)
    assert metrics.aggregate([0.8, float("nan")], [1, 5]) == pytest.approx(0.8)


def test_rates_at_eer_threshold_differs_from_eer_accuracy_with_ties():
    """Tied scores: the ROC jumps over FPR = FNR, so the interpolated EER is not reached by any threshold."""
    pos = np.array([0.0] * 3 + [1.0] * 7)
    neg = np.zeros(10)
    r = metrics.roc(pos, neg)
    assert r.eer_accuracy == pytest.approx(10 / 13)  # 0.769, interpolated between (0, 0.3) and (1, 0)
    at = metrics.rates_at(pos, neg, r.eer_threshold)
    assert at["accuracy"] == pytest.approx(0.85)  # the threshold lies in (0, 1]: TPR 0.7, TNR 1
    assert at["accuracy"] != pytest.approx(r.eer_accuracy)
    assert "equals ``Roc.eer_accuracy`` only where" in metrics.rates_at.__doc__


def test_rates_at_and_trusted_share_follow_the_strict_rule():
    from core.evaluation.paper_figures import trusted_share

    pos, neg = np.array([0.2, 0.5, 0.5, 0.9]), np.array([0.1, 0.5])
    assert metrics.rates_at(pos, neg, 0.5)["tp"] == 3 and metrics.rates_at(pos, neg, 0.5)["fp"] == 1
    strict = metrics.rates_at(pos, neg, 0.5, strict=True)
    assert (strict["tp"], strict["fn"], strict["fp"], strict["tn"]) == (1, 3, 0, 2)
    assert trusted_share(pos, np.array([0.5])).tolist() == [0.75]
    assert trusted_share(pos, np.array([0.5]), strict=True).tolist() == [0.25]


def test_roc_corners_draw_the_same_curve():
    rng = np.random.default_rng(0)
    pos, neg = 0.5 + 0.5 * rng.random(400), 0.6 * rng.random(300)  # overlap on [0.5, 0.6] only: long straight runs
    r = metrics.roc(pos, neg)
    fx, fy = metrics.roc_corners(r)
    assert len(fx) < len(r.fpr) / 4 and (fx[0], fy[0], fx[-1], fy[-1]) == (r.fpr[0], r.tpr[0], r.fpr[-1], r.tpr[-1])
    assert np.trapezoid(fy, fx) == pytest.approx(r.auc, abs=1e-12)
    # every point of the full curve lies on a segment of the thinned one
    for x, y in zip(r.fpr, r.tpr):
        j = np.flatnonzero((fx[:-1] <= x) & (x <= fx[1:]) & (fy[:-1] <= y) & (y <= fy[1:]))
        assert any(abs((fx[q + 1] - fx[q]) * (y - fy[q]) - (fy[q + 1] - fy[q]) * (x - fx[q])) < 1e-12 for q in j)
