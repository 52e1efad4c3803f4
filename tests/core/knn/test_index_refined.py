"""The ``ivfpq`` and ``pq`` kinds: a PQ shortlist (IVF cells, or every code in shards) re-ranked exactly on float16
vectors, saved as a faiss file + npy."""
import numpy as np
import pytest

from core.knn import index


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


def test_ivfpq_probes_enough_cells_for_a_large_k():
    """A small database in many cells: the probed cells must hold the shortlist (refine · k), or the re-rank sees
    too few candidates (64 cells of about 35 vectors held 2 240 for a shortlist of 4 000 at k = 500)."""
    rng = np.random.default_rng(8)
    centres = rng.normal(size=(30, 16)).astype(np.float32)
    xb = (centres[rng.integers(0, 30, 20000)] + 0.5 * rng.normal(size=(20000, 16))).astype(np.float32)
    xq = xb[:20] + 0.01
    idx = index.build(xb, kind="ivfpq")
    assert idx.coarse.nprobe == index.IVFPQ_NPROBE and idx.nprobe(500) > 3 * idx.coarse.nprobe
    _, I = index.search(idx, xq, 500)
    _, Ig = index.search(index.build(xb, kind="flat"), xq, 500)
    assert np.mean([len(np.intersect1d(a, b)) / 500 for a, b in zip(I, Ig)]) >= 0.95
    assert idx.nprobe(1) == idx.coarse.nprobe  # a small k keeps the index's own count


def test_pq_scans_every_code_in_shards_reranks_exactly_and_reopens(tmp_path):
    """``pq``: anisotropic features (decaying spectrum), the shortlist re-ranked on float16, the same result from
    one shard or three, after a write and read, and one query at a time."""
    import faiss

    rng = np.random.default_rng(9)
    d = 64
    centres = rng.normal(size=(50, d)).astype(np.float32) * 0.3
    xb = (centres[rng.integers(0, 50, 20000)] + rng.normal(size=(20000, d)) / np.sqrt(1 + np.arange(d) / 4))
    xb = xb.astype(np.float32)
    xq = xb[:9] + 0.01
    idx = index.build(xb, kind="pq", pq_bytes=16)  # 32 sub-quantisers of 2 dims
    assert isinstance(idx, index.PQScan) and idx.ntotal == 20000 and idx.d == d and idx.factor == index.PQ_REFINE
    D, I = index.search(idx, xq, 200)
    x16 = xb.astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(D, ((x16[I] - xq[:, None]) ** 2).sum(-1), rtol=1e-4, atol=1e-3)
    assert np.all(np.diff(D, axis=1) >= 0) and all(len(set(r)) == 200 for r in I.tolist())
    _, Ig = index.search(index.build(xb, kind="flat"), xq, 200)
    assert np.mean([len(np.intersect1d(a, b)) / 200 for a, b in zip(I, Ig)]) >= 0.95
    faiss.write_index(idx.coarse, str(tmp_path / "p.faiss"))
    np.save(tmp_path / index.refine_rel("p.faiss"), idx.xb16)
    saved = faiss.read_index(str(tmp_path / "p.faiss"))
    x16m = np.load(tmp_path / index.refine_rel("p.faiss"), mmap_mode="r")
    for shards in (len(idx.shards), 1, 3):
        back = index.PQScan(saved, x16m, shards=shards)
        assert len(back.shards) == shards
        D2, I2 = index.search(back, xq, 200)
        if shards == len(idx.shards):
            np.testing.assert_array_equal(D2, D)
        else:  # codes' distances are coarse: which of those tied at the shortlist's end come depends on the shards
            assert np.mean([len(np.intersect1d(a, b)) / 200 for a, b in zip(I, I2)]) >= 0.98
            np.testing.assert_allclose(D2, ((x16[I2] - xq[:, None]) ** 2).sum(-1), rtol=1e-4, atol=1e-3)
    back = index.open_refined(saved, x16m)
    assert isinstance(back, index.PQScan) and back.coarse is None  # the read codes are not kept twice
    D1 = np.concatenate([index.search(back, xq[i:i + 1], 200)[0] for i in range(len(xq))])
    np.testing.assert_array_equal(D1, D)
    with pytest.raises(ValueError, match="do not match"):
        index.PQScan(saved, x16m[:100])


def test_balanced_dims_pairs_large_variances_with_small():
    var = np.array([16.0, 8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 0.125])
    perm = index.balanced_dims(var, 4)
    assert sorted(perm.tolist()) == list(range(8))
    pairs = perm.reshape(4, 2)
    assert sorted(map(sorted, pairs.tolist())) == [[0, 7], [1, 6], [2, 5], [3, 4]]
    assert index.balanced_dims(var, 8).tolist() == list(range(8))
    with pytest.raises(ValueError):
        index.balanced_dims(var, 3)


@pytest.mark.parametrize("kind", ["ivfpq", "pq"])
def test_run_built_with_a_refined_index_stores_hashes_and_searches_float16(kind, tiny_run, tiny_run_copy):
    """A run whose index stage used ``kind = "ivfpq"`` or ``"pq"``: the float16 vectors are recorded and hashed,
    and the neighbours stage and the Detector search through the re-ranked index (recall of the exact
    neighbours)."""
    from core.detector import Detector
    from core.runs.files import sha256_file
    from core.runs.folder import RunDir
    from tests.system.test_pipeline import _cli

    assert _cli(tiny_run_copy, f"--set=index.kind='{kind}'") == 0
    run, exact = RunDir(tiny_run_copy), RunDir(tiny_run)
    run.verify()
    layers, modes = run.manifest["summary"]["layers"], run.manifest["summary"]["modes"]
    for la in layers:
        for mo in modes:
            rel = f"index/{la}-{mo}.faiss"
            f16 = index.refine_rel(rel)
            assert f16 in run.manifest["stages"]["index"]["files"]
            assert run.manifest["files"][f16]["sha256"] == sha256_file(tiny_run_copy / f16)
            x16 = run.load_npy(f16)
            assert x16.dtype == np.float16 and x16.shape[0] == len(run.load_npy("train_labels.npy"))
            assert isinstance(index.open_saved(run, rel), (index.Refined, index.PQScan))
            for s in run.manifest["summary"]["sets"]:
                a, b = run.load_npz(f"neighbours/{s}/{la}-{mo}.npz"), exact.load_npz(f"neighbours/{s}/{la}-{mo}.npz")
                if not len(b["I"]):
                    continue
                recall = np.mean([len(np.intersect1d(p, q)) / len(q) for p, q in zip(a["I"], b["I"])])
                assert recall >= 0.95, (s, la, mo, recall)
    det = Detector.load(tiny_run_copy)
    la, mo = layers[0], det.defaults["mode"]
    _, idx = det.processing_and_index(la, mo)
    assert isinstance(idx, (index.Refined, index.PQScan)) and isinstance(idx.xb16, np.memmap)
    auth = run.load_npz("evalsets/authentic.npz")
    nb = run.load_npz(f"neighbours/authentic/{la}-{mo}.npz")
    one = det.inspect(auth["images"][0], n_neighbours=5)
    np.testing.assert_array_equal(one.neighbours[la].ids, nb["I"][0, :5])
    (tiny_run_copy / f16).unlink()
    with pytest.raises(Exception):
        Detector.load(tiny_run_copy)
