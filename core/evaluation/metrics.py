"""Detection metrics on kNN scores: ROC, AUC, EER accuracy, rates at a threshold, aggregated accuracy.

Convention (the paper's): **positive = authentic image correctly classified (trust it)**, negative =
adversarial (or an authentic error). A prediction is trusted when ``score >= threshold``.

>>> r = roc(pos_scores, neg_scores)             # doctest: +SKIP
>>> r.eer_accuracy, r.eer_threshold, r.auc      # doctest: +SKIP
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["Roc", "roc", "roc_corners", "eer", "rates_at", "aggregate", "rejected_at_tpr", "as_scores", "trusted",
           "threshold_at_tpr", "detection_rate"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Roc:
    """A ROC curve with its summary numbers.

    Attributes
    ----------
    fpr, tpr : float64 ndarray (m,)
        Increasing; ``fpr[i]``/``tpr[i]`` are the rates of negatives/positives with ``score >= thresholds[i]``.
    thresholds : float64 ndarray (m,)
        Decreasing; the first is ``+inf`` (nothing trusted).
    auc : float
        Area under the curve (NaN if a class is empty).
    eer : float
        Equal error rate: the rate where FPR = FNR (= 1 - TPR), linearly interpolated on the curve.
    eer_threshold : float
        Score threshold at the EER (interpolated between the two bracketing thresholds).
    eer_accuracy : float
        ``1 - eer`` (the paper's "EER accuracy").
    n_pos, n_neg : int
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auc: float
    eer: float
    eer_threshold: float
    eer_accuracy: float
    n_pos: int
    n_neg: int


def as_scores(x: ArrayLike) -> np.ndarray:
    """Float64 (n,): scores of any shape, raveled, NaN counted as 0 (no valid neighbour: do not trust)."""
    return np.nan_to_num(np.asarray(x, dtype=np.float64).ravel(), nan=0.0)


def trusted(scores: ArrayLike, threshold: float, *, strict: bool) -> np.ndarray:
    """Bool (n,): which scores (n,) are trusted at ``threshold``: ``score > threshold`` when ``strict`` (the
    ``nearest_eer`` rule), else ``score >= threshold``; NaN counts as 0."""
    s = as_scores(scores)
    return s > threshold if strict else s >= threshold


def threshold_at_tpr(pos: ArrayLike, tpr: float = 0.95) -> float:
    """Highest threshold whose rule ``score >= threshold`` keeps at least ``tpr`` of ``pos`` (n,).

    NaN scores count as 0. Returns NaN for an empty ``pos``.
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    pos = as_scores(pos)
    if len(pos) == 0:
        return float("nan")
    return float(np.quantile(pos, 1.0 - tpr, method="inverted_cdf"))


def detection_rate(neg: ArrayLike, threshold: float) -> float:
    """Share of negatives (n,) rejected (``score < threshold``); NaN when empty."""
    neg = as_scores(neg)
    return float((neg < threshold).mean()) if len(neg) else float("nan")


def _clean(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).ravel()
    if np.isnan(x).any():
        warnings.warn("NaN scores treated as 0 (no valid neighbour: do not trust)", RuntimeWarning, stacklevel=3)
        x = np.nan_to_num(x, nan=0.0)
    return x


def eer(fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
    """Equal error rate and its threshold from a ROC curve.

    Parameters
    ----------
    fpr, tpr : ndarray (m,)
        Non-decreasing rates (as returned by ``sklearn.metrics.roc_curve``).
    thresholds : ndarray (m,)
        Matching decreasing thresholds.

    Returns
    -------
    eer : float
        The FPR (= FNR) where the curve crosses ``fpr = 1 - tpr``, linearly interpolated.
    threshold : float
        The threshold interpolated at the crossing (finite; ``+inf`` is replaced by the next threshold).
    """
    fnr = 1.0 - np.asarray(tpr, dtype=np.float64)
    fpr = np.asarray(fpr, dtype=np.float64)
    diff = fnr - fpr  # starts at 1 (nothing trusted) and ends at -1 (everything trusted): decreasing
    j = int(np.argmax(diff <= 0))  # first point where FPR >= FNR
    if j == 0:
        return float(fpr[0]), float(thresholds[0])
    i = j - 1
    t = diff[i] / (diff[i] - diff[j]) if diff[i] != diff[j] else 0.0
    rate = fpr[i] + t * (fpr[j] - fpr[i])
    th = np.asarray(thresholds, dtype=np.float64)
    ti = th[i] if np.isfinite(th[i]) else th[j]
    return float(rate), float(ti + t * (th[j] - ti))


def roc(pos: np.ndarray, neg: np.ndarray) -> Roc:
    """ROC of trusting ``score >= threshold``, with AUC and the interpolated EER.

    Parameters
    ----------
    pos : ndarray (n_pos,)
        Scores of positives (authentic, correctly classified).
    neg : ndarray (n_neg,)
        Scores of negatives (adversarial or authentic errors).

    Returns
    -------
    Roc
        With NaN summaries (and a warning) when either set is empty.
    """
    from sklearn.metrics import auc as _auc
    from sklearn.metrics import roc_curve

    pos, neg = _clean(pos), _clean(neg)
    if len(pos) == 0 or len(neg) == 0:
        warnings.warn(f"ROC needs both classes (got {len(pos)} positives, {len(neg)} negatives); returning NaN",
                      RuntimeWarning, stacklevel=2)
        e = np.array([np.nan])
        return Roc(e, e, e, np.nan, np.nan, np.nan, np.nan, len(pos), len(neg))
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    s = np.r_[pos, neg]
    fpr, tpr, th = roc_curve(y, s, drop_intermediate=False)
    rate, threshold = eer(fpr, tpr, th)
    return Roc(fpr, tpr, th, float(_auc(fpr, tpr)), rate, threshold, 1.0 - rate, len(pos), len(neg))


def roc_corners(r: Roc) -> tuple[np.ndarray, np.ndarray]:
    """The points of ``r`` where the curve turns (its ends kept): the same polyline as ``(r.fpr, r.tpr)``, with the
    points inside straight runs left out (found on the integer counts, so exactly).

    Returns
    -------
    fpr, tpr : float64 ndarray (c,)
    """
    if r.n_pos == 0 or r.n_neg == 0 or len(r.fpr) < 3:
        return r.fpr, r.tpr
    fps, tps = np.rint(r.fpr * r.n_neg).astype(np.int64), np.rint(r.tpr * r.n_pos).astype(np.int64)
    keep = np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True]
    return r.fpr[keep], r.tpr[keep]


def rates_at(pos: np.ndarray, neg: np.ndarray, threshold: float, *, strict: bool = False) -> dict[str, float]:
    """Confusion counts and rates when trusting ``score >= threshold`` (``score > threshold`` when ``strict``:
    :func:`trusted`).

    Returns
    -------
    dict
        ``tp`` (authentic trusted), ``fn`` (authentic rejected), ``fp`` (negatives trusted: missed attacks),
        ``tn`` (negatives rejected: caught), ``tpr``, ``fpr``, ``accuracy`` (balanced: (TPR + TNR) / 2).
        At ``Roc.eer_threshold`` this ``accuracy`` equals ``Roc.eer_accuracy`` only where the ROC has a point
        with FPR = FNR: the EER is interpolated between ROC points, and tied scores leave such gaps.
    """
    pos, neg = _clean(pos), _clean(neg)
    tp = int(trusted(pos, threshold, strict=strict).sum())
    fp = int(trusted(neg, threshold, strict=strict).sum())
    tpr = tp / len(pos) if len(pos) else np.nan
    fpr = fp / len(neg) if len(neg) else np.nan
    return {"tp": tp, "fn": len(pos) - tp, "fp": fp, "tn": len(neg) - fp, "tpr": tpr, "fpr": fpr,
            "accuracy": (tpr + 1 - fpr) / 2}


def rejected_at_tpr(pos: np.ndarray, neg: np.ndarray, tpr: float = 0.95) -> float:
    """Share of negatives rejected at the highest threshold that still keeps ``tpr`` of the positives."""
    pos, neg = _clean(pos), _clean(neg)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    th = np.quantile(pos, 1.0 - tpr, method="inverted_cdf")  # >= th keeps at least tpr of positives
    return float((neg < th).mean())


def aggregate(accuracies: list[float], sizes: list[int]) -> float:
    """Mean of per-set accuracies weighted by set sizes (the paper's "Aggr."); NaN sets are skipped."""
    a, n = np.asarray(accuracies, dtype=np.float64), np.asarray(sizes, dtype=np.float64)
    ok = ~np.isnan(a) & (n > 0)
    return float((a[ok] * n[ok]).sum() / n[ok].sum()) if ok.any() else float("nan")
