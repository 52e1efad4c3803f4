"""The peer detectors, one small class each (higher score = trust the CNN's prediction).

See docs/design.md#detectors for the papers' choices kept and changed.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from core.knn import scoring
from core.peers.base import Inputs, LogisticLayer, PeerDetector, TrainSet, Validation

__all__ = ["KNNLayer", "KNNMean", "KNNLogistic", "DeepKNN", "Mahalanobis", "LID", "KthNeighbour", "MaxSoftmax",
           "LOG_FLOOR"]

log = logging.getLogger(__name__)

#: kNN scores are floored here before the log (a score of 0: no neighbour of the predicted class).
LOG_FLOOR = 1e-4


def _knn_scores(x: Inputs, layer: str, mode: str, fn: str, k: int) -> np.ndarray:
    def compute() -> np.ndarray:
        I, D = x.neighbours(layer, mode, k)
        return np.nan_to_num(scoring.score(I, D, x.train_labels, x.predicted, k=k, fn=fn), nan=0.0)

    return x.cached(("knn", layer, mode, fn, int(k)), compute)


class KNNLayer(PeerDetector):
    """The paper's kNN score of the predicted class at one layer (:func:`core.knn.scoring.score`)."""

    name = "knn"
    label = "kNN, one layer (Carrara et al. 2018)"

    def __init__(self, layer: str, mode: str, fn: str, k: int):
        self.layer, self.mode, self.fn, self.k = layer, mode, fn, int(k)

    def params(self) -> dict[str, Any]:
        return {"layer": self.layer, "mode": self.mode, "fn": self.fn, "k": self.k}

    def needs(self) -> list[tuple[str, str, int]]:
        return [(self.layer, self.mode, self.k)]

    def score(self, x: Inputs) -> np.ndarray:
        return _knn_scores(x, self.layer, self.mode, self.fn, self.k)


class _LogisticOverFeatures(PeerDetector):
    """A logistic regression over per-item ``features`` (N, f), fitted on the validation positives against the
    validation adversarials it is given; the score is its logit."""

    supervised = True

    def features(self, x: Inputs) -> np.ndarray:
        raise NotImplementedError

    def fit(self, train: TrainSet, val: Validation) -> _LogisticOverFeatures:
        self.lr = LogisticLayer().fit_on(val, self.features)
        return self

    def score(self, x: Inputs) -> np.ndarray:
        return self.lr.decision(self.features(x))

    def state(self) -> dict[str, np.ndarray]:
        return self.lr.state()

    def load_state(self, state: Mapping[str, np.ndarray]) -> _LogisticOverFeatures:
        self.lr = LogisticLayer().load_state(state)
        return self


class _KNNLayers(PeerDetector):
    def __init__(self, layers: Sequence[str], mode: str, fn: str, k: int):
        self.layers, self.mode, self.fn, self.k = list(layers), mode, fn, int(k)

    def params(self) -> dict[str, Any]:
        return {"layers": self.layers, "mode": self.mode, "fn": self.fn, "k": self.k}

    def needs(self) -> list[tuple[str, str, int]]:
        return [(la, self.mode, self.k) for la in self.layers]

    def log_scores(self, x: Inputs) -> np.ndarray:
        """Per-layer ``log(max(score, LOG_FLOOR))``, float64 (N, n_layers)."""
        s = np.stack([_knn_scores(x, la, self.mode, self.fn, self.k) for la in self.layers], axis=1)
        return np.log(np.maximum(s, LOG_FLOOR))


class KNNMean(_KNNLayers):
    """Every layer's kNN score combined without supervision: the mean of the per-layer log-scores."""

    name = "knn_mean"
    label = "kNN, all layers: mean log-score (unsupervised)"

    def score(self, x: Inputs) -> np.ndarray:
        return self.log_scores(x).mean(axis=1)


class KNNLogistic(_LogisticOverFeatures, _KNNLayers):
    """Every layer's kNN score combined by a logistic regression over the per-layer log-scores, fitted on the
    validation positives against the validation adversarials it is given."""

    name = "knn_lr"
    label = "kNN, all layers: logistic regression (trained on other attacks)"

    def features(self, x: Inputs) -> np.ndarray:
        return self.log_scores(x)


