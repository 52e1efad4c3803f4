"""faiss indexes over processed training features: build, search, choose a type by size.

Plain functions over numpy arrays in faiss's own names (``xb`` database, ``xq`` queries, ``D`` squared L2
distances, ``I`` ids, ``k``). Inputs are made float32 C-contiguous at this boundary.

>>> index = build(xb)                    # flat below AUTO_IVF_MIN rows                # doctest: +SKIP
>>> D, I = search(index, xq, k=1000)     # (nq, k) float32 / int64, nearest first    # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import logging
import math
import time

import numpy as np

from core._util.threads import faiss_threads
from core.knn.flat_search import as_f32, flat_l2_blocked, flat_vectors, is_flat_l2
from core.knn.pq_scan import (  # noqa: F401  (core.knn.index.PQScan)
    PQ_REFINE,
    PQScan,
    balanced_dims,
)

__all__ = ["KINDS", "AUTO_IVF_MIN", "SINGLE_THREAD_MAX_NQ", "BLOCKED_MIN_K", "Refined",
           "choose_kind", "build",
           "search", "refine_rel", "open_refined", "open_saved"]

log = logging.getLogger(__name__)

KINDS = ("auto", "flat", "ivf", "hnsw", "ivfpq", "pq")
#: From this many database vectors on, ``kind="auto"`` builds a ``pq`` index instead of an exact flat one.
AUTO_IVF_MIN = 500_000
#: Searches of at most this many queries run on one OpenMP thread. See docs/design.md#threads.
SINGLE_THREAD_MAX_NQ = 1
#: Exact flat searches with k at least this (and more than SINGLE_THREAD_MAX_NQ queries) take the blocked path:
#: one sgemm per block of queries, then a partition-based top-k. See docs/design.md#index.
BLOCKED_MIN_K = 64
#: IVF k-means: training vectors per list (faiss warns under 39) and iterations. See docs/design.md#index.
IVF_TRAIN_PER_LIST = 64
IVF_TRAIN_ITERS = 10
#: ``ivfpq``: PQ bytes per vector (4-bit fast-scan codes, two sub-quantisers a byte), cells probed, and the
#: shortlist re-ranked exactly (``REFINE_FACTOR`` · k candidates).
PQ_BYTES = 64
IVFPQ_NPROBE = 64
REFINE_FACTOR = 8
#: ``ivfpq``: the cells probed hold on average at least this many times the shortlist (``REFINE_FACTOR`` · k):
#: a small database (60 000 rows in about 980 cells) needs more than ``IVFPQ_NPROBE`` cells for k = 1000.
PROBE_MARGIN = 2
#: ``ivfpq``: training vectors at least (the PQ codebooks learn from the same sample as the cells).
PQ_TRAIN_MIN = 1 << 16




def choose_kind(n: int) -> str:
    """Index type for ``n`` database vectors: exact ``flat`` under :data:`AUTO_IVF_MIN`, else ``pq``."""
    return "flat" if n < AUTO_IVF_MIN else "pq"


class Refined:
    """An IVF-PQ shortlist re-ranked exactly on float16 copies of the database vectors (``ivfpq``).

    Parameters
    ----------
    coarse : faiss.Index
        IVF-PQ fast-scan index over the vectors.
    xb16 : ndarray (n, d) float16
        The vectors, e.g. memory-mapped from the run's ``.f16.npy``.
    factor : int
        Shortlist size over k.
    """

    def __init__(self, coarse, xb16: np.ndarray, factor: int = REFINE_FACTOR):
        if xb16.shape != (coarse.ntotal, coarse.d):
            raise ValueError(f"float16 vectors {xb16.shape} do not match the index ({coarse.ntotal}, {coarse.d})")
        self.coarse, self.xb16, self.factor = coarse, xb16, int(factor)

    @property
    def d(self) -> int:
        return self.coarse.d

    @property
    def ntotal(self) -> int:
        return self.coarse.ntotal

    def nprobe(self, k: int) -> int:
        """Cells probed for a search of ``k``: the index's own count, raised so that they hold on average
        :data:`PROBE_MARGIN` times the shortlist (at most every cell)."""
        nlist, want = self.coarse.nlist, min(self.ntotal, self.factor * k)
        return int(min(nlist, max(self.coarse.nprobe, math.ceil(PROBE_MARGIN * want * nlist / max(self.ntotal, 1)))))

    def search(self, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Squared L2 distances to the float16 vectors (nq, k) ascending and ids (nq, k), -1 where fewer."""
        import faiss

        xq = as_f32(xq)
        nprobe = self.nprobe(k)
        params = None if nprobe == self.coarse.nprobe else faiss.SearchParametersIVF(nprobe=nprobe)
        _, cand = self.coarse.search(xq, min(self.ntotal, self.factor * k), params=params)
        D = np.full((len(xq), k), np.inf, np.float32)
        I = np.full((len(xq), k), -1, np.int64)
        for i, c in enumerate(cand):
            c = np.sort(c[c >= 0])
            if not len(c):
                continue
            diff = self.xb16[c].astype(np.float32) - xq[i]
            dist = np.einsum("ij,ij->i", diff, diff)
            m = min(k, len(c))
            top = np.argpartition(dist, m - 1)[:m] if m < len(c) else np.arange(len(c))
            top = top[np.argsort(dist[top], kind="stable")]
            D[i, :m], I[i, :m] = dist[top], c[top]
        return D, I


