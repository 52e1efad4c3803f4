"""kNN scores of one query set at any k, fast after a first pass: prefix sums kept every ``every`` neighbours.

A k change in the app rescored every stored image from scratch (about 100–175 ms per layer for DW-kNN on the
default run's 5 564 images at k near 1000). :class:`PrefixScores` keeps the running sums of the first pass at
every ``every``-th neighbour, so a score at any k adds at most ``every - 1`` neighbour rows to a kept sum. The sums
run in the same order as :func:`core.knn.scoring.score_ks` (row after row along the neighbour axis), so the scores are
equal to :func:`core.knn.scoring.score`'s bit for bit.

>>> p = PrefixScores(I, D, train_labels, predicted, "dwknn")     # one pass over the K stored neighbours
>>> p.at(500)                                                   # == scoring.score(..., k=500, fn="dwknn")
"""
from __future__ import annotations

import numpy as np

from core.knn.scoring import MIN_SQ_DIST, SCORE_FNS, compact_labels

__all__ = ["PrefixScores", "EVERY"]

#: Neighbours between kept prefix sums (memory: 2 · K / EVERY float64 per query).
EVERY = 32


class PrefixScores:
    """Scores of ``classes`` for one query set at any ``k`` in [1, K].

    Parameters
    ----------
    I : int ndarray (nq, K)
        Neighbour ids, nearest first; -1 marks a missing neighbour.
    D : float ndarray (nq, K)
        Squared L2 distances matching ``I`` (kept by reference, not copied).
    train_labels : int ndarray (N,)
    classes : int ndarray (nq,)
    fn : {"knn", "wknn", "dwknn"}
    every : int
        Neighbours between kept prefix sums.
    """

    def __init__(self, I: np.ndarray, D: np.ndarray, train_labels: np.ndarray, classes: np.ndarray, fn: str,
                 every: int = EVERY):
        if fn not in SCORE_FNS:
            raise ValueError(f"unknown score function {fn!r}; use one of {list(SCORE_FNS)}")
        I, D = np.asarray(I), np.asarray(D)
        if I.shape != D.shape or I.ndim != 2:
            raise ValueError(f"I and D must have the same 2-D shape, got {I.shape} and {D.shape}")
        classes = np.asarray(classes).reshape(-1)
        if len(classes) != len(I):
            raise ValueError(f"{len(classes)} classes for {len(I)} queries")
        self.I, self.D, self.fn, self.every = I, D, fn, int(every)
        self.nq, self.K = I.shape
        self.labels, self.classes = compact_labels(np.asarray(train_labels), classes)
        self.valid_all = I.size == 0 or I.min() >= 0
        n_kept = self.K // self.every + 1
        self.hit = np.zeros((n_kept, self.nq))
        self.total = None
        step = 8 * self.every  # rows made at once (a few MB), summed block by block
        for a in range(0, n_kept * self.every - self.every, step):
            hit, total = self._rows(a, min(a + step, (n_kept - 1) * self.every))
            if total is not None and self.total is None:
                self.total = np.zeros((n_kept, self.nq))
            j0 = a // self.every
            self._keep(hit, self.hit, j0)
            if total is not None:
                self._keep(total, self.total, j0)

    def _keep(self, W: np.ndarray, kept: np.ndarray, j0: int) -> None:
        """Fill ``kept[j0 + 1 :]`` with the running sums over ``W``'s blocks of ``every`` rows, each sum the kept
        one before it plus the block's rows in order (``W`` is changed)."""
        e = self.every
        for b in range(len(W) // e):
            blk = W[b * e:(b + 1) * e]
            if j0 + b == 0:
                kept[1] = blk.sum(axis=0)
            else:
                kept[j0 + b + 1] = np.vstack([kept[j0 + b][None], blk]).sum(axis=0)

    def _rows(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Neighbour rows ``a:b`` as (b - a, nq) float64: the matched weights and the weights (None for kNN /
        W-kNN over complete neighbour lists, whose totals need no sum)."""
        Ik = self.I[:, a:b]
        valid = None if self.valid_all else Ik >= 0
        match = self.labels[Ik if valid is None else np.where(valid, Ik, 0)] == self.classes[:, None]
        if valid is not None:
            match &= valid
        match = np.ascontiguousarray(match.T)
        if self.fn == "knn":
            return match.astype(np.float64), None if valid is None else np.ascontiguousarray(valid.T, np.float64)
        if self.fn == "wknn":
            w = (1.0 / np.arange(1, self.K + 1))[a:b, None]
            return np.multiply(match, w), None if valid is None else np.multiply(np.ascontiguousarray(valid.T), w)
        w = np.ascontiguousarray(self.D[:, a:b].T).astype(np.float64)
        np.maximum(w, MIN_SQ_DIST, out=w)
        np.reciprocal(w, out=w)
        if valid is not None:
            w *= valid.T
        return np.multiply(match, w), w

    def at(self, k: int) -> np.ndarray:
        """Scores (nq,) at ``k``: equal to ``core.knn.scoring.score(I, D, train_labels, classes, k=k, fn=fn)``.

        Raises
        ------
        ValueError
            ``k`` outside [1, K].
        """
        k = int(k)
        if not 1 <= k <= self.K:
            raise ValueError(f"k must be in [1, {self.K}] (the stored neighbours), got {k}")
        j = k // self.every
        a = j * self.every
        hit, total = self.hit[j], None if self.total is None else self.total[j]
        if a < k:
            rh, rt = self._rows(a, k)
            hit = np.vstack([hit[None], rh]).sum(axis=0)  # the kept sum, then each row in order
            if total is not None:
                total = np.vstack([total[None], rt]).sum(axis=0)
        if total is None:  # complete neighbour lists: kNN counts k, W-kNN sums 1/i
            total = np.full(self.nq, float(k) if self.fn == "knn" else np.cumsum(1.0 / np.arange(1, k + 1))[-1])
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, hit / total, np.nan)