class DeepKNN(PeerDetector):
    """Deep k-Nearest Neighbours (Papernot & McDaniel 2018).

    Nonconformity of class j: the number of the k nearest training neighbours not labelled j, summed over the
    layers. Calibration: the nonconformity of held-out validation positives for their class. Score: the
    empirical p-value of the CNN's predicted class, the share of calibration values >= its nonconformity (the
    DkNN's credibility when it agrees with the CNN).
    """

    name = "dknn"
    label = "Deep kNN (Papernot & McDaniel 2018)"
    calibrated = True

    def __init__(self, layers: Sequence[str], mode: str, k: int = 75):
        self.layers, self.mode, self.k = list(layers), mode, int(k)
        self.calibration = np.zeros(0)

    def params(self) -> dict[str, Any]:
        return {"layers": self.layers, "mode": self.mode, "k": self.k}

    def needs(self) -> list[tuple[str, str, int]]:
        return [(la, self.mode, self.k) for la in self.layers]

    def nonconformity(self, x: Inputs) -> np.ndarray:
        """Float64 (N,): neighbours over all layers whose label differs from the predicted class."""
        a = np.zeros(len(x))
        for la in self.layers:
            I, _ = x.neighbours(la, self.mode, self.k)
            a += np.count_nonzero(x.train_labels[I[:, :self.k]] != x.predicted[:, None], axis=1)
        return a

    def fit(self, train: TrainSet, val: Validation) -> DeepKNN:
        cal = np.asarray(val.calibration, bool)
        if not cal.any():
            raise ValueError("Deep kNN needs calibration positives (Validation.calibration)")
        self.calibration = np.sort(self.nonconformity(val.positives)[cal])
        return self

    def score(self, x: Inputs) -> np.ndarray:
        a = self.nonconformity(x)
        return (len(self.calibration) - np.searchsorted(self.calibration, a, side="left")) / len(self.calibration)

    def state(self) -> dict[str, np.ndarray]:
        return {"calibration": self.calibration}

    def load_state(self, state: Mapping[str, np.ndarray]) -> DeepKNN:
        self.calibration = np.asarray(state["calibration"], np.float64)
        return self


class Mahalanobis(PeerDetector):
    """Mahalanobis confidence (Lee et al. 2018) without input preprocessing.

    Per layer: class means of the training features and one tied covariance; the layer's score is minus the
    squared Mahalanobis distance to the predicted class's mean. The layers are combined by a logistic
    regression fitted on the validation positives against the validation adversarials it is given.
    """

    name = "mahalanobis"
    label = "Mahalanobis (Lee et al. 2018, no input preprocessing; trained on other attacks)"
    supervised = True

    def __init__(self, layers: Sequence[str]):
        self.layers = list(layers)
        self.means: dict[str, np.ndarray] = {}
        self.precision: dict[str, np.ndarray] = {}

    def params(self) -> dict[str, Any]:
        return {"layers": self.layers}

    def fit_gaussians(self, train: TrainSet) -> Mahalanobis:
        """Class means (n_classes, d) and the tied precision (d, d) of every layer from the training features."""
        y = np.asarray(train.labels)
        classes = np.arange(int(y.max()) + 1)
        for la in self.layers:
            X = np.asarray(train.features(la), np.float64)
            mu = np.stack([X[y == c].mean(0) if (y == c).any() else np.zeros(X.shape[1]) for c in classes])
            R = X - mu[y]
            cov = R.T @ R / len(X)
            self.means[la], self.precision[la] = mu, np.linalg.pinv(cov, hermitian=True)
        return self

    def layer_scores(self, x: Inputs) -> np.ndarray:
        """Float64 (N, n_layers): minus the squared Mahalanobis distance to the predicted class's mean."""
        out = []
        for la in self.layers:
            R = np.asarray(x.features[la], np.float64) - self.means[la][x.predicted]
            out.append(-np.einsum("nd,de,ne->n", R, self.precision[la], R))
        return np.stack(out, axis=1)

    def fit(self, train: TrainSet, val: Validation) -> Mahalanobis:
        if not self.means:
            self.fit_gaussians(train)
        self.lr = LogisticLayer().fit_on(val, self.layer_scores)
        return self

    def score(self, x: Inputs) -> np.ndarray:
        return self.lr.decision(self.layer_scores(x))

    def state(self) -> dict[str, np.ndarray]:
        s = self.lr.state()
        for i, la in enumerate(self.layers):
            s[f"mean_{i}"], s[f"precision_{i}"] = self.means[la], self.precision[la]
        return s

    def load_state(self, state: Mapping[str, np.ndarray]) -> Mahalanobis:
        self.lr = LogisticLayer().load_state(state)
        for i, la in enumerate(self.layers):
            self.means[la], self.precision[la] = np.asarray(state[f"mean_{i}"]), np.asarray(state[f"precision_{i}"])
        return self


