"""Exact k-NN on a flat L2 faiss index by blocks of queries: one sgemm per block, then a top-k selection.

:func:`core.knn.index.search` takes this path for many queries with a large k (see docs/design.md#index):

>>> D, I = flat_l2_blocked(index, xq, k=1000)   # what index.search(xq, k) returns   # doctest: +SKIP
"""
from __future__ import annotations

import math
import threading
import weakref

import numpy as np

__all__ = ["AUGMENTED_MAX_BYTES", "BLOCK_ENTRIES", "augmented_vectors", "SAMPLE_STRIDE", "SAMPLE_MIN_RATIO",
           "SAMPLE_Z", "sample_vectors", "is_flat_l2", "flat_vectors", "topk_rows",
           "topk_sampled", "topk_partition", "executor", "flat_l2_blocked"]

#: Distance block size of the blocked path, in float32 entries (rows × database size).
BLOCK_ENTRIES = 1 << 24
#: Top-k selection: one column in ``SAMPLE_STRIDE`` sets the candidates' threshold, when rows hold at least
#: ``SAMPLE_MIN_RATIO`` · stride · k columns (else a whole-row partition); the threshold is the sample's order
#: statistic ``SAMPLE_Z`` standard deviations above the k-th value's expected rank in it.
SAMPLE_STRIDE = 16
SAMPLE_MIN_RATIO = 2
SAMPLE_Z = 2.5

#: Up to this many bytes, the blocked path keeps an augmented copy ``[x, |x|²/2]`` (n, d + 1) of a flat index's
#: vectors: one sgemm with ``[-q, 1]`` then gives ``|x|²/2 - q·x`` without a second pass over the distance block.
AUGMENTED_MAX_BYTES = 1 << 29

_norms_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_aug_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_sample_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_norms_lock = threading.Lock()



