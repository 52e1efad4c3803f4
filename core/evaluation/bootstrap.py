"""Paired bootstrap over source images: 95 % confidence intervals of detection figures, vectorised.

One replicate draws the source images (the test images every set derives from) with replacement; each item then
counts as many times as its source was drawn, so an authentic image, its noisy copy and its adversarials stay
paired. The draw is made once (a ``(B, n_sources)`` count matrix, seeded) and reused by every statistic, so the
difference of two statistics is a paired bootstrap of the difference.

>>> bs = SourceBootstrap(test_sources, n_boot=1000, seed=0)               # doctest: +SKIP
>>> acc, auc = bs.roc(pos, pos_src, neg, neg_src)                          # doctest: +SKIP
>>> acc.interval()                                                         # [value, lo, hi]  # doctest: +SKIP
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import sparse

__all__ = ["Estimate", "SourceBootstrap"]

log = logging.getLogger(__name__)

#: Cells (rows x score bins) of the count matrix processed at once by :meth:`SourceBootstrap.roc_many` (bounds
#: its memory); at least 16 rows.
ROC_CHUNK_CELLS = 2_000_000


@dataclass(frozen=True)
class Estimate:
    """A statistic on the sample and on every bootstrap replicate.

    Attributes
    ----------
    value : float
        The statistic on the sample itself.
    replicates : float64 ndarray (B,)
        The statistic on each replicate (NaN where it is undefined, e.g. a class is empty).
    """

    value: float
    replicates: np.ndarray

    def interval(self, level: float = 0.95) -> list[float]:
        """``[value, lo, hi]``: the percentile interval of the replicates (NaN replicates ignored)."""
        a = (1.0 - level) / 2.0 * 100.0
        r = self.replicates[~np.isnan(self.replicates)]
        lo, hi = (np.percentile(r, [a, 100.0 - a]) if len(r) else (np.nan, np.nan))
        return [float(self.value), float(lo), float(hi)]

    def __sub__(self, other: Estimate) -> Estimate:
        return Estimate(self.value - other.value, self.replicates - other.replicates)


def _nan_to_zero(x: ArrayLike) -> np.ndarray:
    """Scores as float64 (n,), NaN (no valid neighbour) as 0, as :mod:`core.evaluation.metrics` treats them."""
    return np.nan_to_num(np.asarray(x, dtype=np.float64).ravel(), nan=0.0)


class SourceBootstrap:
    """Bootstrap replicates over a fixed set of source images.

    Parameters
    ----------
    sources : int ndarray (n,)
        Source ids to resample (duplicates are merged).
    n_boot : int
        Number of replicates B.
    seed : int

    Attributes
    ----------
    sources : int64 ndarray (n_sources,)
        Sorted unique source ids.
    counts : float32 ndarray (B + 1, n_sources)
        Row 0 is all ones (the sample); row ``b + 1`` counts how often each source is drawn in replicate ``b``.
    """

    def __init__(self, sources: ArrayLike, *, n_boot: int = 1000, seed: int = 0):
        self.sources = np.unique(np.asarray(sources, dtype=np.int64).ravel())
        n = len(self.sources)
        if n == 0:
            raise ValueError("no source images to resample")
        self.n_boot, self.seed = int(n_boot), int(seed)
        idx = np.random.default_rng(seed).integers(0, n, size=(self.n_boot, n), dtype=np.int64)
        flat = (idx + (np.arange(self.n_boot) * n)[:, None]).ravel()
        drawn = np.bincount(flat, minlength=self.n_boot * n).reshape(self.n_boot, n)
        self.counts = np.vstack([np.ones((1, n)), drawn]).astype(np.float32)
        self._counts_t = np.ascontiguousarray(self.counts.T)  # (n_sources, B + 1), for sparse products

    def positions(self, source: ArrayLike) -> np.ndarray:
        """Column (n,) of each item's source in :attr:`counts`; raises ValueError for an unknown source."""
        source = np.asarray(source, dtype=np.int64).ravel()
        pos = np.searchsorted(self.sources, source)
        pos = np.minimum(pos, len(self.sources) - 1)
        bad = self.sources[pos] != source
        if bad.any():
            raise ValueError(f"source ids {np.unique(source[bad])[:5].tolist()} are not resampled here")
        return pos

    def per_source(self, values: ArrayLike, source: ArrayLike) -> np.ndarray:
        """Sum (n_sources,) of item ``values`` (n,) by source."""
        return np.bincount(self.positions(source), weights=np.asarray(values, dtype=np.float64).ravel(),
                           minlength=len(self.sources))

    def total(self, per_source: ArrayLike) -> Estimate:
        """Sum of a per-source quantity (n_sources,), on the sample and each replicate."""
        t = self.counts @ np.asarray(per_source, dtype=np.float32)
        return Estimate(float(np.asarray(per_source, dtype=np.float64).sum()), t[1:].astype(np.float64))

    def ratio(self, num: ArrayLike, den: ArrayLike) -> Estimate:
        """Ratio of two per-source sums (each (n_sources,)): ``sum(num) / sum(den)`` per replicate."""
        n = (self.counts @ np.asarray(num, dtype=np.float32)).astype(np.float64)
        d = (self.counts @ np.asarray(den, dtype=np.float32)).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(d > 0, n / d, np.nan)
        return Estimate(float(r[0]), r[1:])

    def ratios(self, num: ArrayLike, den: ArrayLike) -> list[Estimate]:
        """:meth:`ratio` of several pairs at once, ``num`` and ``den`` (n_sources, V): one pass over the counts."""
        nd = self.counts @ np.hstack([np.asarray(num, np.float32), np.asarray(den, np.float32)])
        v = np.asarray(num).shape[1]
        n, d = nd[:, :v].astype(np.float64), nd[:, v:].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(d > 0, n / d, np.nan)
        return [Estimate(float(r[0, i]), r[1:, i]) for i in range(v)]

    def rate(self, flags: ArrayLike, source: ArrayLike) -> Estimate:
        """Share of items flagged, ``flags`` bool (n,) with their ``source`` (n,)."""
        flags = np.asarray(flags, dtype=np.float64).ravel()
        return self.ratio(self.per_source(flags, source), self.per_source(np.ones_like(flags), source))

    def roc(self, pos: ArrayLike, pos_source: ArrayLike, neg: ArrayLike,
            neg_source: ArrayLike) -> tuple[Estimate, Estimate]:
        """EER accuracy and AUC of trusting ``score >= threshold`` (as :func:`core.evaluation.metrics.roc`).

        Parameters
        ----------
        pos, pos_source : ndarray (n_pos,)
            Scores of positives and their sources.
        neg, neg_source : ndarray (n_neg,)
            Scores of negatives and their sources.

        Returns
        -------
        eer_accuracy, auc : Estimate
            Per-threshold-oracle EER accuracy (interpolated, the paper's metric) and area under the ROC.
        """
        return self.roc_many(pos, pos_source, {"": (neg, neg_source)})[""]

    def roc_many(self, pos: ArrayLike, pos_source: ArrayLike,
                 negatives: Mapping[str, tuple[ArrayLike, ArrayLike]]) -> dict[str, tuple[Estimate, Estimate]]:
        """:meth:`roc` of one positive set against several negative sets, sharing the positives' work.

        Parameters
        ----------
        pos, pos_source : ndarray (n_pos,)
        negatives : mapping of name -> (scores (n_neg,), sources (n_neg,))

        Returns
        -------
        dict
            name -> (eer_accuracy, auc).
        """
        pos = _nan_to_zero(pos)
        gp = np.unique(pos)  # ascending distinct positive scores
        Ap = _incidence(self.positions(pos_source), len(gp) - 1 - np.searchsorted(gp, pos), len(self.sources),
                        len(gp))  # columns: descending positive scores
        negs = {}
        for k, (s, src) in negatives.items():
            s = _nan_to_zero(s)
            gn = np.unique(s)
            A = _incidence(self.positions(src), len(gn) - 1 - np.searchsorted(gn, s), len(self.sources), len(gn))
            gn = gn[::-1]
            # columns of the positives' cumulative weights: scores >= v and scores > v, for each negative value v
            ge = len(gp) - np.searchsorted(gp, gn, side="left")
            gt = len(gp) - np.searchsorted(gp, gn, side="right")
            negs[k] = (A, ge, gt)
        R = len(self.counts)
        acc = {k: np.empty(R) for k in negs}
        auc = {k: np.empty(R) for k in negs}
        width = max([Ap.shape[1], *(A.shape[1] for A, _, _ in negs.values())])
        chunk = max(16, ROC_CHUNK_CELLS // max(width, 1))
        for r0 in range(0, R, chunk):
            C = self.counts[r0:r0 + chunk]
            CT = self._counts_t if len(C) == R else self._counts_t[:, r0:r0 + chunk]
            tp = _cumulative(CT, Ap)  # (r, m_pos + 1), column 0 = nothing
            for k, (A, ge, gt) in negs.items():
                fp = _cumulative(CT, A)
                sl = slice(r0, r0 + len(C))
                acc[k][sl], auc[k][sl] = _eer_auc(tp[:, ge], tp[:, gt], tp[:, -1], fp)
        return {k: (Estimate(float(acc[k][0]), acc[k][1:]), Estimate(float(auc[k][0]), auc[k][1:])) for k in negs}

    def aggregate(self, values: Sequence[Estimate], sizes: Sequence[Estimate]) -> Estimate:
        """Size-weighted mean of per-set statistics (the paper's Aggr.), replicate by replicate; NaN sets skipped.

        Parameters
        ----------
        values : sequence of Estimate
            One statistic per set.
        sizes : sequence of Estimate
            Each set's size (:meth:`total` of its per-source item counts).
        """
        if not len(values):  # no set to aggregate (e.g. no adversarial on this side): undefined
            return Estimate(float("nan"), np.full(self.n_boot, np.nan))
        v = np.array([[e.value, *e.replicates] for e in values], dtype=np.float64)
        w = np.array([[e.value, *e.replicates] for e in sizes], dtype=np.float64)
        ok = ~np.isnan(v) & (w > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            a = np.where(ok, v * w, 0.0).sum(0) / np.where(ok, w, 0.0).sum(0)
        return Estimate(float(a[0]), a[1:])


def _incidence(rows: np.ndarray, cols: np.ndarray, n: int, m: int) -> sparse.csr_matrix:
    """Item-count matrix (n sources, m score bins)."""
    return sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, m))


