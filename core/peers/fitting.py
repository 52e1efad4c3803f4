"""Which detectors a run gets, how each is fitted (leave-one-attack-out where supervised) and its threshold.

A supervised detector is fitted once per attack on the validation side without that attack's adversarials
(``fits[attack]``, the one reported against ``attack``) and once on every attack (``fits["all"]``, the one the
app applies to a new image). The threshold follows the run's protocol rule (:mod:`core.evaluation.operating_point`).
"""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from core.evaluation.metrics import threshold_at_tpr
from core.evaluation.operating_point import nearest_eer_threshold
from core.peers.base import Inputs, PeerDetector, TrainSet, Validation
from core.peers.methods import (
    LID,
    DeepKNN,
    KNNLayer,
    KNNLogistic,
    KNNMean,
    KthNeighbour,
    Mahalanobis,
    MaxSoftmax,
)

__all__ = ["DETECTOR_NAMES", "ALL", "RunLayout", "instances", "Fitted", "fit_all", "operating_threshold", "score_sets",
           "CLASSES"]

log = logging.getLogger(__name__)

#: Key of the fit on every validation attack.
ALL = "all"
#: Detector names accepted by ``[detectors] enabled``, in report order ("knn" is one entry per layer).
DETECTOR_NAMES = ("knn", "knn_lr", "knn_mean", "dknn", "mahalanobis", "lid", "knn_ood", "msp")
CLASSES: dict[str, type[PeerDetector]] = {c.name: c for c in (KNNLayer, KNNLogistic, KNNMean, DeepKNN, Mahalanobis,
                                                              LID, KthNeighbour, MaxSoftmax)}
#: The papers' k (capped by the run's k_max): Deep kNN 75, LID 20, k-th neighbour 50.
PAPER_K = {"dknn": 75, "lid": 20, "knn_ood": 50}


@dataclass(frozen=True)
class RunLayout:
    """What a run offers detectors: tapped layers, processing modes, the kNN defaults and k_max."""

    layers: list[str]
    modes: list[str]
    mode: str
    fn: str
    k: int
    k_max: int

    @property
    def raw_mode(self) -> str:
        """Mode of the neighbours Deep kNN and LID use: ``none`` (raw features) when the run has it."""
        return "none" if "none" in self.modes else self.mode


def instances(name: str, run: RunLayout) -> dict[str, PeerDetector]:
    """``{entry: detector}`` for config name ``name`` ("knn" gives ``knn-<layer>`` per layer); empty when the
    run lacks what it needs (``knn_ood`` without the ``l2`` mode)."""
    kk = {n: min(k, run.k_max) for n, k in PAPER_K.items()}
    if name == "knn":
        return {f"knn-{la}": KNNLayer(la, run.mode, run.fn, run.k) for la in run.layers}
    if name in ("knn_lr", "knn_mean"):
        return {name: CLASSES[name](run.layers, run.mode, run.fn, run.k)}
    if name == "dknn":
        return {name: DeepKNN(run.layers, run.raw_mode, kk["dknn"])}
    if name == "mahalanobis":
        return {name: Mahalanobis(run.layers)}
    if name == "lid":
        return {name: LID(run.layers, run.raw_mode, kk["lid"])}
    if name == "knn_ood":
        if "l2" not in run.modes:
            log.warning("knn_ood needs processing mode 'l2', which this run lacks: skipped")
            return {}
        return {name: KthNeighbour(run.layers[-1], kk["knn_ood"])}
    if name == "msp":
        return {name: MaxSoftmax()}
    raise ValueError(f"unknown detector {name!r}; use one of {list(DETECTOR_NAMES)}")


def operating_threshold(pos: np.ndarray, negs: Sequence[np.ndarray], rule: str, target_tpr: float) -> float:
    """Threshold of the protocol's ``rule`` from validation positives (n,) and, for ``nearest_eer``, the
    validation negatives the fit used (pooled)."""
    if rule == "target_tpr":
        return threshold_at_tpr(pos, target_tpr)
    return nearest_eer_threshold(pos, np.concatenate([np.ravel(n) for n in negs] or [np.zeros(0)]))["threshold"]


def _fresh(x: Inputs) -> Inputs:
    """``x`` without quantities other detectors computed on it (each detector's times are its own)."""
    return replace(x, memo={})


@dataclass
class Fitted:
    """One fit of a detector: the fitted detector, its validation threshold and its fit time (s)."""

    detector: PeerDetector
    threshold: float
    fit_s: float


def fit_all(det: PeerDetector, train: TrainSet, val: Validation, *, rule: str, target_tpr: float) -> dict[str, Fitted]:
    """Fit ``det``: ``{"all": ...}``, plus ``{attack: ...}`` fitted without ``attack`` for a supervised one.

    The threshold of each fit comes from the validation positives (those not used for calibration) and the
    validation attacks that fit saw.
    """
    val = Validation(_fresh(val.positives), {a: _fresh(x) for a, x in val.attacks.items()}, val.calibration)
    keep = ~np.asarray(val.calibration, bool) if det.calibrated and len(val.calibration) else \
        np.ones(len(val.positives), bool)
    out: dict[str, Fitted] = {}
    for held in [None, *(val.attacks if det.supervised else [])]:
        v = val.without(held)
        t0 = time.perf_counter()
        d = (copy.copy(det) if held is not None else det).fit(train, v)
        fit_s = time.perf_counter() - t0
        pos = d.score(v.positives)[keep]
        negs = [d.score(a) for a in v.attacks.values()] if rule != "target_tpr" else []
        out[ALL if held is None else held] = Fitted(d, operating_threshold(pos, negs, rule, target_tpr), fit_s)
    return out


def score_sets(det: PeerDetector, sets: Mapping[str, Inputs]) -> tuple[dict[str, np.ndarray], float]:
    """Scores (n_set,) of every set and the scoring time per image (ms)."""
    t0, n = time.perf_counter(), 0
    out = {}
    for s, x in sets.items():
        out[s] = det.score(_fresh(x)) if len(x) else np.zeros(0)
        n += len(x)
    return out, 1000.0 * (time.perf_counter() - t0) / max(n, 1)
