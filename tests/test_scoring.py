"""kNN scores against hand-computed cases."""
import numpy as np
import pytest

from core import scoring

LABELS = np.array([0, 1, 1, 2, 0])


def test_hand_computed_three_neighbours():
    I = np.array([[1, 0, 2]])          # labels 1, 0, 1
    D = np.array([[1.0, 4.0, 0.25]])
    pred = np.array([1])
    assert scoring.score(I, D, LABELS, pred, fn="knn")[0] == pytest.approx(2 / 3)
    assert scoring.score(I, D, LABELS, pred, fn="wknn")[0] == pytest.approx((1 + 1 / 3) / (1 + 1 / 2 + 1 / 3))
    # DW-kNN: w = 1/d^2 = 1/D (faiss returns squared distances)
    assert scoring.score(I, D, LABELS, pred, fn="dwknn")[0] == pytest.approx((1 + 4) / (1 + 0.25 + 4))


def test_k_truncates_and_other_class():
    I = np.array([[1, 0, 2], [3, 4, 0]])
    D = np.ones((2, 3))
    s = scoring.score(I, D, LABELS, np.array([0, 0]), k=2, fn="knn")
    np.testing.assert_allclose(s, [0.5, 0.5])


def test_zero_distance_guard_and_missing():
    I = np.array([[2, 1, -1]])
    D = np.array([[0.0, 0.0, np.inf]])
    s = scoring.score(I, D, LABELS, np.array([1]), fn="dwknn")
    assert s[0] == pytest.approx(1.0)
    s = scoring.score(np.array([[-1, -1]]), np.ones((1, 2)), LABELS, np.array([1]), fn="knn")
    assert np.isnan(s[0])


def test_class_scores_sum_to_one():
    rng = np.random.default_rng(0)
    I = rng.integers(0, 5, (7, 4))
    D = rng.random((7, 4)) + 0.1
    cs = scoring.class_scores(I, D, LABELS, 3, fn="dwknn")
    np.testing.assert_allclose(cs.sum(1), 1.0)


@pytest.mark.parametrize("bad", [dict(fn="nope"), dict(k=0), dict(k=9)])
def test_bad_arguments(bad):
    with pytest.raises(ValueError):
        scoring.score(np.zeros((1, 3), int), np.ones((1, 3)), LABELS, np.array([0]), **bad)
