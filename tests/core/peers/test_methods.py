"""Each peer detector of core.peers against a hand-computed case, and the leave-one-attack-out rule."""
from __future__ import annotations

import math

import numpy as np
import pytest

from core.evaluation.metrics import threshold_at_tpr
from core.peers import (
    DETECTOR_NAMES,
    LID,
    DeepKNN,
    Inputs,
    KNNLayer,
    KNNLogistic,
    KNNMean,
    KthNeighbour,
    Mahalanobis,
    MaxSoftmax,
    PeerDetector,
    TrainSet,
    Validation,
    fit_all,
    lid_mle,
)
from core.peers.methods import LOG_FLOOR

TRAIN_LABELS = np.array([0, 0, 1, 1])


def inputs(predicted, nbrs=None, probs=None, features=None) -> Inputs:
    """Inputs of len(predicted) images; ``nbrs`` = {(layer, mode): (I, D)}."""
    predicted = np.asarray(predicted)
    nbrs = nbrs or {}

    def nb(layer, mode, k):
        I, D = nbrs[(layer, mode)]
        return np.asarray(I)[:, :k], np.asarray(D, float)[:, :k]

    probs = np.full((len(predicted), 2), 0.5) if probs is None else np.asarray(probs, float)
    return Inputs(predicted, probs, features or {}, nb, TRAIN_LABELS)


def test_knn_layer_is_the_papers_score():
    x = inputs([0], {("a", "m"): ([[0, 2, 1]], [[1.0, 4.0, 4.0]])})
    assert KNNLayer("a", "m", "knn", 3).score(x)[0] == pytest.approx(2 / 3)
    # DW-kNN: weights 1, 1/4, 1/4; labels 0, 1, 0 -> (1 + 1/4) / 1.5
    assert KNNLayer("a", "m", "dwknn", 3).score(x)[0] == pytest.approx(1.25 / 1.5)


def test_knn_mean_is_the_mean_log_score_with_a_floor():
    x = inputs([0], {("a", "m"): ([[0, 2]], [[1.0, 1.0]]), ("b", "m"): ([[2, 3]], [[1.0, 1.0]])})
    s = KNNMean(["a", "b"], "m", "knn", 2).score(x)[0]
    assert s == pytest.approx((math.log(0.5) + math.log(LOG_FLOOR)) / 2)


def test_knn_logistic_is_a_standardised_linear_function_of_the_log_scores():
    # layer a separates: positives have their 2 neighbours of the predicted class, adversarials none
    pos = inputs([0, 0, 1, 1], {("a", "m"): ([[0, 1], [0, 1], [2, 3], [2, 3]], np.ones((4, 2)))})
    neg = inputs([1, 1, 0, 0], {("a", "m"): ([[0, 1], [0, 2], [2, 3], [0, 3]], np.ones((4, 2)))})
    d = KNNLogistic(["a"], "m", "knn", 2).fit(TrainSet(TRAIN_LABELS, None), Validation(pos, {"x": neg}))
    ls = d.log_scores(neg)
    want = (ls - d.lr.mean) / d.lr.scale @ d.lr.coef + d.lr.intercept
    assert np.allclose(d.score(neg), want)
    assert d.score(pos).min() > d.score(neg).max()
    again = KNNLogistic(["a"], "m", "knn", 2).load_state(d.state())
    assert np.array_equal(again.score(neg), d.score(neg))


def test_deep_knn_credibility_is_the_calibration_p_value():
    # layer a: neighbours 0, 1 (labels 0, 0) -> 0 disagree; layer b: 2, 0 (labels 1, 0) -> 1 disagree: alpha = 1
    x = inputs([0], {("a", "m"): ([[0, 1]], [[1, 1]]), ("b", "m"): ([[2, 0]], [[1, 1]])})
    d = DeepKNN(["a", "b"], "m", k=2).load_state({"calibration": np.array([0.0, 1.0, 2.0, 3.0])})
    assert d.nonconformity(x)[0] == 1
    assert d.score(x)[0] == pytest.approx(3 / 4)  # calibration values >= 1: 1, 2, 3


