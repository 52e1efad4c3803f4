"""kNN scores of a class from stored neighbours: kNN (w=1), W-kNN (w=1/i), DW-kNN (w=1/d²).

The score of class ``c`` for a query is ``sum_i w_i [c_i == c] / sum_i w_i`` over its k nearest training
neighbours (paper eq. (2), Table 1). faiss returns squared L2 distances, so DW-kNN's ``1/d²`` is ``1/D``.

>>> s = score(I, D, train_labels, predicted, k=100, fn="dwknn")   # (nq,) in [0, 1]   # doctest: +SKIP
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["compact_labels", "SCORE_FNS", "weights", "score", "score_ks", "score_table", "class_scores"]

#: Score functions: name -> description as in the paper's Table 1.
SCORE_FNS = {"knn": "kNN (w=1)", "wknn": "W-kNN (w=1/i)", "dwknn": "DW-kNN (w=1/d²)"}
#: Squared distances are clamped to this before DW-kNN's 1/D (an exact duplicate of a training image).
MIN_SQ_DIST = 1e-12


def weights(D: np.ndarray, fn: str) -> np.ndarray:
    """Neighbour weights for score function ``fn``.

    Parameters
    ----------
    D : ndarray (nq, k)
        Squared L2 distances, ascending along axis 1.
    fn : {"knn", "wknn", "dwknn"}

    Returns
    -------
    w : float64 ndarray (nq, k)
    """
    if fn not in SCORE_FNS:
        raise ValueError(f"unknown score function {fn!r}; use one of {list(SCORE_FNS)}")
    nq, k = D.shape
    if fn == "knn":
        return np.ones((nq, k))
    if fn == "wknn":
        return np.broadcast_to(1.0 / np.arange(1, k + 1), (nq, k)).copy()
    w = np.maximum(D, MIN_SQ_DIST, dtype=np.float64)
    return np.reciprocal(w, out=w)


def score(I: np.ndarray, D: np.ndarray, train_labels: np.ndarray, classes: np.ndarray, *, k: int | None = None,
          fn: str = "dwknn") -> np.ndarray:
    """kNN score of ``classes`` (one per query) from the queries' nearest neighbours.

    Parameters
    ----------
    I : int ndarray (nq, K)
        Neighbour ids into the training set, nearest first; -1 marks a missing neighbour (ignored).
    D : float ndarray (nq, K)
        Squared L2 distances matching ``I``.
    train_labels : int ndarray (N,)
        Label of every training item.
    classes : int ndarray (nq,)
        Class to score for each query (the CNN's prediction).
    k : int, optional, keyword-only
        Use the first ``k <= K`` neighbours (default all K).
    fn : {"knn", "wknn", "dwknn"}

    Returns
    -------
    s : float64 ndarray (nq,)
        Scores in [0, 1]; higher means the neighbours agree with ``classes`` (trust the prediction).
        NaN for a query with no valid neighbour.
    """
    K = np.shape(I)[1] if np.ndim(I) == 2 else 0
    return score_ks(I, D, train_labels, classes, [K if k is None else k], fn=fn)[0]


def score_ks(I: np.ndarray, D: np.ndarray, train_labels: np.ndarray, classes: np.ndarray, ks: Sequence[int], *,
             fn: str = "dwknn") -> np.ndarray:
    """:func:`score` at several k at once, from one pass along the neighbour axis.

    Neighbour terms are summed one after another in neighbour order, so row ``j`` equals
    ``score(..., k=ks[j], fn=fn)`` exactly.

    Parameters
    ----------
    I, D, train_labels, classes, fn
        As for :func:`score`.
    ks : sequence of int
        Each in [1, K], any order, repeats allowed.

    Returns
    -------
    s : float64 ndarray (len(ks), nq)
    """
    return score_table(I, D, train_labels, classes, ks, fns=[fn])[fn]


def score_table(I: np.ndarray, D: np.ndarray, train_labels: np.ndarray, classes: np.ndarray, ks: Sequence[int], *,
                fns: Sequence[str] = tuple(SCORE_FNS)) -> dict[str, np.ndarray]:
    """:func:`score_ks` for several score functions, sharing the label look-up: ``{fn: (len(ks), nq)}``."""
    I, D = np.asarray(I), np.asarray(D)
    if I.shape != D.shape or I.ndim != 2:
        raise ValueError(f"I and D must have the same 2-D shape, got {I.shape} and {D.shape}")
    for fn in fns:
        if fn not in SCORE_FNS:
            raise ValueError(f"unknown score function {fn!r}; use one of {list(SCORE_FNS)}")
    nq, K = I.shape
    ks = np.asarray([int(k) for k in ks], dtype=np.int64)
    if len(ks) and not ((ks >= 1) & (ks <= K)).all():
        raise ValueError(f"k must be in [1, {K}] (the stored neighbours), got {ks.tolist()}")
    classes = np.asarray(classes).reshape(-1)
    if len(classes) != nq:
        raise ValueError(f"{len(classes)} classes for {nq} queries")
    if len(ks) == 0:
        return {fn: np.empty((0, nq)) for fn in fns}
    uk, inv = np.unique(ks, return_inverse=True)
    kmax = int(uk[-1])
    Ik = I[:, :kmax]
    valid = None if Ik.size == 0 or Ik.min() >= 0 else Ik >= 0  # None: every neighbour valid (exact search)
    labels, classes = compact_labels(np.asarray(train_labels), classes)
    match = labels[Ik if valid is None else np.where(valid, Ik, 0)] == classes[:, None]
    if valid is not None:
        match &= valid
        valid = np.ascontiguousarray(valid.T)
    match = np.ascontiguousarray(match.T)  # (kmax, nq): neighbour axis first, so sums run row after row
    out = {}
    for fn in fns:
        if fn == "knn":
            hit = _prefix_counts(match, uk)
            total = np.broadcast_to(uk[:, None], hit.shape).astype(np.float64) if valid is None else \
                _prefix_counts(valid, uk)
        elif fn == "wknn":
            w = 1.0 / np.arange(1, kmax + 1)
            hit = _prefix_sums(np.multiply(match, w[:, None]), uk)
            total = (np.broadcast_to(np.cumsum(w)[uk - 1][:, None], hit.shape) if valid is None
                     else _prefix_sums(np.multiply(valid, w[:, None]), uk))
        else:
            w = np.ascontiguousarray(D[:, :kmax].T).astype(np.float64)  # a copy: changed in place below
            np.maximum(w, MIN_SQ_DIST, out=w)
            np.reciprocal(w, out=w)
            if valid is not None:
                w *= valid
            hit = _prefix_sums(np.multiply(match, w), uk)
            total = _prefix_sums(w, uk)
        with np.errstate(invalid="ignore", divide="ignore"):
            s = np.where(total > 0, hit / total, np.nan)
        out[fn] = s[inv.ravel()]
    return out


def _prefix_sums(W: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """Sums of the first ``k`` rows of ``W`` (K, n) for ascending unique ``ks`` -> float64 (len(ks), n).

    Each sum adds rows in order (``sum(axis=0)`` of a C-ordered block), starting from the previous prefix put
    in place of the row just before the block, so every prefix is the plain left-to-right sum.
    """
    n = W.shape[1]
    if n == 1:  # a single column would be summed pairwise along the rows: keep two columns
        W = np.hstack([W, np.zeros_like(W)])
    out = np.empty((len(ks), W.shape[1]))
    prev = 0
    for j, k in enumerate(ks):
        if prev == 0:
            out[j] = W[:k].sum(axis=0)
        else:
            row = W[prev - 1].copy()
            W[prev - 1] = out[j - 1]
            out[j] = W[prev - 1:k].sum(axis=0)
            W[prev - 1] = row
        prev = int(k)
    return out[:, :n]


def _prefix_counts(M: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """True counts in the first ``k`` rows of bool ``M`` (K, n) for ascending unique ``ks`` -> float64 (len(ks), n)."""
    edges = np.r_[0, ks]
    blocks = np.stack([np.count_nonzero(M[a:b], axis=0) for a, b in zip(edges[:-1], edges[1:])])
    return np.cumsum(blocks, axis=0).astype(np.float64)


def compact_labels(labels: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and classes as int16 when both fit (the (nq, k) gather and compare move 4× fewer bytes)."""
    if labels.dtype.kind in "iu" and classes.dtype.kind in "iu" and len(labels) and len(classes):
        lo, hi = np.iinfo(np.int16).min, np.iinfo(np.int16).max
        if lo <= min(labels.min(), classes.min()) and max(labels.max(), classes.max()) <= hi:
            return labels.astype(np.int16), classes.astype(np.int16)
    return labels, classes


def class_scores(I: np.ndarray, D: np.ndarray, train_labels: np.ndarray, n_classes: int, *, k: int | None = None,
                 fn: str = "dwknn") -> np.ndarray:
    """Scores of every class for every query: float64 (nq, n_classes), rows sum to 1 (the kNN classifier)."""
    nq = len(I)
    return np.stack([score(I, D, train_labels, np.full(nq, c), k=k, fn=fn) for c in range(n_classes)], axis=1)