def _cumulative(CT: np.ndarray, A: sparse.csr_matrix) -> np.ndarray:
    """Cumulative weights (r, m + 1) over A's descending score bins per column of counts CT (n, r); column 0 is 0."""
    W = np.asarray((A.T @ CT).T, dtype=np.float64)
    out = np.zeros((CT.shape[1], W.shape[1] + 1))
    np.cumsum(W, axis=1, out=out[:, 1:])
    return out


def _eer_auc(tp_ge: np.ndarray, tp_gt: np.ndarray, P: np.ndarray, fp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """EER accuracy and AUC (r,) from the ROC's values at the negatives' distinct scores.

    Parameters
    ----------
    tp_ge, tp_gt : ndarray (r, K)
        Positive weight with score >= / > each negative value (descending).
    P : ndarray (r,)
        Total positive weight.
    fp : ndarray (r, K + 1)
        Cumulative negative weight, column 0 = 0.

    Notes
    -----
    Between two negative values the false-positive rate is constant, so :func:`core.evaluation.metrics.eer`'s first
    crossing of FNR = FPR is either inside such a run (rate = that FPR) or on the step that adds the negatives
    at a value (interpolated between the point just above it and the point at it).
    """
    r = np.arange(len(fp))
    N = fp[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = fp / N[:, None]
        before = (1.0 - tp_gt / P[:, None]) - fpr[:, :-1]  # diff just above each negative value
        after = (1.0 - tp_ge / P[:, None]) - fpr[:, 1:]  # diff at it
        k = np.argmax(after <= 0, axis=1)  # always found: the last has FPR = 1
        db, da = before[r, k], after[r, k]
        f0, f1 = fpr[r, k], fpr[r, k + 1]
        rate = np.where(db > 0, f0 + db / (db - da) * (f1 - f0), f0)
        w = np.diff(fp, axis=1)
        auc = (w * (tp_gt + tp_ge) / 2.0).sum(axis=1) / (P * N)
    bad = ~((P > 0) & (N > 0))
    return np.where(bad, np.nan, 1.0 - rate), np.where(bad, np.nan, auc)
