"""Processing round-trips and index search against numpy brute force (ties tolerated)."""
import numpy as np
import pytest

from core._util.threads import faiss_threads
from core.knn import flat_search, index, processing


@pytest.fixture()
def feats():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 40)).astype(np.float32)
    x[:, 30:] = 0  # dead units: zero variance
    return np.maximum(x, 0)


def test_none_and_l2(feats):
    p = processing.fit(feats, "none")
    np.testing.assert_array_equal(processing.apply(p, feats), feats)
    y = processing.apply(processing.fit(feats, "l2"), feats)
    np.testing.assert_allclose(np.linalg.norm(y[np.linalg.norm(feats, axis=1) > 0], axis=1), 1, rtol=1e-5)


def test_pca_whitening_drops_dead_units(feats):
    p = processing.fit(feats, "pca", dim=256)
    y = processing.apply(p, feats)
    assert y.shape[1] == processing.out_dim(p, 40) <= 30  # dead components dropped
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(y.std(0, ddof=1), 1, rtol=1e-3)   # whitened
    # round trip through saved arrays (no pickle)
    import io
    buf = io.BytesIO()
    np.savez(buf, **p)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        np.testing.assert_allclose(processing.apply(dict(z), feats), y)


def test_authors_pca_no_whitening_above_dim_only(feats):
    """pca_nw: nothing at or below ``dim`` dims; above, PCA to ``dim`` without whitening (distances kept)."""
    low = processing.fit(feats, "pca_nw", dim=40)
    np.testing.assert_array_equal(processing.apply(low, feats), feats)
    assert processing.describe(low, 40) == "none (40 dims, no PCA at or below that)"
    p = processing.fit(feats, "pca_nw", dim=8)
    y = processing.apply(p, feats)
    assert y.shape == (500, 8) and processing.describe(p, 40) == "PCA-8 (no whitening)"
    full = processing.apply(processing.fit(feats, "pca_nw", dim=39), feats)  # 30 live dims: a rotation
    d = lambda a: np.linalg.norm(a[:50, None] - a[None, :50], axis=-1)  # noqa: E731
    np.testing.assert_allclose(d(full), d(feats), rtol=1e-3, atol=1e-3)


def test_describe_names_what_is_done(feats):
    assert processing.describe(processing.fit(feats, "l2"), 40) == "L2-normalised"
    assert processing.describe(processing.fit(feats, "none"), 40) == "none (raw features)"
    assert processing.describe(processing.fit(feats, "pca", dim=256), 40).endswith("+ whitening")  # dead dropped
    live = np.random.default_rng(1).normal(size=(300, 12)).astype(np.float32)
    assert processing.describe(processing.fit(live, "pca", dim=256), 12) == "whitening (full rank)"
    assert processing.describe(processing.fit(live, "pca", dim=5), 12) == "PCA-5 + whitening"


def test_bad_mode(feats):
    with pytest.raises(ValueError, match="unknown processing"):
        processing.fit(feats, "zca")


def brute(xb, xq, k):
    d = ((xq[:, None, :].astype(np.float64) - xb[None]) ** 2).sum(-1)
    I = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, I, 1), I


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_search_matches_brute_force(kind):
    rng = np.random.default_rng(1)
    xb = rng.integers(0, 4, size=(800, 8)).astype(np.float32)  # many exact ties
    xq = rng.integers(0, 4, size=(20, 8)).astype(np.float32)
    k = 30
    D, I = index.search(index.build(xb, kind=kind), xq, k)
    Db, Ib = brute(xb, xq, k)
    np.testing.assert_allclose(D, Db, rtol=1e-5, atol=1e-5)  # same distances
    for i in range(len(xq)):  # same ids up to ties at the k-th distance
        strict = Db[i] < Db[i, -1]
        assert set(Ib[i][strict]) <= set(I[i])
        assert np.all(np.isclose(((xb[I[i]] - xq[i]) ** 2).sum(1), D[i], atol=1e-4))


def test_ivf_recall_and_auto():
    rng = np.random.default_rng(2)
    xb = rng.normal(size=(4000, 16)).astype(np.float32)
    xq = rng.normal(size=(50, 16)).astype(np.float32)
    ivf = index.build(xb, kind="ivf", nlist=32, nprobe=32)  # all cells: exact
    _, I = index.search(ivf, xq, 10)
    _, Ib = brute(xb, xq, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, Ib)]) > 0.99
    assert index.choose_kind(10) == "flat" and index.choose_kind(10 ** 7) == "pq"
    with pytest.raises(ValueError, match="dims"):
        index.search(ivf, xq[:, :3], 5)


