"""The torch search path (GPU in production, torch's CPU backend here) against numpy brute force."""
from __future__ import annotations

import numpy as np
import pytest

from core.knn import index as knn_index
from core.knn import torch_search


def _brute(xb: np.ndarray, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = ((xq[:, None, :].astype(np.float64) - xb[None, :, :]) ** 2).sum(-1)
    ids = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, ids, 1), ids


def _clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (8, d))
    return (centres[rng.integers(0, 8, n)] + rng.normal(0, 1, (n, d)) * rng.uniform(0.2, 2, d)).astype(np.float32)


@pytest.mark.parametrize("d", [3, 16, 64])
@pytest.mark.parametrize("block", [None, 7 * 500])
def test_exact_knn_matches_brute_force(d, block):
    xb, xq = _clustered(500, d, 0), _clustered(37, d, 1)
    D, I = torch_search.exact_knn(xb, xq, 50, device="cpu", block_entries=block)
    Db, Ib = _brute(xb, xq, 50)
    assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == I.shape == (37, 50)
    np.testing.assert_allclose(D, Db, rtol=1e-4, atol=1e-3)
    assert (np.diff(D, axis=1) >= 0).all()
    # ids agree up to ties: every returned id lies at its reported distance
    true_d = ((xq[:, None, :] - xb[I]) ** 2).sum(-1)
    np.testing.assert_allclose(true_d, D, rtol=1e-4, atol=1e-3)
    assert (I == Ib).mean() > 0.99


def test_exact_knn_ties_and_k_cap():
    xb = np.zeros((10, 4), np.float32)
    xb[5:] = 1
    D, I = torch_search.exact_knn(xb, np.zeros((2, 4), np.float32), 50, device="cpu")
    assert D.shape == (2, 10)
    assert set(I[0, :5]) == set(range(5)) and np.all(D[:, :5] == 0) and np.allclose(D[:, 5:], 4)


def test_exact_knn_rejects_bad_shapes():
    with pytest.raises(ValueError):
        torch_search.exact_knn(np.zeros((5, 3)), np.zeros((2, 4)), 1, device="cpu")
    with pytest.raises(ValueError):
        torch_search.exact_knn(np.zeros((5, 3)), np.zeros((2, 3)), 0, device="cpu")


def test_search_routes_flat_index_to_torch_on_a_device(monkeypatch):
    xb, xq = _clustered(300, 8, 2), _clustered(5, 8, 3)
    index = knn_index.build(xb, kind="flat")
    calls, real = [], torch_search.exact_knn

    def fake(base, q, k, *, device):
        calls.append(device)
        return real(base, q, k, device="cpu")

    monkeypatch.setattr(torch_search, "exact_knn", fake)
    D, I = knn_index.search(index, xq, 20, device="cuda:0")
    assert calls == ["cuda:0"]
    Df, If = knn_index.search(index, xq, 20)            # faiss on the CPU: same neighbours
    np.testing.assert_allclose(D, Df, rtol=1e-4, atol=1e-3)
    assert (I == If).mean() > 0.99
    knn_index.search(index, xq, 20, device="cpu")
    assert calls == ["cuda:0"]                          # "cpu" stays on faiss


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU (run on a GPU machine)")
def test_exact_knn_on_cuda_matches_cpu():
    xb, xq = _clustered(5000, 64, 4), _clustered(100, 64, 5)
    D, I = torch_search.exact_knn(xb, xq, 100, device="cuda")
    Dc, Ic = torch_search.exact_knn(xb, xq, 100, device="cpu")
    np.testing.assert_allclose(D, Dc, rtol=1e-4, atol=1e-3)
    assert (I == Ic).mean() > 0.99
