"""One operating point, chosen on validation only, and what it does on test.

The operating point is a detector setting (layer, processing mode, score function, k) with one threshold, set
on validation by one of two rules (:data:`RULES`):

- ``target_tpr`` (the paper's protocol here): trust ``score >= threshold``, the threshold keeping ``target_tpr``
  of the validation positives (the rule of :func:`core.evaluation.metrics.rejected_at_tpr`); the setting chosen maximises
  the mean, over attack sets with equal weight per attack, of the validation detection rate at its threshold.
- ``nearest_eer`` (the authors' evaluation): trust ``score > threshold``, the threshold at the validation ROC
  point nearest FNR = FPR with every attack set pooled (:func:`nearest_eer_threshold`); the setting chosen
  maximises the accuracy ``1 - (FNR + FPR) / 2`` at that point.

Ties go to the earlier candidate.

On test, :func:`measure` reports per attack the detection rate, the TPR reached on test positives, and the
guarded success: the share of attack attempts that fool the CNN and are trusted.

>>> op = choose_operating_point(settings, validation_scores, target_tpr=0.95)   # doctest: +SKIP
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from core.evaluation.bootstrap import SourceBootstrap
from core.evaluation.metrics import as_scores, detection_rate, threshold_at_tpr, trusted

__all__ = ["RULES", "Setting", "OperatingPoint", "selection_criterion",
           "choose_operating_point", "AttackItems", "measure", "nearest_eer_threshold"]

log = logging.getLogger(__name__)

#: Threshold rules: name -> what sets the threshold and what chooses the setting (for reports).
RULES = {
    "target_tpr": "trust score >= threshold; threshold keeps target_tpr of the validation positives; setting "
                  "chosen by the mean validation detection rate over attack sets at its threshold",
    "nearest_eer": "trust score > threshold; threshold at the validation ROC point nearest FNR = FPR, attack sets "
                   "pooled; setting chosen by the validation accuracy 1 - (FNR + FPR) / 2 at that point",
}


class Setting(NamedTuple):
    """A detector configuration."""

    layer: str
    mode: str
    fn: str
    k: int


@dataclass(frozen=True)
class OperatingPoint:
    """A chosen setting and its threshold (trust ``score >= threshold``).

    Attributes
    ----------
    setting : Setting
    threshold : float
    target_tpr : float or None
        None under the ``nearest_eer`` rule.
    criterion : float
        The selection criterion on validation (see :data:`RULES`).
    tpr_validation : float
        Share of validation positives trusted.
    rule : str
        A key of :data:`RULES`.
    """

    setting: Setting
    threshold: float
    target_tpr: float | None
    criterion: float
    tpr_validation: float
    rule: str = "target_tpr"

    @property
    def strict(self) -> bool:
        """Whether a score must exceed the threshold to be trusted (``score > threshold``)."""
        return self.rule == "nearest_eer"

    def trusted(self, scores: ArrayLike) -> np.ndarray:
        """Bool (n,): the scores (n,) trusted at this operating point (NaN counts as 0)."""
        return trusted(scores, self.threshold, strict=self.strict)


def selection_criterion(pos: ArrayLike, attacks: Mapping[str, ArrayLike], target_tpr: float) -> tuple[float, float]:
    """Threshold keeping ``target_tpr`` of ``pos`` and the mean detection rate over ``attacks`` at it.

    Parameters
    ----------
    pos : ndarray (n_pos,)
        Validation positive scores.
    attacks : mapping of name -> ndarray (n_a,)
        Validation scores of each attack set (empty sets are skipped).
    target_tpr : float

    Returns
    -------
    threshold, criterion : float
    """
    th = threshold_at_tpr(pos, target_tpr)
    rates = [detection_rate(s, th) for s in attacks.values() if np.size(s)]
    return th, (float(np.mean(rates)) if rates else float("nan"))


def choose_operating_point(candidates: Iterable[Setting],
                           validation_scores: Callable[[Setting], tuple[np.ndarray, Mapping[str, np.ndarray]]], *,
                           target_tpr: float = 0.95, rule: str = "target_tpr") -> OperatingPoint:
    """The candidate with the best selection criterion on validation, with its threshold.

    Parameters
    ----------
    candidates : iterable of Setting
    validation_scores : callable
        ``validation_scores(setting) -> (pos (n_pos,), {attack: neg (n_a,)})``, validation items only.
    target_tpr : float
        Used by the ``target_tpr`` rule.
    rule : {"target_tpr", "nearest_eer"}

    Returns
    -------
    OperatingPoint

    Raises
    ------
    ValueError
        If no candidate has a defined criterion.
    """
    if rule not in RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; use one of {list(RULES)}")
    best: OperatingPoint | None = None
    for s in candidates:
        s = Setting(*s)
        pos, attacks = validation_scores(s)
        if rule == "target_tpr":
            th, crit = selection_criterion(pos, attacks, target_tpr)
            tpr = float((as_scores(pos) >= th).mean()) if np.size(pos) else float("nan")
        else:
            negs = [np.ravel(a) for a in attacks.values() if np.size(a)]
            r = nearest_eer_threshold(pos, np.concatenate(negs) if negs else np.empty(0))
            th, crit, tpr = r["threshold"], r["accuracy"], r["tpr"]
        if np.isnan(crit) or not np.isfinite(th):  # nothing to choose on (no positives or no attacks)
            continue
        if best is None or crit > best.criterion:
            best = OperatingPoint(s, th, float(target_tpr) if rule == "target_tpr" else None, crit, tpr, rule)
    if best is None:
        raise ValueError("no candidate setting has validation positives and attacks to choose on")
    log.info("operating point %s, threshold %.4g, validation criterion %.4f", best.setting, best.threshold,
             best.criterion)
    return best


@dataclass(frozen=True)
class AttackItems:
    """One attack set on the side measured.

    Attributes
    ----------
    scores, source : ndarray (n,)
        Detector scores of the set's items and their source ids.
    fooled : bool ndarray (n,)
        Whether the CNN's prediction differs from the true class.
    attempts : float ndarray (n_sources,)
        Attack attempts per source of the bootstrap (aligned with ``SourceBootstrap.sources``).
    """

    scores: np.ndarray
    source: np.ndarray
    fooled: np.ndarray
    attempts: np.ndarray


def measure(bs: SourceBootstrap, threshold: float, pos: ArrayLike, pos_source: ArrayLike,
            attacks: Mapping[str, AttackItems], *, strict: bool = False) -> dict:
    """Figures at a fixed threshold on the measured side, with bootstrap estimates.

    Parameters
    ----------
    bs : SourceBootstrap
        Over the measured side's source ids.
    threshold : float
    pos, pos_source : ndarray (n_pos,)
        Positive scores and sources.
    attacks : mapping of name -> AttackItems
    strict : bool
        Trust ``score > threshold`` (else ``score >= threshold``).

    Returns
    -------
    dict
        ``{"tpr": Estimate, "attacks": {name: {"detection_rate": Estimate, "guarded_success": Estimate}}}``;
        detection rate = share of the set rejected, guarded success = (fooled and trusted) / attempts.
    """
    nums, dens = [], []
    p = as_scores(pos)
    nums.append(bs.per_source(trusted(p, threshold, strict=strict), pos_source))
    dens.append(bs.per_source(np.ones(len(p)), pos_source))
    for a in attacks.values():
        t = trusted(a.scores, threshold, strict=strict)
        nums += [bs.per_source(~t, a.source), bs.per_source(t & np.asarray(a.fooled, bool), a.source)]
        dens += [bs.per_source(np.ones(len(t)), a.source), np.asarray(a.attempts, dtype=np.float64)]
    est = bs.ratios(np.stack(nums, axis=1), np.stack(dens, axis=1))
    out: dict = {"tpr": est[0], "attacks": {}}
    for i, name in enumerate(attacks):
        out["attacks"][name] = {"detection_rate": est[1 + 2 * i], "guarded_success": est[2 + 2 * i]}
    return out


def nearest_eer_threshold(pos: ArrayLike, neg: ArrayLike) -> dict[str, float]:
    """The authors' pooled threshold: the point of the ROC of ``score > t`` nearest FNR = FPR.

    Parameters
    ----------
    pos : ndarray (n_pos,)
        Positive scores.
    neg : ndarray (n_neg,)
        Negative scores, every attack pooled.

    Returns
    -------
    dict
        ``threshold`` (trust ``score > threshold``; the highest among equally near points), ``tpr``, ``fpr`` and
        ``accuracy`` = 1 - (FNR + FPR) / 2 at it; NaN values when a class is empty.
    """
    pos, neg = as_scores(pos), as_scores(neg)
    if len(pos) == 0 or len(neg) == 0:
        return {"threshold": float("nan"), "tpr": float("nan"), "fpr": float("nan"), "accuracy": float("nan")}
    ts = np.r_[np.unique(np.r_[pos, neg])[::-1], -np.inf]  # descending; the last trusts everything
    sp, sn = np.sort(pos), np.sort(neg)
    tpr = (len(sp) - np.searchsorted(sp, ts, side="right")) / len(sp)  # share with score > t
    fpr = (len(sn) - np.searchsorted(sn, ts, side="right")) / len(sn)
    i = int(np.argmin(np.abs((1.0 - tpr) - fpr)))
    return {"threshold": float(ts[i]), "tpr": float(tpr[i]), "fpr": float(fpr[i]),
            "accuracy": float(1.0 - ((1.0 - tpr[i]) + fpr[i]) / 2.0)}