def test_deep_knn_calibrates_on_the_held_out_positives_only():
    I = np.array([[0, 1], [0, 2], [2, 3], [1, 3]])  # predicted 0: disagreements 0, 1, 2, 1
    pos = inputs([0, 0, 0, 0], {("a", "m"): (I, np.ones((4, 2)))})
    cal = np.array([True, True, False, False])
    d = DeepKNN(["a"], "m", k=2).fit(None, Validation(pos, {}, cal))
    assert d.calibration.tolist() == [0.0, 1.0]


def test_mahalanobis_tied_covariance_and_predicted_class_distance():
    # one layer, 1-D: class 0 at -1, 1 (mean 0), class 1 at 9, 11 (mean 10); tied variance 1
    train = TrainSet(TRAIN_LABELS, lambda la: np.array([[-1.0], [1.0], [9.0], [11.0]]))
    d = Mahalanobis(["f"]).fit_gaussians(train)
    assert d.means["f"].ravel().tolist() == [0.0, 10.0]
    assert d.precision["f"][0, 0] == pytest.approx(1.0)
    x = inputs([0, 1], features={"f": np.array([[2.0], [2.0]])})
    assert d.layer_scores(x).ravel().tolist() == pytest.approx([-4.0, -64.0])


def test_mahalanobis_ensemble_round_trips_through_its_state():
    rng = np.random.default_rng(0)
    feats = {"f": rng.normal(size=(4, 2)), "g": rng.normal(size=(4, 3))}
    train = TrainSet(TRAIN_LABELS, lambda la: feats[la])
    pos = inputs([0, 1, 0, 1], features={"f": rng.normal(size=(4, 2)), "g": rng.normal(size=(4, 3))})
    neg = inputs([0, 1, 0, 1], features={"f": 5 + rng.normal(size=(4, 2)), "g": 5 + rng.normal(size=(4, 3))})
    d = Mahalanobis(["f", "g"]).fit(train, Validation(pos, {"x": neg}))
    again = Mahalanobis(["f", "g"]).load_state(d.state())
    assert np.allclose(again.score(neg), d.score(neg))
    assert d.score(pos).mean() > d.score(neg).mean()


def test_lid_maximum_likelihood_estimate():
    # r = 1, 2, 4 (D squared): mean log(r / 4) = (log 1/4 + log 1/2 + 0) / 3 = -log 2 -> LID = 1 / log 2
    assert lid_mle(np.array([[1.0, 4.0, 16.0]]), 3)[0] == pytest.approx(1 / math.log(2))
    assert np.isinf(lid_mle(np.array([[4.0, 4.0]]), 2)[0])


def test_lid_detector_scores_by_its_logistic_regression():
    D_pos = np.array([[1.0, 4.0, 16.0], [1.0, 4.0, 17.0], [1.0, 5.0, 16.0]])  # spread out: low LID
    D_neg = np.array([[14.0, 15.0, 16.0], [15.0, 15.5, 16.0], [13.0, 15.0, 16.0]])  # all near: high LID
    pos = inputs([0, 0, 0], {("a", "m"): (np.zeros((3, 3), int), D_pos)})
    neg = inputs([0, 0, 0], {("a", "m"): (np.zeros((3, 3), int), D_neg)})
    d = LID(["a"], "m", k=3).fit(None, Validation(pos, {"x": neg}))
    assert d.score(pos).min() > d.score(neg).max()


def test_kth_neighbour_is_minus_the_kth_distance():
    x = inputs([0, 1], {("p", "l2"): ([[0, 1], [2, 3]], [[1.0, 4.0], [0.25, 9.0]])})
    assert KthNeighbour("p", k=2).score(x).tolist() == [-2.0, -3.0]


def test_max_softmax():
    x = inputs([1, 0], probs=[[0.2, 0.8], [0.6, 0.4]])
    assert MaxSoftmax().score(x).tolist() == [0.8, 0.6]


class Spy(PeerDetector):
    """Records the validation attacks every fit sees."""

    name, supervised = "spy", True
    seen: list

    def fit(self, train, val):
        self.saw = sorted(val.attacks)
        Spy.seen.append(self.saw)
        return self

    def score(self, x):
        return np.asarray(x.predicted, float)


