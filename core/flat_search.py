"""Exact k-NN on a flat L2 faiss index by blocks of queries: one sgemm per block, then a top-k selection.

:func:`core.index.search` takes this path for many queries with a large k (see docs/design.md#index):

>>> D, I = flat_l2_blocked(index, xq, k=1000)   # what index.search(xq, k) returns   # doctest: +SKIP
"""
from __future__ import annotations

import math
import threading
import weakref

import numpy as np

__all__ = ["AUGMENTED_MAX_BYTES", "BLOCK_ENTRIES", "augmented_vectors", "SAMPLE_STRIDE", "SAMPLE_MIN_RATIO", "is_flat_l2", "flat_vectors", "topk_rows",
           "topk_sampled", "topk_partition", "executor", "flat_l2_blocked"]

#: Distance block size of the blocked path, in float32 entries (rows × database size).
BLOCK_ENTRIES = 1 << 24
#: Top-k selection: every ``SAMPLE_STRIDE``-th column sets the candidates' threshold, when rows hold at least
#: ``SAMPLE_MIN_RATIO`` · stride · k columns (else a whole-row partition).
SAMPLE_STRIDE = 16
SAMPLE_MIN_RATIO = 2

#: Up to this many bytes, the blocked path keeps an augmented copy ``[x, |x|²/2]`` (n, d + 1) of a flat index's
#: vectors: one sgemm with ``[-q, 1]`` then gives ``|x|²/2 - q·x`` without a second pass over the distance block.
AUGMENTED_MAX_BYTES = 1 << 29

_norms_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_aug_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_norms_lock = threading.Lock()


def is_flat_l2(index) -> bool:
    import faiss

    return type(index) in (faiss.IndexFlatL2, faiss.IndexFlat) and index.metric_type == faiss.METRIC_L2


def flat_vectors(index) -> tuple[np.ndarray, np.ndarray]:
    """Zero-copy view (n, d) of a flat index's vectors and their squared norms (n,) (cached per index)."""
    import faiss

    n, d = index.ntotal, index.d
    xb = faiss.rev_swig_ptr(index.get_xb(), n * d).reshape(n, d)
    with _norms_lock:
        hit = _norms_cache.get(index)
        if hit is None or len(hit) != n:
            hit = np.einsum("ij,ij->i", xb, xb)
            _norms_cache[index] = hit
    return xb, hit


def augmented_vectors(index) -> np.ndarray | None:
    """``[x, |x|²/2]`` (n, d + 1) float32 of a flat index's vectors (cached per index), or None above
    :data:`AUGMENTED_MAX_BYTES`."""
    n, d = index.ntotal, index.d
    if n * (d + 1) * 4 > AUGMENTED_MAX_BYTES:
        return None
    xb, nb = flat_vectors(index)
    with _norms_lock:
        hit = _aug_cache.get(index)
        if hit is None or len(hit) != n:
            hit = np.empty((n, d + 1), np.float32)
            hit[:, :d] = xb
            hit[:, d] = nb * np.float32(0.5)
            _aug_cache[index] = hit
    return hit


