"""faiss indexes over processed training features: build, search, choose a type by size.

Plain functions over numpy arrays in faiss's own names (``xb`` database, ``xq`` queries, ``D`` squared L2
distances, ``I`` ids, ``k``). Inputs are made float32 C-contiguous at this boundary.

>>> index = build(xb)                    # flat below AUTO_IVF_MIN rows                # doctest: +SKIP
>>> D, I = search(index, xq, k=1000)     # (nq, k) float32 / int64, nearest first    # doctest: +SKIP
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np

__all__ = ["KINDS", "AUTO_IVF_MIN", "choose_kind", "build", "search", "set_threads"]

log = logging.getLogger(__name__)

KINDS = ("auto", "flat", "ivf", "hnsw")
#: Above this many database vectors, ``kind="auto"`` builds an IVF index instead of an exact flat one.
AUTO_IVF_MIN = 500_000


def _f32(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array (n, d), got shape {x.shape}")
    return x


def choose_kind(n: int) -> str:
    """Index type for ``n`` database vectors: exact ``flat`` under :data:`AUTO_IVF_MIN`, else ``ivf``."""
    return "flat" if n < AUTO_IVF_MIN else "ivf"


def set_threads(n: int) -> None:
    """Set faiss's OpenMP thread count (one thread is fastest for single queries)."""
    import faiss

    faiss.omp_set_num_threads(max(1, int(n)))


def build(xb: np.ndarray, *, kind: str = "auto", nlist: int | None = None, nprobe: int = 16, hnsw_m: int = 32,
          ef_search: int = 1200, seed: int = 0):
    """Build a faiss index on database vectors ``xb`` (n, d) under L2.

    Parameters
    ----------
    xb : ndarray (n, d)
    kind : {"auto", "flat", "ivf", "hnsw"}
        ``auto`` picks by size (:func:`choose_kind`).
    nlist : int, optional
        IVF cells (default ``4·sqrt(n)``).
    nprobe : int
        IVF cells visited per query (stored on the index).
    hnsw_m, ef_search : int
        HNSW graph degree and search breadth (ef_search must exceed the largest k searched).

    Returns
    -------
    faiss.Index
    """
    import faiss

    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; use one of {KINDS}")
    xb = _f32(xb)
    n, d = xb.shape
    kind = choose_kind(n) if kind == "auto" else kind
    t0 = time.perf_counter()
    if kind == "flat":
        index = faiss.IndexFlatL2(d)
    elif kind == "ivf":
        nlist = nlist or max(1, int(4 * math.sqrt(n)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
        train = xb if n <= 256 * nlist else xb[np.random.default_rng(seed).choice(n, 256 * nlist, replace=False)]
        index.cp.seed = seed
        index.train(train)
        index.nprobe = nprobe
    else:
        index = faiss.IndexHNSWFlat(d, hnsw_m)
        index.hnsw.efSearch = ef_search
    index.add(xb)
    log.info("built %s index on %d×%d in %.2fs", kind, n, d, time.perf_counter() - t0)
    return index


def search(index, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest database vectors of each query.

    Parameters
    ----------
    index : faiss.Index
    xq : ndarray (nq, d)
    k : int
        Capped at ``index.ntotal``.

    Returns
    -------
    D : float32 ndarray (nq, k)
        Squared L2 distances, ascending.
    I : int64 ndarray (nq, k)
        Database ids; -1 where an approximate index found fewer than k.
    """
    xq = _f32(xq)
    if xq.shape[1] != index.d:
        raise ValueError(f"queries have {xq.shape[1]} dims, index has {index.d}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(int(k), index.ntotal)
    return index.search(xq, k)
