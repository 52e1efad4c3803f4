"""The ``pq`` index: every vector's 4-bit PQ fast-scan code scanned in shards, the shortlist re-ranked exactly on
float16 vectors (what ``core.knn.index.build(kind="auto")`` builds from ``AUTO_IVF_MIN`` rows up).

>>> idx = PQScan(saved, xb16)            # saved: IndexPreTransform(permutation, IndexPQ)   # doctest: +SKIP
>>> D, I = idx.search(xq, k=1000)        # (nq, k) float32 / int64, nearest first          # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

__all__ = ["PQ_REFINE", "PQ_MAX_SHARDS", "PQ_SHARD_MARGIN", "PQScan", "balanced_dims"]

#: Shortlist size over k re-ranked exactly (``PQ_REFINE`` · k candidates from the codes' distances), and at most
#: this many shards of the codes scanned at once on as many threads. See docs/design.md#index.
PQ_REFINE = 4
PQ_MAX_SHARDS = 8
#: Each shard re-ranks its share of the shortlist times this (a shard holding more than its share of the whole
#: shortlist is then a 15-sigma event at k = 1000).
PQ_SHARD_MARGIN = 1.25


def balanced_dims(var: np.ndarray, m: int) -> np.ndarray:
    """A permutation (d,) of dimensions into ``m`` sub-quantisers of d/m dims whose variance products are
    balanced (the eigenvalue allocation of optimised PQ): the m largest variances open one sub-quantiser each,
    every next dimension, by decreasing variance, joins the open one of smallest log-variance sum.

    Parameters
    ----------
    var : ndarray (d,)
        Per-dimension variances.
    m : int
        Sub-quantisers; must divide d.
    """
    import heapq

    d = len(var)
    if m < 1 or d % m:
        raise ValueError(f"{m} sub-quantisers do not divide {d} dimensions")
    g = d // m
    logv = np.log(np.maximum(np.asarray(var, np.float64), 1e-30))
    order = np.argsort(-logv, kind="stable")
    groups: list[list[int]] = [[int(i)] for i in order[:m]]
    heap = [(logv[i], j) for j, i in enumerate(order[:m])]
    heapq.heapify(heap)
    for i in order[m:]:
        total, j = heapq.heappop(heap)
        groups[j].append(int(i))
        if len(groups[j]) < g:
            heapq.heappush(heap, (total + logv[i], j))
    return np.array([i for grp in groups for i in grp], np.int64)


class PQScan:
    """Every vector's 4-bit PQ fast-scan code scanned (no cells), the shortlist re-ranked exactly on float16 copies
    of the vectors (``pq``): for features whose neighbours spread over many IVF cells.

    The codes are split into shards scanned at once, one thread each; dimensions are permuted before
    quantisation so that sub-quantisers hold balanced variance (:func:`balanced_dims`). Codes' distances are
    coarse (sums of 8-bit table entries), so which of those tied at the end of the shortlist come, and with them
    rarely a neighbour, can differ with the number of shards.

    Parameters
    ----------
    saved : faiss.IndexPreTransform
        The permutation (a ``LinearTransform``) and a 4-bit ``IndexPQ`` holding the codes: what is written to
        the run. Its codes are copied into the shards; ``keep_saved=False`` drops it after.
    xb16 : ndarray (n, d) float16
        The vectors, e.g. memory-mapped from the run's ``.f16.npy``.
    factor : int
        Shortlist size over k.
    shards : int, optional
        Shards of the codes (default: the usable cores, at most :data:`PQ_MAX_SHARDS`).
    """

    def __init__(self, saved, xb16: np.ndarray, factor: int = PQ_REFINE, shards: int | None = None, *,
                 keep_saved: bool = True):
        import faiss

        pq = faiss.downcast_index(saved.index)
        lt = faiss.downcast_VectorTransform(saved.chain.at(0))
        if not isinstance(pq, faiss.IndexPQ) or not isinstance(lt, faiss.LinearTransform) or pq.pq.nbits != 4:
            raise ValueError("a pq index is a LinearTransform and a 4-bit IndexPQ")
        if xb16.shape != (pq.ntotal, pq.d):
            raise ValueError(f"float16 vectors {xb16.shape} do not match the index ({pq.ntotal}, {pq.d})")
        n, d = pq.ntotal, pq.d
        A = faiss.vector_to_array(lt.A).reshape(d, d)
        self.perm = np.argmax(A, axis=1)
        if not np.array_equal(A[np.arange(d), self.perm], np.ones(d, np.float32)) or (A != 0).sum() != d:
            raise ValueError("the pq index's transform is not a permutation")
        self.xb16, self.factor = xb16, int(factor)
        self._d, self._n = d, n
        #: Bytes of PQ code per vector.
        self.code_size = int(pq.code_size)
        self.coarse = saved if keep_saved else None
        codes = faiss.vector_to_array(pq.codes).reshape(n, pq.code_size)
        nsh = max(1, min(shards or _cores(), PQ_MAX_SHARDS, n))
        cuts = np.linspace(0, n, nsh + 1).astype(np.int64)
        self.shards = []
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            part = faiss.IndexPQ(d, pq.pq.M, 4)
            part.pq = pq.pq
            part.is_trained = True
            faiss.copy_array_to_vector(np.ascontiguousarray(codes[lo:hi]).ravel(), part.codes)
            part.ntotal = int(hi - lo)
            self.shards.append((int(lo), faiss.IndexPQFastScan(part)))
        del codes
        self._x16t = None

    @property
    def d(self) -> int:
        return self._d

    @property
    def ntotal(self) -> int:
        return self._n

    def _rerank(self, xq: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact squared distances to the float16 vectors of each query's candidates (nq, r): the k nearest
        (nq, k) ascending, and their ids; inf and -1 where fewer."""
        import torch

        D = np.full((len(xq), k), np.inf, np.float32)
        I = np.full((len(xq), k), -1, np.int64)
        for i, c in enumerate(cand):
            c = np.sort(c[c >= 0])  # ids are unique; in order, the gather reads ahead
            if not len(c):
                continue
            sub = self._x16t.index_select(0, torch.from_numpy(c)).float()
            dist = sub.sub_(torch.from_numpy(xq[i])).square_().sum(1)  # in place: one buffer
            m = min(k, len(c))
            top = torch.topk(dist, m, largest=False, sorted=True)
            D[i, :m], I[i, :m] = top.values.numpy(), c[top.indices.numpy()]
        return D, I

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Squared L2 distances to the float16 vectors (nq, k) ascending and ids (nq, k), -1 where fewer.

        Each shard, on its own thread (faiss and torch on one thread there), scans its codes for its part of the
        shortlist and re-ranks it; the shards' k best are merged. A shard's part is its share of ``factor`` · k
        times :data:`PQ_SHARD_MARGIN`: the shortlist of one shard holding every code, or more.
        """
        import warnings

        import torch

        from core._util.threads import faiss_threads, one_torch_thread
        from core.knn.flat_search import as_f32, executor


        xq = as_f32(xq)
        if self._x16t is None:
            with warnings.catch_warnings():  # a read-only memory map: torch only reads it
                warnings.simplefilter("ignore", UserWarning)
                self._x16t = torch.from_numpy(self.xb16)
        xt = np.ascontiguousarray(xq[:, self.perm])
        r = min(self.ntotal, self.factor * k)
        nsh = len(self.shards)
        part = r if nsh == 1 else math.ceil(PQ_SHARD_MARGIN * r / nsh)

        def one(shard: tuple[int, object]) -> tuple[np.ndarray, np.ndarray]:
            lo, idx = shard
            with faiss_threads(1):
                _, cand = idx.search(xt, min(part, idx.ntotal))
            with one_torch_thread() if nsh > 1 else contextlib.nullcontext():
                return self._rerank(xq, np.where(cand >= 0, cand + lo, -1), k)

        if nsh == 1:
            return one(self.shards[0])
        parts = list(executor(nsh).map(one, self.shards))
        D = np.concatenate([p[0] for p in parts], axis=1)
        I = np.concatenate([p[1] for p in parts], axis=1)
        order = np.argsort(D, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