@pytest.mark.parametrize("n,k", [(800, 100), (300, 300), (5000, 64)])
def test_blocked_flat_path_matches_brute_force(n, k):
    """Batched flat searches with a large k take the sgemm + partition path: same neighbours, ties tolerated."""
    rng = np.random.default_rng(3)
    xb = rng.integers(0, 4, size=(n, 8)).astype(np.float32)  # many exact ties at the k-th distance
    xq = rng.integers(0, 4, size=(70, 8)).astype(np.float32)
    idx = index.build(xb, kind="flat")
    assert k >= index.BLOCKED_MIN_K and len(xq) > index.SINGLE_THREAD_MAX_NQ
    D, I = index.search(idx, xq, k)
    assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == I.shape == (70, min(k, n))
    Db, Ib = brute(xb, xq, k)
    np.testing.assert_allclose(D, Db, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(D, axis=1) >= 0)
    for i in range(len(xq)):
        assert len(set(I[i].tolist())) == k  # no id twice
        strict = Db[i] < Db[i, -1]
        assert set(Ib[i][strict]) <= set(I[i])
        np.testing.assert_allclose(((xb[I[i]] - xq[i]) ** 2).sum(1), D[i], atol=1e-4)
    # faiss's own search agrees on the distances
    Df, _ = idx.search(xq, min(k, n))
    np.testing.assert_allclose(D, Df, rtol=1e-5, atol=1e-4)


def test_single_query_path_and_threads_restored():
    import faiss

    rng = np.random.default_rng(4)
    xb = rng.normal(size=(3000, 16)).astype(np.float32)
    xq = rng.normal(size=(5, 16)).astype(np.float32)
    idx = index.build(xb, kind="flat")
    before = faiss.omp_get_max_threads()
    one = np.concatenate([index.search(idx, xq[i:i + 1], 200)[1] for i in range(len(xq))])
    assert faiss.omp_get_max_threads() == before
    D, I = index.search(idx, xq, 200)  # batched (blocked) path
    assert (one == I).mean() > 0.99
    with faiss_threads(1):
        assert faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == before


def test_sampled_selection_matches_whole_row_partition():
    """The sampled-threshold top-k keeps the whole-row partition's values: ties, a row whose sampled columns
    are its smallest (too few candidates), NaN and negative values included."""
    rng = np.random.default_rng(5)
    for b, n, k in [(40, 60000, 1000), (30, 20000, 100), (25, 8000, 250)]:
        dd = rng.standard_normal((b, n)).astype(np.float32)
        dd[3] = np.round(dd[3] * 2)  # many ties at the k-th value
        dd[5, ::16] = -100  # every sampled column below the rest
        dd[6, 1::16] = -100  # the k smallest all outside the sample
        dd[7, 7] = np.nan
        stride = min(flat_search.SAMPLE_STRIDE, n // (flat_search.SAMPLE_MIN_RATIO * k))
        assert stride >= 4  # the sampled path is the one tested
        vp, _ = flat_search.topk_partition(dd, k)
        # the threshold from the rows' own columns, from a separate sample of other values (any sample keeps
        # the result exact), and from a sample above every value (too many candidates) or below (too few)
        samples = [None, rng.standard_normal((b, n // 16)).astype(np.float32) * 2,
                   np.full((b, 50), 1e9, np.float32), np.full((b, 50), -1e9, np.float32)]
        for ds in samples:
            v, c = flat_search.topk_rows(dd, k, ds, mask=np.empty((b + 3, n), bool))
            np.testing.assert_array_equal(v, vp)
            np.testing.assert_array_equal(np.take_along_axis(dd, c, 1), v)
            assert all(len(set(r.tolist())) == k for r in c)


@pytest.mark.parametrize("augmented", [True, False])
def test_blocked_search_on_a_large_database_matches_brute_force(augmented, monkeypatch):
    """k = 500 of 20 000 integer vectors (ties at the k-th distance): the sampled selection inside search, on the
    sgemm of the augmented vectors [x, |x|²/2] and (above their size cap) on sgemm then subtraction."""
    if not augmented:
        monkeypatch.setattr(flat_search, "AUGMENTED_MAX_BYTES", 0)
    rng = np.random.default_rng(6)
    xb = rng.integers(0, 5, size=(20000, 6)).astype(np.float32)
    xq = rng.integers(0, 5, size=(12, 6)).astype(np.float32)
    k = 500
    D, I = index.search(index.build(xb, kind="flat"), xq, k)
    Db, Ib = brute(xb, xq, k)
    np.testing.assert_allclose(D, Db, rtol=1e-5, atol=1e-5)
    for i in range(len(xq)):
        assert len(set(I[i].tolist())) == k
        strict = Db[i] < Db[i, -1]
        assert set(Ib[i][strict]) <= set(I[i])
        np.testing.assert_allclose(((xb[I[i]] - xq[i]) ** 2).sum(1), D[i], atol=1e-4)
