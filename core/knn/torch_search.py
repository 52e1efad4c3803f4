"""Exact k-nearest-neighbour search in torch: one matmul per block of queries, then ``torch.topk``.

The GPU path of :func:`core.knn.index.search` (``device="cuda"``); the same code runs on torch's CPU backend, which
is how the tests check it. Results follow :func:`core.knn.index.search`: squared L2 distances ascending (float32,
clamped at 0) and int64 database ids; equal distances may come in any order.

>>> D, I = exact_knn(xb, xq, 1000, device="cuda")       # (nq, k) float32 / int64     # doctest: +SKIP
"""
from __future__ import annotations

import logging
import time

import numpy as np

__all__ = ["BLOCK_ENTRIES", "exact_knn"]

log = logging.getLogger(__name__)

#: Distance entries (queries × database rows) per block: 1 GiB of float32 on a GPU, 64 MiB on a CPU.
BLOCK_ENTRIES = {"cuda": 1 << 28, "cpu": 1 << 24}


def exact_knn(xb: np.ndarray, xq: np.ndarray, k: int, *, device: str = "cuda",
              block_entries: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of ``xb`` to each row of ``xq`` under squared L2, computed on ``device``.

    Parameters
    ----------
    xb : ndarray (n, d)
        Database vectors (cast to float32).
    xq : ndarray (nq, d)
        Queries.
    k : int
        Neighbours per query, capped at ``n``.
    device : str
        A torch device (``"cuda"``, ``"cuda:1"``, ``"cpu"``).
    block_entries : int, optional
        Distance-matrix entries per block (default :data:`BLOCK_ENTRIES` of the device type).

    Returns
    -------
    D : float32 ndarray (nq, k)
        Squared distances, ascending.
    I : int64 ndarray (nq, k)
        Row ids in ``xb``.
    """
    import torch

    xb = np.ascontiguousarray(xb, dtype=np.float32)
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    if xb.ndim != 2 or xq.ndim != 2 or xb.shape[1] != xq.shape[1]:
        raise ValueError(f"expected (n, d) and (nq, d) arrays, got {xb.shape} and {xq.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n, nq = len(xb), len(xq)
    k = min(int(k), n)
    dev = torch.device(device)
    entries = block_entries or BLOCK_ENTRIES.get(dev.type, BLOCK_ENTRIES["cpu"])
    bs = max(1, min(nq, entries // max(n, 1)))
    D = np.empty((nq, k), np.float32)
    I = np.empty((nq, k), np.int64)
    t0 = time.perf_counter()
    with torch.inference_mode():
        base = torch.from_numpy(xb).to(dev, non_blocking=True)
        half = (base * base).sum(1).mul_(0.5)          # (n,) |x|²/2
        for s in range(0, nq, bs):
            q = torch.from_numpy(xq[s:s + bs]).to(dev, non_blocking=True)
            dd = torch.addmm(half, q, base.T, beta=1, alpha=-1)   # |x|²/2 - q·x: the order of |q - x|²
            vals, ids = torch.topk(dd, k, dim=1, largest=False, sorted=True)
            vals.mul_(2).add_((q * q).sum(1, keepdim=True)).clamp_(min=0)
            D[s:s + bs] = vals.cpu().numpy()
            I[s:s + bs] = ids.cpu().numpy()
    log.debug("torch exact search on %s: %d queries, k=%d, %d×%d in %.3fs", dev, nq, k, n, xb.shape[1],
              time.perf_counter() - t0)
    return D, I
