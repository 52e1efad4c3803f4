"""The ``ivfpq`` kind: an IVF-PQ shortlist re-ranked exactly on float16 vectors, saved as a faiss file + npy."""
import numpy as np

from core import index


def test_ivfpq_reranks_exactly_and_reopens_from_faiss_and_npy(tmp_path):
    import faiss

    rng = np.random.default_rng(7)
    centres = rng.normal(size=(20, 64)).astype(np.float32)
    xb = (centres[rng.integers(0, 20, 3000)] + 0.3 * rng.normal(size=(3000, 64))).astype(np.float32)
    xq = xb[:10] + 0.01
    idx = index.build(xb, kind="ivfpq", nlist=16, nprobe=16)  # every cell probed
    assert isinstance(idx, index.Refined) and idx.ntotal == 3000 and idx.d == 64
    D, I = index.search(idx, xq, 20)
    x16 = xb.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(D, ((x16[I] - xq[:, None]) ** 2).sum(-1), rtol=1e-4, atol=1e-4)  # exact re-rank
    assert np.all(np.diff(D, axis=1) >= 0)
    Dg, Ig = index.search(index.build(xb, kind="flat"), xq, 20)
    assert np.mean([len(np.intersect1d(a, b)) / 20 for a, b in zip(I, Ig)]) > 0.9
    faiss.write_index(idx.coarse, str(tmp_path / "a.faiss"))
    np.save(tmp_path / index.refine_rel("a.faiss"), idx.xb16)
    back = index.open_refined(faiss.read_index(str(tmp_path / "a.faiss")),
                              np.load(tmp_path / index.refine_rel("a.faiss"), mmap_mode="r"))
    D2, I2 = index.search(back, xq, 20)
    np.testing.assert_array_equal(I2, I)
    np.testing.assert_array_equal(D2, D)
    D1, I1 = index.search(back, xq[:1], 20)  # the single-query path
    np.testing.assert_array_equal(I1, I[:1])
    flat = index.build(xb, kind="flat")
    assert index.open_refined(flat, idx.xb16) is flat
