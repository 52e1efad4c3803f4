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


@pytest.mark.parametrize("fn", ["knn", "wknn", "dwknn"])
@pytest.mark.parametrize("missing", [False, True])
def test_vectorised_score_equals_the_plain_formula(fn, missing):
    """score() (int16 labels, counts, matmul/einsum) equals eq. (2) written out, with and without -1 ids."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 600)
    I = rng.integers(0, 600, (300, 50))
    if missing:
        I[::7, -5:] = -1
        I[3] = -1  # a query with no neighbour at all -> NaN
    D = np.sort(rng.random((300, 50)), 1)
    D[::5, 0] = 0.0
    cls = rng.integers(0, 10, 300)
    for k in (1, 10, 50):
        Ik, Dk = I[:, :k], D[:, :k]
        valid = Ik >= 0
        w = {"knn": np.ones(Ik.shape), "wknn": np.broadcast_to(1 / np.arange(1, k + 1), Ik.shape),
             "dwknn": 1 / np.maximum(Dk, scoring.MIN_SQ_DIST)}[fn] * valid
        hit = (w * (labels[np.where(valid, Ik, 0)] == cls[:, None])).sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ref = np.where(w.sum(1) > 0, hit / w.sum(1), np.nan)
        np.testing.assert_allclose(scoring.score(I, D, labels, cls, k=k, fn=fn), ref, rtol=1e-12)


def test_score_with_labels_beyond_int16():
    I = np.array([[0, 1, 2]])
    labels = np.array([70000, 5, 70000])
    assert scoring.score(I, np.ones((1, 3)), labels, np.array([70000]), fn="knn")[0] == pytest.approx(2 / 3)