def refine_rel(rel: str) -> str:
    """Run-relative path of the float16 vectors that go with the faiss file ``rel`` of an ``ivfpq`` index."""
    return rel.removesuffix(".faiss") + ".f16.npy"


def _refined_file(index) -> bool:
    """Whether a read faiss index goes with float16 vectors: an ``ivfpq`` or ``pq`` file."""
    import faiss

    return isinstance(index, faiss.IndexIVFPQFastScan) or (
        isinstance(index, faiss.IndexPreTransform) and isinstance(faiss.downcast_index(index.index), faiss.IndexPQ))


def open_refined(index, xb16: np.ndarray | None):
    """The index as searched: a read IVF-PQ fast-scan ``index`` with its float16 vectors ``xb16`` becomes
    :class:`Refined`, a read ``pq`` file :class:`PQScan` (its codes moved into shards); any other index (or no
    vectors) is returned as is."""
    import faiss

    if xb16 is None or not _refined_file(index):
        return index
    if isinstance(index, faiss.IndexIVFPQFastScan):
        return Refined(index, xb16)
    return PQScan(index, xb16, keep_saved=False)


def open_saved(run, rel: str, *, verify: bool = False):
    """Read the faiss file ``rel`` of ``run`` (a :class:`core.runs.folder.RunDir`) as searched: an IVF-PQ fast-scan
    or ``pq`` index comes back as :class:`Refined` or :class:`PQScan` over its float16 vectors (:func:`refine_rel`,
    memory-mapped).

    Raises
    ------
    core.runs.folder.ArtefactError
        An IVF-PQ or PQ index whose float16 vectors are not recorded in the run (or, with ``verify``, whose file
        differs from its hash: it is hashed on the descriptor faiss then reads).
    """

    index = run.load_faiss(rel, verify=verify)
    if not _refined_file(index):
        return index
    return open_refined(index, run.load_npy(refine_rel(rel), mmap=True))




def build(xb: np.ndarray, *, kind: str = "auto", nlist: int | None = None, nprobe: int = 16, hnsw_m: int = 32,
          ef_search: int = 1200, pq_bytes: int = PQ_BYTES, refine: int = REFINE_FACTOR, seed: int = 0):
    """Build a faiss index on database vectors ``xb`` (n, d) under L2.

    Parameters
    ----------
    xb : ndarray (n, d)
    kind : {"auto", "flat", "ivf", "hnsw", "ivfpq", "pq"}
        ``auto`` picks by size (:func:`choose_kind`).
    nlist : int, optional
        IVF cells (default ``4·sqrt(n)``).
    nprobe : int
        IVF cells visited per query (stored on the index).
    hnsw_m, ef_search : int
        HNSW graph degree and search breadth (ef_search must exceed the largest k searched).
    pq_bytes, refine : int
        ``ivfpq`` and ``pq``: bytes of 4-bit PQ code per vector (when they divide d in pairs of sub-quantisers,
        else one dimension per sub-quantiser) and shortlist size over k (``pq``: :data:`PQ_REFINE` when left
        at :data:`REFINE_FACTOR`). ``ivfpq`` probes :data:`IVFPQ_NPROBE` cells when ``nprobe`` is left at 16.

    Returns
    -------
    faiss.Index or Refined or PQScan
        ``ivfpq`` gives :class:`Refined`, ``pq`` :class:`PQScan` (for both, the ``coarse`` index and the ``xb16``
        vectors are saved apart).
    """
    import faiss

    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; use one of {KINDS}")
    xb = as_f32(xb)
    n, d = xb.shape
    kind = choose_kind(n) if kind == "auto" else kind
    t0 = time.perf_counter()
    if kind == "flat":
        index = faiss.IndexFlatL2(d)
    elif kind == "pq":
        out = _build_pq(xb, pq_bytes=pq_bytes, refine=refine, seed=seed)
        log.info("built pq index on %d×%d in %.2fs", n, d, time.perf_counter() - t0)
        return out
    elif kind == "ivfpq":
        nlist = nlist or max(1, int(4 * math.sqrt(n)))
        m = pq_bytes * 2 if d % (pq_bytes * 2) == 0 else d
        index = faiss.IndexIVFPQFastScan(faiss.IndexFlatL2(d), d, nlist, m, 4)
        sample = max(IVF_TRAIN_PER_LIST * nlist, PQ_TRAIN_MIN)
        train = xb if n <= sample else xb[np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))]
        index.cp.seed = seed
        index.cp.niter = IVF_TRAIN_ITERS
        index.train(train)
        index.nprobe = IVFPQ_NPROBE if nprobe == 16 else nprobe
        index.add(xb)
        log.info("built ivfpq index on %d×%d in %.2fs", n, d, time.perf_counter() - t0)
        return Refined(index, xb.astype(np.float16), refine)
    elif kind == "ivf":
        nlist = nlist or max(1, int(4 * math.sqrt(n)))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
        m = IVF_TRAIN_PER_LIST * nlist  # k-means on a sample: cost ∝ sample × nlist × iterations
        train = xb if n <= m else xb[np.sort(np.random.default_rng(seed).choice(n, m, replace=False))]
        index.cp.seed = seed
        index.cp.niter = IVF_TRAIN_ITERS
        index.train(train)
        index.nprobe = nprobe
    else:
        index = faiss.IndexHNSWFlat(d, hnsw_m)
        index.hnsw.efSearch = ef_search
    index.add(xb)
    log.info("built %s index on %d×%d in %.2fs", kind, n, d, time.perf_counter() - t0)
    return index


