"""kNN scores against hand-computed cases."""
import numpy as np
import pytest

from core.knn import scoring

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


def _case(rng, nq, K, missing, ties):
    labels = rng.integers(0, 4, 300)
    I = rng.integers(0, 300, (nq, K))
    D = np.sort(rng.random((nq, K)), 1)
    if ties:
        D = np.round(D, 1)
        D[::3, :4] = 0.0  # exact duplicates: clamped distances
    if missing and nq:
        I[::2, -3:] = -1
        I[0] = -1  # no valid neighbour: NaN
    return I, D, labels, rng.integers(0, 4, nq)


@pytest.mark.parametrize("fn", ["knn", "wknn", "dwknn"])
@pytest.mark.parametrize("missing", [False, True])
@pytest.mark.parametrize("nq", [1, 2, 57])
def test_score_ks_equals_score_at_each_k_exactly(fn, missing, nq):
    rng = np.random.default_rng(nq)
    I, D, labels, cls = _case(rng, nq, 120, missing, ties=True)
    ks = [120, 7, 1, 50, 7, 119, 2]
    got = scoring.score_ks(I, D, labels, cls, ks, fn=fn)
    assert got.shape == (len(ks), nq)
    for j, k in enumerate(ks):
        ref = scoring.score(I, D, labels, cls, k=k, fn=fn)
        np.testing.assert_array_equal(got[j], ref)  # bit-equal, NaN where score() gives NaN
    if missing:
        assert np.isnan(got[:, 0]).all()


def test_score_is_the_left_to_right_sum():
    """score() adds neighbour terms in order (the rule score_ks shares), also for a single query."""
    rng = np.random.default_rng(5)
    labels = np.zeros(10, int)
    I = np.zeros((1, 200), int)
    D = rng.random((1, 200)) * 10.0 ** rng.integers(-6, 6, (1, 200))
    hit = 0.0
    for d in D[0]:
        hit += 1.0 / max(d, scoring.MIN_SQ_DIST)
    # every neighbour matches: the score is hit / total with hit == total summed the same way
    assert scoring.score(I, D, labels, np.array([0]), fn="dwknn")[0] == 1.0
    w = np.maximum(D[0], scoring.MIN_SQ_DIST) ** -1.0
    half = np.where(np.arange(200) % 2 == 0, w, 0.0)
    seq_hit, seq_tot = 0.0, 0.0
    for a, b in zip(half, w):
        seq_hit += a
        seq_tot += b
    labels2 = np.array([0, 1])
    I2 = (np.arange(200) % 2)[None, :]
    assert scoring.score(I2, D, labels2, np.array([0]), fn="dwknn")[0] == seq_hit / seq_tot


def test_score_ks_rejects_bad_k():
    with pytest.raises(ValueError):
        scoring.score_ks(np.zeros((1, 3), int), np.ones((1, 3)), LABELS, np.array([0]), [1, 4])
    assert scoring.score_ks(np.zeros((2, 3), int), np.ones((2, 3)), LABELS, np.array([0, 1]), []).shape == (0, 2)


@pytest.mark.parametrize("nq", [1, 4])
def test_score_leaves_inputs_unchanged(nq):
    D = np.zeros((nq, 3))
    I = np.zeros((nq, 3), int)
    scoring.score_ks(I, D, LABELS, np.zeros(nq, int), [1, 3], fn="dwknn")
    assert (D == 0).all()


def test_out_of_range_neighbour_id_raises():
    with pytest.raises(IndexError):
        scoring.score(np.array([[0, 99]]), np.ones((1, 2)), LABELS, np.array([0]), fn="knn")


@pytest.mark.parametrize("fn", ["knn", "wknn", "dwknn"])
@pytest.mark.parametrize("missing", [False, True])
def test_prefix_scores_equal_score_at_every_k(fn, missing):
    """core.knn.prefix_scores keeps running sums every few neighbours; every k gives score()'s values bit for bit."""
    from core.knn.prefix_scores import PrefixScores

    rng = np.random.default_rng(3)
    nq, K, n_train = 40, 77, 500
    I = rng.integers(0, n_train, (nq, K))
    D = np.sort(rng.random((nq, K)).astype(np.float32), axis=1)
    if missing:  # an approximate index that found fewer than K
        I[::3, 60:] = -1
        I[1, 5] = -1
    labels = rng.integers(0, 4, n_train)
    classes = rng.integers(0, 4, nq)
    p = PrefixScores(I, D, labels, classes, fn, every=8)
    for k in range(1, K + 1):
        assert np.array_equal(p.at(k), scoring.score(I, D, labels, classes, k=k, fn=fn), equal_nan=True), k
    with pytest.raises(ValueError, match="k must be"):
        p.at(K + 1)
