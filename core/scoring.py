"""kNN scores of a class from stored neighbours: kNN (w=1), W-kNN (w=1/i), DW-kNN (w=1/d²).

The score of class ``c`` for a query is ``sum_i w_i [c_i == c] / sum_i w_i`` over its k nearest training
neighbours (paper eq. (2), Table 1). faiss returns squared L2 distances, so DW-kNN's ``1/d²`` is ``1/D``.

>>> s = score(I, D, train_labels, predicted, k=100, fn="dwknn")   # (nq,) in [0, 1]   # doctest: +SKIP
"""
from __future__ import annotations

import numpy as np

__all__ = ["SCORE_FNS", "weights", "score", "class_scores"]

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
    I, D = np.asarray(I), np.asarray(D)
    if I.shape != D.shape or I.ndim != 2:
        raise ValueError(f"I and D must have the same 2-D shape, got {I.shape} and {D.shape}")
    K = I.shape[1]
    k = K if k is None else int(k)
    if not 1 <= k <= K:
        raise ValueError(f"k must be in [1, {K}] (the stored neighbours), got {k}")
    I, D = I[:, :k], D[:, :k]
    classes = np.asarray(classes).reshape(-1)
    if len(classes) != len(I):
        raise ValueError(f"{len(classes)} classes for {len(I)} queries")
    nq = len(I)
    valid = None if I.size == 0 or I.min() >= 0 else I >= 0  # None: every neighbour valid (exact search)
    labels, classes = _compact(np.asarray(train_labels), classes)
    match = labels[I if valid is None else np.where(valid, I, 0)] == classes[:, None]
    if valid is not None:
        match &= valid
    if fn == "knn":
        hit = np.count_nonzero(match, axis=1).astype(np.float64)
        total = np.full(nq, float(k)) if valid is None else np.count_nonzero(valid, axis=1).astype(np.float64)
    elif fn == "wknn":
        w = 1.0 / np.arange(1, k + 1)
        hit = match @ w
        total = np.full(nq, w.sum()) if valid is None else valid @ w
    else:
        w = weights(D, fn)
        if valid is not None:
            w[~valid] = 0.0
        hit = np.einsum("ij,ij->i", w, match)
        total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, hit / total, np.nan)


def _compact(labels: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