def _build_pq(xb: np.ndarray, *, pq_bytes: int, refine: int, seed: int) -> PQScan:
    """The ``pq`` index of :func:`build`: 4-bit PQ codes of dimensions balanced by variance, float16 vectors."""
    import faiss

    n, d = xb.shape
    m = pq_bytes * 2 if d % (pq_bytes * 2) == 0 else d
    train = xb if n <= PQ_TRAIN_MIN else xb[np.sort(np.random.default_rng(seed).choice(n, PQ_TRAIN_MIN,
                                                                                           replace=False))]
    perm = balanced_dims(train.var(axis=0), m)
    lt = faiss.LinearTransform(d, d, False)
    A = np.zeros((d, d), np.float32)
    A[np.arange(d), perm] = 1.0
    faiss.copy_array_to_vector(A.ravel(), lt.A)
    lt.is_trained = True
    pq = faiss.IndexPQ(d, m, 4)
    pq.pq.cp.seed = seed
    pq.train(np.ascontiguousarray(train[:, perm]))
    for s in range(0, n, 1 << 16):
        pq.add(np.ascontiguousarray(xb[s:s + (1 << 16), perm]))
    saved = faiss.IndexPreTransform(lt, pq)
    log.debug("pq index: %d B codes per vector", pq.code_size)
    return PQScan(saved, xb.astype(np.float16), PQ_REFINE if refine == REFINE_FACTOR else refine)


def search(index, xq: np.ndarray, k: int, *, device: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k nearest database vectors of each query.

    Parameters
    ----------
    index : faiss.Index
    xq : ndarray (nq, d)
    k : int
        Capped at ``index.ntotal``.
    device : str, optional
        A torch device other than ``"cpu"`` (e.g. ``"cuda"``): an exact flat index is searched there
        (:func:`core.knn.torch_search.exact_knn`); other indexes, and ``None`` or ``"cpu"``, search with faiss here.

    Returns
    -------
    D : float32 ndarray (nq, k)
        Squared L2 distances, ascending.
    I : int64 ndarray (nq, k)
        Database ids; -1 where an approximate index found fewer than k.
    """
    xq = as_f32(xq)
    if xq.shape[1] != index.d:
        raise ValueError(f"queries have {xq.shape[1]} dims, index has {index.d}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(int(k), index.ntotal)
    nq = len(xq)
    if isinstance(index, (Refined, PQScan)):
        with faiss_threads(1) if nq <= SINGLE_THREAD_MAX_NQ else contextlib.nullcontext():
            return index.search(xq, k)
    if device is not None and str(device) != "cpu" and is_flat_l2(index):
        from core.knn.torch_search import exact_knn

        return exact_knn(flat_vectors(index)[0], xq, k, device=str(device))
    if nq <= SINGLE_THREAD_MAX_NQ:
        with faiss_threads(1):
            return index.search(xq, k)
    if k >= BLOCKED_MIN_K and is_flat_l2(index):
        t0 = time.perf_counter()
        D, I = flat_l2_blocked(index, xq, k)
        log.debug("blocked flat search: %d queries, k=%d, %d×%d in %.3fs", nq, k, index.ntotal, index.d,
                  time.perf_counter() - t0)
        return D, I
    return index.search(xq, k)