def lid_mle(D: np.ndarray, k: int) -> np.ndarray:
    """Maximum-likelihood LID (Ma et al. 2018) from squared distances ``D`` (N, >= k), nearest first -> (N,).

    ``LID = -1 / mean_i log(r_i / r_k)`` over the k nearest distances ``r`` (not squared); ``inf`` when all k
    distances are equal.
    """
    r = np.sqrt(np.maximum(np.asarray(D[:, :k], np.float64), 1e-24))
    m = np.log(r / r[:, -1:]).mean(axis=1)
    with np.errstate(divide="ignore"):
        return np.where(m < 0, -1.0 / m, np.inf)


class LID(_LogisticOverFeatures):
    """Local intrinsic dimensionality (Ma et al. 2018) per layer from the k nearest training features, combined
    by a logistic regression fitted on the validation positives against the validation adversarials given."""

    name = "lid"
    label = "LID (Ma et al. 2018; trained on other attacks)"

    def __init__(self, layers: Sequence[str], mode: str, k: int = 20):
        self.layers, self.mode, self.k = list(layers), mode, int(k)

    def params(self) -> dict[str, Any]:
        return {"layers": self.layers, "mode": self.mode, "k": self.k}

    def needs(self) -> list[tuple[str, str, int]]:
        return [(la, self.mode, self.k) for la in self.layers]

    def lids(self, x: Inputs) -> np.ndarray:
        """Float64 (N, n_layers), infinite values capped at 1e6."""
        return np.minimum(np.stack([lid_mle(x.neighbours(la, self.mode, self.k)[1], self.k) for la in self.layers],
                                   axis=1), 1e6)

    def features(self, x: Inputs) -> np.ndarray:
        return self.lids(x)


class KthNeighbour(PeerDetector):
    """Deep nearest neighbours for OOD (Sun et al. 2022): minus the L2 distance to the k-th nearest training
    neighbour of the L2-normalised penultimate features (processing mode ``l2``)."""

    name = "knn_ood"
    label = "k-th neighbour distance (Sun et al. 2022)"

    def __init__(self, layer: str, k: int = 50, mode: str = "l2"):
        self.layer, self.k, self.mode = layer, int(k), mode

    def params(self) -> dict[str, Any]:
        return {"layer": self.layer, "k": self.k, "mode": self.mode}

    def needs(self) -> list[tuple[str, str, int]]:
        return [(self.layer, self.mode, self.k)]

    def score(self, x: Inputs) -> np.ndarray:
        _, D = x.neighbours(self.layer, self.mode, self.k)
        return -np.sqrt(np.maximum(np.asarray(D[:, self.k - 1], np.float64), 0.0))


class MaxSoftmax(PeerDetector):
    """Maximum softmax probability (Hendrycks & Gimpel 2017)."""

    name = "msp"
    label = "max softmax probability (Hendrycks & Gimpel 2017)"

    def score(self, x: Inputs) -> np.ndarray:
        return np.asarray(x.probs, np.float64).max(axis=1)