def topk_rows(dd: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k smallest of each row of ``dd`` (b, n), ascending: (values (b, k), columns (b, k) int64).

    Rows are first tried by :func:`topk_sampled`; the rows it cannot settle take :func:`topk_partition`.
    Equal values may come in any order.
    """
    b, n = dd.shape
    stride = min(SAMPLE_STRIDE, n // (SAMPLE_MIN_RATIO * k))
    if stride < 4 or n >= 1 << 32:
        return topk_partition(dd, k)
    vals, cols, ok = topk_sampled(dd, k, stride)
    if not ok.all():
        bad = np.flatnonzero(~ok)
        vals[bad], cols[bad] = topk_partition(dd[bad], k)
    return vals, cols


def _sortable(v: np.ndarray) -> np.ndarray:
    """float32 (any shape) as uint32 with the same order (negative values included)."""
    u = v.view(np.uint32)
    return np.where(u >> 31, ~u, u | np.uint32(0x80000000))


def _from_sortable(u: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_sortable`."""
    u = u.astype(np.uint32)
    return np.where(u >> 31, u & np.uint32(0x7FFFFFFF), ~u).view(np.float32)


def topk_sampled(dd: np.ndarray, k: int, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k smallest per row of ``dd`` (b, n) through a threshold taken on every ``stride``-th column.

    A low order statistic of the sampled columns bounds each row's candidates (about 1.5 k of n); one mask
    gathers them, their k-th smallest is found on that short list and the k kept are sorted by one uint64 key
    (value, column). Rows with fewer than k candidates, or ties at the k-th value, are flagged.

    Returns
    -------
    vals : float32 (b, k), cols : int64 (b, k), ok : bool (b,)
        Rows where ``ok`` is False hold no result.
    """
    b, n = dd.shape
    expect = k / stride
    j = int(min(n // stride, math.ceil(1.25 * expect + 3 * math.sqrt(expect) + 2)))
    t = np.partition(dd[:, ::stride], j - 1, axis=1)[:, j - 1]
    flat = np.flatnonzero(dd <= t[:, None])
    row = flat // n
    cnt = np.bincount(row, minlength=b)
    ok = cnt >= k
    vals = np.empty((b, k), np.float32)
    cols = np.empty((b, k), np.int64)
    if not ok.any():
        return vals, cols, ok
    if not ok.all():
        keep = ok[row]
        flat, row, cnt = flat[keep], row[keep], np.where(ok, cnt, 0)
    m = int(cnt.max())
    start = np.zeros(b + 1, np.int64)
    np.cumsum(cnt, out=start[1:])
    cand = dd.ravel()[flat]
    buf = np.full((b, m), np.inf, np.float32)
    buf.ravel()[row * m + (np.arange(len(flat)) - start[row])] = cand
    kth = np.partition(buf, k - 1, axis=1)[:, k - 1]
    keep = cand <= kth[row]
    flat, row, cand = flat[keep], row[keep], cand[keep]
    ok &= np.bincount(row, minlength=b) == k
    if not ok.all():
        keep = ok[row]
        flat, row, cand = flat[keep], row[keep], cand[keep]
    key = (_sortable(cand).astype(np.uint64) << np.uint64(32)) | (flat - row * n).astype(np.uint64)
    key = np.sort(key.reshape(-1, k), axis=1)
    vals[ok] = _from_sortable(key >> np.uint64(32))
    cols[ok] = (key & np.uint64(0xFFFFFFFF)).astype(np.int64)
    return vals, cols, ok


def topk_partition(dd: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`topk_rows` by a value-only partition of every whole row (any shape, ties and NaN included).

    One partition finds each row's k-th smallest; the entries not above it are gathered with one mask (exactly
    k per row, unless ties at the k-th value: those rows take ``argpartition``) and sorted.
    """
    b, n = dd.shape
    kth = np.partition(dd, k - 1, axis=1)[:, k - 1]
    flat = np.flatnonzero(dd <= kth[:, None])
    if len(flat) == b * k:
        vals = dd.ravel()[flat].reshape(b, k)
        cols = (flat % n).reshape(b, k)
    else:  # ties at the k-th value (or NaN): argpartition for the rows whose count is not k
        row = flat // n
        ok = np.bincount(row, minlength=b) == k
        cols = np.empty((b, k), np.int64)
        if ok.any():
            cols[ok] = (flat[ok[row]] % n).reshape(-1, k)
        bad = np.flatnonzero(~ok)
        cols[bad] = np.argpartition(dd[bad], k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(dd, cols, 1)
    order = np.argsort(vals, axis=1)
    return np.take_along_axis(vals, order, 1), np.take_along_axis(cols, order, 1)


_pool = None
_pool_lock = threading.Lock()


def executor(n: int):
    """A process-wide thread pool of ``n`` workers (numpy's partition and sort release the GIL)."""
    global _pool
    from concurrent.futures import ThreadPoolExecutor

    with _pool_lock:
        if _pool is None or _pool._max_workers != n:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(n, thread_name_prefix="knn-select")
        return _pool


def flat_l2_blocked(index, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """What ``IndexFlatL2.search`` returns, by blocks of queries: one sgemm per block, then :func:`topk_rows`
    on ``|x|²/2 - q·x`` (same order as the squared distance ``|q|² + |x|² - 2 q·x``, one pass fewer; the sgemm
    computes it whole on :func:`augmented_vectors` when they are kept), split
    over faiss's thread count. Distances of the k kept are then computed like faiss's BLAS path (clamped at 0).
    """
    import faiss

    xb, nb = flat_vectors(index)
    aug = augmented_vectors(index)
    half = nb * np.float32(0.5) if aug is None else None
    nq, n = len(xq), len(xb)
    d = xb.shape[1]
    D = np.empty((nq, k), np.float32)
    I = np.empty((nq, k), np.int64)
    nt = max(1, min(faiss.omp_get_max_threads(), 16))
    bs = int(min(max(BLOCK_ENTRIES // max(n, 1), 16 * nt), 1024))
    for s in range(0, nq, bs):
        q = xq[s:s + bs]
        if aug is not None:
            qa = np.empty((len(q), d + 1), np.float32)
            np.negative(q, out=qa[:, :d])
            qa[:, d] = 1.0
            dd = qa @ aug.T
        else:
            dd = q @ xb.T
            np.subtract(half, dd, out=dd)
        b = len(q)
        if nt > 1 and b >= 2 * nt:
            cuts = np.linspace(0, b, nt + 1).astype(int)
            parts = list(executor(nt).map(lambda ab: topk_rows(dd[ab[0]:ab[1]], k), zip(cuts[:-1], cuts[1:])))
            D[s:s + b] = np.concatenate([p[0] for p in parts])
            I[s:s + b] = np.concatenate([p[1] for p in parts])
        else:
            D[s:s + b], I[s:s + b] = topk_rows(dd, k)
        Db = D[s:s + b]
        Db *= 2
        Db += np.einsum("ij,ij->i", q, q)[:, None]
        np.maximum(Db, 0, out=Db)
    return D, I