def as_f32(x: np.ndarray) -> np.ndarray:
    """``x`` as a C-contiguous float32 array (n, d), the form faiss takes; ValueError when it is not 2-D."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array (n, d), got shape {x.shape}")
    return x

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


def sample_vectors(index) -> np.ndarray:
    """``[x, |x|²/2]`` (n // SAMPLE_STRIDE, d + 1) float32 of a fixed random sample of a flat index's vectors
    (cached per index): one small sgemm gives the rows' sample for :func:`topk_sampled`, read contiguously."""
    n, d = index.ntotal, index.d
    s = max(1, n // SAMPLE_STRIDE)
    with _norms_lock:
        hit = _sample_cache.get(index)
    if hit is not None and hit[0] == n:
        return hit[1]
    xb, nb = flat_vectors(index)
    cols = np.sort(np.random.default_rng(0).choice(n, s, replace=False))
    out = np.empty((s, d + 1), np.float32)
    out[:, :d] = xb[cols]
    out[:, d] = nb[cols] * np.float32(0.5)
    with _norms_lock:
        _sample_cache[index] = (n, out)
    return out


def topk_rows(dd: np.ndarray, k: int, ds: np.ndarray | None = None, *,
              mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact k smallest of each row of ``dd`` (b, n), ascending: (values (b, k), columns (b, k) int64).

    Rows are first tried by :func:`topk_sampled` (its threshold from ``ds`` (b, s), the same rows' values on a
    sample of columns, else from every ``SAMPLE_STRIDE``-th column of ``dd``); the rows it cannot settle take
    :func:`topk_partition`. Equal values come by ascending column on the sampled path, in any order on the other.
    ``mask`` (at least (b, n) bool) is scratch for :func:`topk_sampled`.
    """
    b, n = dd.shape
    stride = min(SAMPLE_STRIDE, n // (SAMPLE_MIN_RATIO * k))
    if stride < 4 or _key_bits(b, n) > 64:
        return topk_partition(dd, k)
    vals, cols, ok = topk_sampled(dd, k, dd[:, ::stride] if ds is None else ds, mask=mask)
    if not ok.all():
        bad = np.flatnonzero(~ok)
        vals[bad], cols[bad] = topk_partition(dd[bad], k)
    return vals, cols


def _key_bits(b: int, n: int) -> int:
    """Bits of the sort key (row, value, column) of :func:`topk_sampled` for a (b, n) block."""
    return max(1, (b - 1).bit_length()) + 32 + max(1, (n - 1).bit_length())


def _sortable(v: np.ndarray) -> np.ndarray:
    """float32 (any shape) as uint32 with the same order (negative values included)."""
    u = v.view(np.uint32)
    return np.where(u >> 31, ~u, u | np.uint32(0x80000000))


def _from_sortable(u: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_sortable`."""
    u = u.astype(np.uint32)
    return np.where(u >> 31, u & np.uint32(0x7FFFFFFF), ~u).view(np.float32)


def topk_sampled(dd: np.ndarray, k: int, ds: np.ndarray, *,
                 mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k smallest per row of ``dd`` (b, n) through a threshold taken on a sample of each row, ``ds`` (b, s).

    A low order statistic of the sample (about k·s/n plus ``SAMPLE_Z`` standard deviations) bounds each row's
    candidates (about 1.3 k of n): one compare and one ``flatnonzero`` gather them, and a single sort of uint64
    keys (row, value, column) over all of them orders every row at once; each row keeps its first k. Exact
    whatever the sample: every value left out is above the threshold, and the row is flagged when fewer than k
    are not. ``mask`` (at least (b, n) bool) is scratch for the compare.

    Returns
    -------
    vals : float32 (b, k), cols : int64 (b, k), ok : bool (b,)
        Rows where ``ok`` is False (fewer than k values at or under the threshold, NaN not counted) hold no
        result.
    """
    b, n = dd.shape
    s = ds.shape[1]
    expect = k * s / n
    j = int(min(s, math.ceil(expect + SAMPLE_Z * math.sqrt(expect) + 2)))
    t = np.partition(ds, j - 1, axis=1)[:, j - 1]
    flat = np.flatnonzero(np.less_equal(dd, t[:, None], out=None if mask is None else mask[:b, :n]))
    start = np.searchsorted(flat, np.arange(b + 1, dtype=np.int64) * n)
    cnt = np.diff(start)
    ok = cnt >= k
    vals = np.empty((b, k), np.float32)
    cols = np.empty((b, k), np.int64)
    if not ok.any():
        return vals, cols, ok
    cb = max(1, (n - 1).bit_length())
    key = _sortable(dd.ravel()[flat]).astype(np.uint64)
    key <<= np.uint64(cb)
    key |= (flat - np.repeat(np.arange(b, dtype=np.int64) * n, cnt)).astype(np.uint64)
    key |= np.repeat(np.arange(b, dtype=np.uint64), cnt) << np.uint64(32 + cb)
    key.sort()
    rows = np.flatnonzero(ok)
    top = key[start[rows, None] + np.arange(k)]
    cols[rows] = (top & np.uint64((1 << cb) - 1)).astype(np.int64)
    vals[rows] = _from_sortable((top >> np.uint64(cb)) & np.uint64(0xFFFFFFFF))
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
    """What ``IndexFlatL2.search`` returns, by blocks of queries: one sgemm per block into a reused buffer,
    then :func:`topk_rows` on ``|x|²/2 - q·x`` (same order as the squared distance ``|q|² + |x|² - 2 q·x``, one
    pass fewer; the sgemm computes it whole on :func:`augmented_vectors` when they are kept), its threshold from
    a second, small sgemm on :func:`sample_vectors`, split over faiss's thread count. Distances of the k kept are
    then computed like faiss's BLAS path (clamped at 0).
    """
    import faiss

    xb, nb = flat_vectors(index)
    aug = augmented_vectors(index)
    half = nb * np.float32(0.5) if aug is None else None
    nq, n = len(xq), len(xb)
    d = xb.shape[1]
    samp = sample_vectors(index) if min(SAMPLE_STRIDE, n // (SAMPLE_MIN_RATIO * k)) >= 4 else None
    D = np.empty((nq, k), np.float32)
    I = np.empty((nq, k), np.int64)
    nt = max(1, min(faiss.omp_get_max_threads(), 16))
    bs = int(min(max(BLOCK_ENTRIES // max(n, 1), 16 * nt), 1024, nq))
    buf = np.empty((bs, n), np.float32)
    mask = np.empty((bs, n), np.bool_)
    for s in range(0, nq, bs):
        q = xq[s:s + bs]
        b = len(q)
        qa = np.empty((b, d + 1), np.float32)
        np.negative(q, out=qa[:, :d])
        qa[:, d] = 1.0
        if aug is not None:
            dd = np.matmul(qa, aug.T, out=buf[:b])
        else:
            dd = np.matmul(q, xb.T, out=buf[:b])
            np.subtract(half, dd, out=dd)
        ds = None if samp is None else qa @ samp.T

        def select(ab: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
            lo, hi = ab
            return topk_rows(dd[lo:hi], k, None if ds is None else ds[lo:hi], mask=mask[lo:hi])

        if nt > 1 and b >= 2 * nt:
            cuts = np.linspace(0, b, nt + 1).astype(int)
            parts = list(executor(nt).map(select, zip(cuts[:-1], cuts[1:])))
            D[s:s + b] = np.concatenate([p[0] for p in parts])
            I[s:s + b] = np.concatenate([p[1] for p in parts])
        else:
            D[s:s + b], I[s:s + b] = select((0, b))
        Db = D[s:s + b]
        Db *= 2
        Db += np.einsum("ij,ij->i", q, q)[:, None]
        np.maximum(Db, 0, out=Db)
    return D, I
