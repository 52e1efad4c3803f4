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
    return 1.0 / np.maximum(D.astype(np.float64), MIN_SQ_DIST)


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
    valid = I >= 0
    labels = np.asarray(train_labels)[np.where(valid, I, 0)]
    w = weights(D, fn) * valid
    total = w.sum(axis=1)
    hit = (w * (labels == classes[:, None])).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, hit / total, np.nan)


def class_scores(I: np.ndarray, D: np.ndarray, train_labels: np.ndarray, n_classes: int, *, k: int | None = None,
                 fn: str = "dwknn") -> np.ndarray:
    """Scores of every class for every query: float64 (nq, n_classes), rows sum to 1 (the kNN classifier)."""
    nq = len(I)
    return np.stack([score(I, D, train_labels, np.full(nq, c), k=k, fn=fn) for c in range(n_classes)], axis=1)
