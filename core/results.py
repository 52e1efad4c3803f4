"""What :class:`core.detector.Detector` returns: :class:`Scores` for a batch, :class:`Inspection` for one image.

Examples
--------
>>> import numpy as np
>>> s = Scores(np.array([3]), np.full((1, 10), 0.1, np.float32), {"conv3": np.array([0.9])},
...            {"mode": "l2", "fn": "count", "k": 100})
>>> s.scores["conv3"].shape
(1,)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Scores", "NeighbourList", "Inspection"]


@dataclass
class Scores:
    """Result of :meth:`Detector.score`.

    Attributes
    ----------
    predicted : int64 ndarray (N,)
        The CNN's predicted class of each image.
    probs : float32 ndarray (N, n_classes)
        Softmax probabilities.
    scores : dict str -> float64 ndarray (N,)
        Per tapped layer, the kNN score of the predicted class (higher = trust).
    settings : dict
        The ``mode``, ``fn`` and ``k`` used.
    """

    predicted: np.ndarray
    probs: np.ndarray
    scores: dict[str, np.ndarray]
    settings: dict[str, Any]


@dataclass
class NeighbourList:
    """Nearest training images of one query for one layer: ``ids`` int64 (n,), ``distances`` float32 (n,)
    (squared L2 in the processed space), ``labels`` int64 (n,)."""

    ids: np.ndarray
    distances: np.ndarray
    labels: np.ndarray


@dataclass
class Inspection(Scores):
    """Result of :meth:`Detector.inspect` (one image, N = 1).

    Attributes
    ----------
    image : uint8 ndarray (H, W, C)
        The image as the model sees it (resized, cropped, converted).
    top5 : list of (class id, probability)
    neighbours : dict layer -> NeighbourList   (nearest overall)
    class_neighbours : dict layer -> NeighbourList   (nearest of the predicted class)
    timings : dict stage -> seconds
        ``prepare`` (decode, resize), ``forward`` (the CNN with its taps), ``processing``, ``search`` (faiss)
        and ``scoring`` (scores and neighbour lists), summed over the layers.
    """

    image: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint8))
    top5: list[tuple[int, float]] = field(default_factory=list)
    neighbours: dict[str, NeighbourList] = field(default_factory=dict)
    class_neighbours: dict[str, NeighbourList] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