def _val_with_attacks(names):
    rng = np.random.default_rng(1)

    def mk(lo):
        D = np.sort(rng.uniform(lo, lo + 1, size=(6, 3)), axis=1)
        return inputs(np.zeros(6, int), {("a", "m"): (np.zeros((6, 3), int), D)})

    return Validation(mk(0.0), {n: mk(0.5 + i) for i, n in enumerate(names)})


def test_the_tested_attack_never_appears_in_its_leave_one_attack_out_fit():
    Spy.seen = []
    fits = fit_all(Spy(), None, _val_with_attacks(["fgsm", "pgd", "cw"]), rule="target_tpr", target_tpr=0.9)
    assert set(fits) == {"all", "fgsm", "pgd", "cw"}
    assert fits["all"].detector.saw == ["cw", "fgsm", "pgd"]
    for a in ("fgsm", "pgd", "cw"):
        assert a not in fits[a].detector.saw and len(fits[a].detector.saw) == 2


def test_a_leave_one_attack_out_fit_ignores_the_tested_attacks_data():
    val = _val_with_attacks(["fgsm", "pgd"])
    garbage = inputs(np.zeros(6, int), {("a", "m"): (np.zeros((6, 3), int), np.full((6, 3), 1e3))})
    changed = Validation(val.positives, {"fgsm": garbage, "pgd": val.attacks["pgd"]})
    a = fit_all(LID(["a"], "m", 3), None, val, rule="target_tpr", target_tpr=0.9)["fgsm"]
    b = fit_all(LID(["a"], "m", 3), None, changed, rule="target_tpr", target_tpr=0.9)["fgsm"]
    assert np.array_equal(a.detector.lr.coef, b.detector.lr.coef) and a.threshold == b.threshold
    c = fit_all(LID(["a"], "m", 3), None, changed, rule="target_tpr", target_tpr=0.9)["pgd"]
    assert not np.array_equal(a.detector.lr.coef, c.detector.lr.coef)  # the data does matter when seen


def test_unsupervised_detectors_get_one_fit_with_the_target_tpr_threshold():
    val = _val_with_attacks(["fgsm"])
    fits = fit_all(KthNeighbour("a", k=3, mode="m"), None, val, rule="target_tpr", target_tpr=0.9)
    assert list(fits) == ["all"]
    assert fits["all"].threshold == threshold_at_tpr(KthNeighbour("a", 3, "m").score(val.positives), 0.9)


def test_deep_knn_threshold_uses_the_positives_not_calibrated_on():
    I = np.array([[0, 1]] * 4 + [[2, 3]] * 4)  # predicted 0: the last 4 disagree fully
    pos = inputs(np.zeros(8, int), {("a", "m"): (I, np.ones((8, 2)))})
    cal = np.array([True] * 4 + [False] * 4)
    f = fit_all(DeepKNN(["a"], "m", 2), None, Validation(pos, {}, cal), rule="target_tpr", target_tpr=1.0)["all"]
    # calibration alphas are all 0, the others' alpha 2 has p-value 0: the threshold keeps them all
    assert f.threshold == 0.0


def test_the_config_choices_are_the_detector_names():
    from core.config.schema import CHOICES, DEFAULTS

    assert tuple(CHOICES[("detectors", "enabled")]) == DETECTOR_NAMES
    assert tuple(DEFAULTS["detectors"]["enabled"]) == DETECTOR_NAMES


def test_each_detector_is_scored_and_timed_on_its_own_work():
    from core.peers.fitting import score_sets

    x = inputs([0], {("a", "m"): ([[0, 2, 1]], [[1.0, 4.0, 4.0]])})
    x.memo[("knn", "a", "m", "knn", 3)] = np.array([99.0])  # what another detector left on the same inputs
    scores, ms = score_sets(KNNLayer("a", "m", "knn", 3), {"s": x})
    assert scores["s"][0] == pytest.approx(2 / 3) and ms > 0
