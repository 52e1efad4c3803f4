"""What every peer detector reads and the interface it implements.

A detector is fitted on the training features and labels and on the validation side of a run's split, then
scores images: ``score(inputs) -> (N,)``, higher = trust the CNN's prediction. See docs/design.md#detectors.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

__all__ = ["Inputs", "TrainSet", "Validation", "PeerDetector", "LogisticLayer", "concat_inputs", "subset_inputs"]

log = logging.getLogger(__name__)

#: ``(layer, mode, k) -> (I int (N, k), D float (N, k))``: the k nearest training neighbours (squared L2
#: distances, nearest first) of the images, in the run's processing ``mode``.
NeighbourFn = Callable[[str, str, int], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Inputs:
    """What detectors read about N images.

    Attributes
    ----------
    predicted : int ndarray (N,)
        The CNN's predicted classes.
    probs : float ndarray (N, n_classes)
        Softmax probabilities.
    features : mapping of layer -> float ndarray (N, d_layer)
        Raw (unprocessed) features of the tapped layers.
    neighbours : callable
        ``(layer, mode, k) -> (I (N, k), D (N, k))``.
    train_labels : int ndarray (n_train,)
    """

    predicted: np.ndarray
    probs: np.ndarray
    features: Mapping[str, np.ndarray]
    neighbours: NeighbourFn
    train_labels: np.ndarray
    memo: dict = field(default_factory=dict, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.predicted)

    def cached(self, key: tuple, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """``compute()``, kept under ``key`` for the life of these inputs (several detectors share a quantity)."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]


def concat_inputs(parts: list[Inputs]) -> Inputs:
    """The images of several :class:`Inputs` (same run) as one, in order."""
    if len(parts) == 1:
        return parts[0]

    def nb(layer: str, mode: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        got = [p.neighbours(layer, mode, k) for p in parts]
        return np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])

    layers = parts[0].features.keys()
    return Inputs(np.concatenate([p.predicted for p in parts]), np.concatenate([p.probs for p in parts]),
                  {la: np.concatenate([p.features[la] for p in parts]) for la in layers}, nb,
                  parts[0].train_labels)


def subset_inputs(x: Inputs, mask: np.ndarray) -> Inputs:
    """The images of ``x`` where bool ``mask`` (N,) is set."""
    mask = np.asarray(mask, bool)

    def nb(layer: str, mode: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        I, D = x.neighbours(layer, mode, k)
        return I[mask], D[mask]

    return Inputs(x.predicted[mask], x.probs[mask], {la: f[mask] for la, f in x.features.items()}, nb,
                  x.train_labels)


@dataclass(frozen=True)
class TrainSet:
    """The training side: labels (n_train,) and ``features(layer) -> (n_train, d)`` (may be memory-mapped)."""

    labels: np.ndarray
    features: Callable[[str], np.ndarray]


@dataclass(frozen=True)
class Validation:
    """The validation side of the split.

    Attributes
    ----------
    positives : Inputs
        Validation positives (images to trust).
    attacks : mapping of attack -> Inputs
        Validation adversarials per attack.
    calibration : bool ndarray (n_pos,)
        Positives held out for calibration (Deep kNN); the others set thresholds.
    """

    positives: Inputs
    attacks: Mapping[str, Inputs]
    calibration: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    def without(self, attack: str | None) -> Validation:
        """This validation side with ``attack``'s adversarials removed (None: unchanged)."""
        if attack is None:
            return self
        return replace(self, attacks={a: v for a, v in self.attacks.items() if a != attack})


class PeerDetector:
    """A detector: ``fit`` on training and validation data, ``score`` images (higher = trust).

    Subclasses set ``name``, ``label`` and ``supervised`` (fitted on validation adversarials, so reported
    leave-one-attack-out), keep their fitted statistics in ``state()`` (arrays only) and rebuild from it.
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    supervised: ClassVar[bool] = False
    calibrated: ClassVar[bool] = False

    def fit(self, train: TrainSet, val: Validation) -> PeerDetector:
        """Fit on the training side and the validation side; returns self."""
        return self

    def score(self, x: Inputs) -> np.ndarray:
        """Trust scores float64 (N,) of ``x`` (higher = trust)."""
        raise NotImplementedError

    def needs(self) -> list[tuple[str, str, int]]:
        """The ``(layer, mode, k)`` neighbour searches :meth:`score` makes."""
        return []

    def params(self) -> dict[str, Any]:
        """Constructor arguments."""
        return {}

    def state(self) -> dict[str, np.ndarray]:
        """Fitted statistics (arrays, no objects)."""
        return {}

    def load_state(self, state: Mapping[str, np.ndarray]) -> PeerDetector:
        """Set the fitted statistics from :meth:`state`; returns self."""
        return self


class LogisticLayer:
    """A standardised logistic regression: trusted (label 1) against rejected (0) items, scored by its logit."""

    def __init__(self) -> None:
        self.mean = self.scale = self.coef = np.zeros(0)
        self.intercept = 0.0

    def fit(self, pos: np.ndarray, neg: np.ndarray) -> LogisticLayer:
        """Fit on ``pos`` (n_pos, f) and ``neg`` (n_neg, f), classes weighted equally.

        Raises
        ------
        ValueError
            If either side is empty.
        """
        from sklearn.linear_model import LogisticRegression

        if not len(pos) or not len(neg):
            raise ValueError(f"logistic regression needs both classes ({len(pos)} trusted, {len(neg)} rejected)")
        X = np.vstack([pos, neg]).astype(np.float64)
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        self.mean = X.mean(0)
        self.scale = np.where(X.std(0) > 0, X.std(0), 1.0)
        lr = LogisticRegression(max_iter=2000, class_weight="balanced").fit((X - self.mean) / self.scale, y)
        self.coef, self.intercept = lr.coef_[0].astype(np.float64), float(lr.intercept_[0])
        return self

    def fit_on(self, val: Validation, features: Callable[[Inputs], np.ndarray]) -> LogisticLayer:
        """Fit on ``features`` (n, f) of the validation positives against those of every attack's validation
        adversarials in ``val`` (the caller leaves the tested attack out)."""
        pos = features(val.positives)
        neg = [features(v) for v in val.attacks.values() if len(v)]
        return self.fit(pos, np.vstack(neg) if neg else np.zeros((0, pos.shape[1])))

    def decision(self, X: np.ndarray) -> np.ndarray:
        """Logits (n,) of ``X`` (n, f)."""
        return ((np.asarray(X, np.float64) - self.mean) / self.scale) @ self.coef + self.intercept

    def state(self, prefix: str = "lr_") -> dict[str, np.ndarray]:
        return {f"{prefix}mean": self.mean, f"{prefix}scale": self.scale, f"{prefix}coef": self.coef,
                f"{prefix}intercept": np.float64(self.intercept)}

    def load_state(self, s: Mapping[str, np.ndarray], prefix: str = "lr_") -> LogisticLayer:
        self.mean, self.scale = np.asarray(s[f"{prefix}mean"]), np.asarray(s[f"{prefix}scale"])
        self.coef, self.intercept = np.asarray(s[f"{prefix}coef"]), float(s[f"{prefix}intercept"])
        return self
