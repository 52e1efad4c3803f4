"""Every stored detector's verdict on one new image (the app's per-image panel).

>>> bank = DetectorBank.load(det.run)                  # doctest: +SKIP
>>> [v.trusted for v in bank.verdicts(det, image)]     # doctest: +SKIP
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.knn import index as knn_index
from core.knn import processing
from core.peers import store
from core.peers.base import Inputs, PeerDetector
from core.peers.fitting import ALL
from core.runs.folder import RunDir

if TYPE_CHECKING:
    from core.detector import Detector

__all__ = ["Verdict", "DetectorBank"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """One detector on one image: its score, its threshold (fit on every attack) and whether it trusts."""

    entry: str
    label: str
    score: float
    threshold: float
    trusted: bool


class DetectorBank:
    """The run's fitted detectors (their ``all`` fits) with their thresholds.

    Parameters
    ----------
    fitted : dict of entry -> (detector.json, PeerDetector)
    """

    def __init__(self, fitted: dict[str, tuple[dict[str, Any], PeerDetector]]):
        self.fitted = fitted
        self.last_timings: dict[str, float] = {}

    @classmethod
    def load(cls, run: RunDir) -> DetectorBank:
        """The detectors stored in ``run`` (none when the run predates the detectors stage)."""
        return cls({e: (m, store.load_fitted(run, e, ALL, meta=m)) for e, m in store.entries(run).items()})

    def __len__(self) -> int:
        return len(self.fitted)

    def inputs(self, det: Detector, image: Any) -> Inputs:
        """:class:`Inputs` of one image: one forward pass, one search per (layer, mode) the detectors need."""
        images = det.prepare(image)
        if len(images) != 1:
            raise ValueError(f"one image expected, got {len(images)}")
        probs, feats = det.forward(images)
        want: dict[tuple[str, str], int] = {}
        for _, d in self.fitted.values():
            for la, mo, k in d.needs():
                want[(la, mo)] = max(k, want.get((la, mo), 0))
        found = {}
        for (la, mo), k in want.items():
            params, index = det.processing_and_index(la, mo)
            D, I = knn_index.search(index, processing.apply(params, feats[la]), k)
            found[(la, mo)] = (I, D)

        def nb(layer: str, mode: str, k: int) -> tuple[np.ndarray, np.ndarray]:
            I, D = found[(layer, mode)]
            return I[:, :k], D[:, :k]

        return Inputs(probs.argmax(1), probs, feats, nb, det.train_labels)

    def verdicts(self, det: Detector, image: Any) -> list[Verdict]:
        """Each detector's verdict on ``image`` (anything :meth:`core.detector.Detector.prepare` takes)."""
        t0 = time.perf_counter()
        x = self.inputs(det, image)
        t1 = time.perf_counter()
        out = []
        for e, (meta, d) in self.fitted.items():
            s = float(d.score(x)[0])
            th = float(meta["fits"][ALL]["threshold"])
            trusted = s > th if meta["rule"] == "nearest_eer" else s >= th
            out.append(Verdict(e, meta["label"], s, th, bool(trusted)))
        self.last_timings = {"inputs": t1 - t0, "scores": time.perf_counter() - t1}
        return out
