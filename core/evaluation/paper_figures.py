"""Detection figures of a run's evaluation sets, from stored neighbours (no search, no model): the paper's tables,
EER thresholds, separation curves, failure cases, perturbation norms.

Both the precompute report and the app use these, so a threshold, k or score-function change only
recomputes scores from the stored top-K_max neighbours. The data access lives in :mod:`core.evaluation.rundata`
(``RunData`` and the set names are re-exported here).
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from core.evaluation import metrics
from core.evaluation.rundata import ERRORS_SET, RunData
from core.knn import scoring

__all__ = ["FailureCase", "FailureCases", "Perturbation", "Separation", "Setting", "attack_rocs", "compared_rocs", "detection_row",
           "detection_table", "eer_thresholds", "failure_cases", "perturbation_norms", "rank_ties", "row_accuracy",
           "trusted_share"]

log = logging.getLogger(__name__)

def detection_row(data: RunData, layer: str, mode: str, fn: str, k: int) -> dict:
    """EER accuracy (and AUC, rejected at 95 % TPR) per attack, aggregated and for errors, for one setting.

    Returns
    -------
    dict
        ``{"layer", "mode", "fn", "k", "attacks": {name: {"eer_acc", "auc", "eer_threshold",
        "rejected_at_tpr95", "n"}}, "aggr": float, "errors": {...}}``; the aggregate is the mean of the
        attacks' EER accuracies weighted by set sizes (the paper's Aggr.).
    """
    pos = data.positives(layer, mode, fn, k)
    row: dict = {"layer": layer, "mode": mode, "fn": fn, "k": k, "attacks": {}}

    def entry(neg: np.ndarray) -> dict:
        r = metrics.roc(pos, neg)
        return {"eer_acc": r.eer_accuracy, "auc": r.auc, "eer_threshold": r.eer_threshold,
                "rejected_at_tpr95": metrics.rejected_at_tpr(pos, neg, 0.95), "n": int(len(neg))}

    for s in data.attack_sets:
        neg = data.scores(s, layer, mode, fn, k)
        if len(neg):
            row["attacks"][s] = entry(neg)
    row["aggr"] = metrics.aggregate([a["eer_acc"] for a in row["attacks"].values()],
                                    [a["n"] for a in row["attacks"].values()])
    if ERRORS_SET in data.set_names and len(data.evalset(ERRORS_SET)["predicted"]):
        row["errors"] = entry(data.scores(ERRORS_SET, layer, mode, fn, k))
    return row


def detection_table(data: RunData, *, k: int, layers: list[str] | None = None, modes: list[str] | None = None,
                    fns: list[str] | None = None) -> list[dict]:
    """:func:`detection_row` for every (layer, mode, fn) combination (Tables 2 and 4)."""
    return [detection_row(data, layer, mode, fn, k)
            for layer in (layers or data.layers) for mode in (modes or data.modes)
            for fn in (fns or list(scoring.SCORE_FNS))]


def row_accuracy(row: dict, column: str) -> float:
    """EER accuracy of a :func:`detection_row` for ``column``: an attack set, ``"aggr"`` or ``"errors"``
    (NaN when the row has none)."""
    if column == "aggr":
        return row["aggr"]
    if column == "errors":
        return row.get("errors", {}).get("eer_acc", np.nan)
    return row["attacks"].get(column, {}).get("eer_acc", np.nan)


# ------------------------------------------------------------------------------------------- thresholds
def eer_thresholds(data: RunData, mode: str, fn: str, k: int) -> dict[str, float]:
    """Per layer, the EER threshold of positives against every attack set.

    Authentic errors are the negatives when the run has no adversarial image.

    Returns
    -------
    dict
        ``{layer: threshold}``; 0.5 for a layer whose threshold is undefined (no negatives at all).
    """
    out = {}
    for layer in data.layers:
        pos = data.positives(layer, mode, fn, k)
        negs = [data.scores(s, layer, mode, fn, k) for s in data.attack_sets]
        if not sum(len(n) for n in negs) and ERRORS_SET in data.set_names:
            negs = [data.scores(ERRORS_SET, layer, mode, fn, k)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            th = metrics.roc(pos, np.concatenate(negs or [np.zeros(0)])).eer_threshold
        out[layer] = float(th) if np.isfinite(th) else 0.5
    return out


def trusted_share(scores: np.ndarray, grid: np.ndarray, *, strict: bool = False) -> np.ndarray:
    """Share of ``scores`` (n,) at or above (above when ``strict``) each threshold of ``grid`` (m,) -> (m,); NaN
    scores count as 0 (and no scores as all trusted)."""
    s = np.sort(np.nan_to_num(scores))
    return 1.0 - np.searchsorted(s, grid, side="right" if strict else "left") / max(len(s), 1)


class Separation:
    """Scores of the positives and of named negative sets at one setting, with their ROC and curves.

    Parameters
    ----------
    positives : sequence of ndarray (n_i,)
        Scores of the positive sets, concatenated in order.
    negatives : mapping of str to ndarray (m_j,)
        Scores of each negative set, in display order.
    """

    def __init__(self, positives: Sequence[np.ndarray], negatives: Mapping[str, np.ndarray]):
        self.positives = np.concatenate(list(positives) or [np.zeros(0)])
        self.negatives = dict(negatives)
        self.all_negatives = np.concatenate(list(self.negatives.values()) or [np.zeros(0)])

    @property
    def groups(self) -> list[np.ndarray]:
        """Positives, then each negative set."""
        return [self.positives, *self.negatives.values()]

    @cached_property
    def roc(self) -> metrics.Roc:
        """:func:`core.evaluation.metrics.roc` of the positives against every negative."""
        return metrics.roc(self.positives, self.all_negatives)

    @property
    def eer_threshold(self) -> float:
        """The EER threshold clipped to [0, 1]."""
        return float(np.clip(self.roc.eer_threshold, 0, 1))

    def at(self, threshold: float, *, strict: bool = False) -> dict[str, float]:
        """:func:`core.evaluation.metrics.rates_at` of the positives against every negative."""
        return metrics.rates_at(self.positives, self.all_negatives, threshold, strict=strict)

    def densities(self, bins: int = 40) -> tuple[np.ndarray, list[np.ndarray]]:
        """Score densities on ``bins`` equal bins of [0, 1].

        Returns
        -------
        centres : ndarray (bins,)
        densities : list of ndarray (bins,)
            One per group of :attr:`groups` (NaN scores count as 0).
        """
        edges = np.linspace(0, 1, bins + 1)
        return ((edges[:-1] + edges[1:]) / 2,
                [np.histogram(np.nan_to_num(sc), bins=edges, density=True)[0] for sc in self.groups])

    def trusted_shares(self, points: int = 501, *, strict: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
        """:func:`trusted_share` of each group of :attr:`groups` on ``points`` thresholds of [0, 1] (``strict``: the
        rule ``score > threshold``).

        Returns
        -------
        grid : ndarray (points,)
        shares : list of ndarray (points,)
        """
        grid = np.linspace(0, 1, points)
        return grid, [trusted_share(sc, grid, strict=strict) for sc in self.groups]


# ------------------------------------------------------------------------------------------ comparisons
#: A scoring setting: (layer, processing mode, score function, k).
Setting = tuple[str, str, str, int]


def compared_rocs(data: RunData, settings: Sequence[Setting], negatives: Sequence[str]) -> list[metrics.Roc]:
    """One ROC per setting: the positives against the sets ``negatives`` pooled (as the Threshold page).

    Returns
    -------
    list of Roc
        In the order of ``settings``.
    """
    out = []
    for layer, mode, fn, k in settings:
        neg = np.concatenate([data.scores(s, layer, mode, fn, k) for s in negatives] or [np.zeros(0)])
        out.append(metrics.roc(data.positives(layer, mode, fn, k), neg))
    return out


def attack_rocs(data: RunData, setting: Setting, attacks: Sequence[str]) -> dict[str, metrics.Roc]:
    """Per attack set (non-empty ones), the ROC of the positives against that attack alone at ``setting``."""
    layer, mode, fn, k = setting
    pos = data.positives(layer, mode, fn, k)
    negs = {a: data.scores(a, layer, mode, fn, k) for a in attacks}
    return {a: metrics.roc(pos, n) for a, n in negs.items() if len(n)}


# -------------------------------------------------------------------------------------------- failures
@dataclass(frozen=True)
class FailureCase:
    """One adversarial image: set, index, score, true and predicted class, and the nearest training image of the
    predicted class (``(id, squared distance)``: from its stored neighbours, else from a search within the class;
    None when neither finds one)."""

    set: str
    index: int
    score: float
    true: int
    predicted: int
    nearest: tuple[int, float] | None


@dataclass(frozen=True)
class FailureCases:
    """Adversarial images at the EER threshold: ``caught`` (lowest scores first) and ``missed`` (highest first),
    at most ``n`` each, with the counts over every image."""

    threshold: float
    caught: list[FailureCase]
    missed: list[FailureCase]
    n_caught: int
    n_total: int


#: ``nearest(set, index, cls)``: the nearest training image of class ``cls`` to image ``index`` of ``set``.
NearestOfClass = Callable[[str, int, int], "tuple[int, float] | None"]


def rank_ties(items: Sequence[tuple[str, int, float, float]], *, descending: bool) -> list[tuple[str, int, float]]:
    """Order ``(set, index, score, distance)`` items by score; equal scores by distance (far first when
    ``descending`` is False, i.e. the surest catches; near first otherwise), taken round-robin over the sets.

    Returns
    -------
    list of (set, index, score)
    """
    sign = -1.0 if descending else 1.0
    out: list[tuple[str, int, float]] = []
    by_score: dict[float, list[tuple[str, int, float, float]]] = {}
    for x in items:
        by_score.setdefault(x[2], []).append(x)
    for score in sorted(by_score, key=lambda v: sign * v):
        queues: dict[str, list] = {x[0]: [] for x in by_score[score]}  # the sets in their given order
        for x in sorted(by_score[score], key=lambda x: -sign * x[3]):  # stable: set, then index order
            queues[x[0]].append(x)
        lists = list(queues.values())
        for j in range(max(len(q) for q in lists)):
            out.extend(q[j][:3] for q in lists if j < len(q))
    return out


def failure_cases(data: RunData, layer: str, mode: str, fn: str, k: int, attacks: Sequence[str],
                  n: int, *, threshold: float | None = None, strict: bool = False,
                  nearest: NearestOfClass | None = None) -> FailureCases:
    """Rank the adversarial images of ``attacks`` at ``threshold`` (default: the EER threshold of positives against
    all of them, paper Table 3); trusted means ``score >= threshold`` (``>`` when ``strict``). NaN scores count
    as 0; equal scores are ordered by :func:`rank_ties` on the distance to the nearest stored training neighbour.

    Parameters
    ----------
    nearest : callable, optional, keyword-only
        Search within the predicted class (``(set, index, cls) -> (id, d²) or None``), used when none of the
        image's stored neighbours has that class.
    """
    per_set = {a: data.scores(a, layer, mode, fn, k) for a in attacks}
    if threshold is None:
        pos = data.positives(layer, mode, fn, k)
        th = float(metrics.roc(pos, np.concatenate(list(per_set.values()))).eer_threshold)
    else:
        th = float(threshold)
    items = []
    for a, sc in per_set.items():
        D = data.neighbours(a, layer, mode).D
        d0 = D[:, 0] if D.ndim == 2 and D.shape[1] else np.zeros(len(sc))
        items += [(a, i, float(s), float(d)) for i, (s, d) in enumerate(zip(np.nan_to_num(sc), d0))]
    caught = rank_ties([x for x in items if (x[2] <= th if strict else x[2] < th)], descending=False)
    missed = rank_ties([x for x in items if (x[2] > th if strict else x[2] >= th)], descending=True)

    def case(name: str, i: int, score: float) -> FailureCase:
        e = data.evalset(name)
        pred = int(e["predicted"][i])
        hit = data.nearest_of_class(name, i, layer, mode, pred)
        if hit is None and nearest is not None:
            hit = nearest(name, i, pred)
        return FailureCase(name, i, score, int(e["true"][i]), pred, hit)

    return FailureCases(th, [case(*x) for x in caught[:n]], [case(*x) for x in missed[:n]], len(caught), len(items))


# --------------------------------------------------------------------------------------------- attacks
@dataclass(frozen=True)
class Perturbation:
    """Per image of a batch: ``l2`` and ``linf`` norms of the change on the [0, 1] pixel scale and the share of
    values ``changed``, each (n,)."""

    l2: np.ndarray
    linf: np.ndarray
    changed: np.ndarray


def perturbation_norms(original: np.ndarray, adversarial: np.ndarray) -> Perturbation:
    """Perturbation of uint8 images ``adversarial`` (n, H, W, C) from ``original`` (n, H, W, C)."""
    n = len(adversarial)
    d = (np.asarray(adversarial, np.float64) - np.asarray(original, np.float64)).reshape(n, -1)
    l2 = np.array([np.linalg.norm(row) for row in d / 255], np.float64)  # one image as np.linalg.norm flattens it
    return Perturbation(l2, np.abs(d).max(axis=1) / 255, (d != 0).mean(axis=1))
