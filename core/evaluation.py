"""Scores and detection tables of a run's evaluation sets, from stored neighbours (no search, no model).

Both the precompute report and the app use these, so a threshold, k or score-function change only
recomputes scores from the stored top-K_max neighbours.

Set roles (the paper's protocol): ``authentic`` and ``noise`` are positives (correct predictions to trust);
each adversarial set is a negative set; ``errors`` (authentic, misclassified) is the "Errors" column.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from core import metrics, scoring
from core.artefacts import RunDir

__all__ = ["POSITIVE_SETS", "ERRORS_SET", "RunData", "SetNeighbours", "detection_row", "detection_table"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def _read_only(arrays: _T) -> _T:
    """Mark an array, or every array of a dict of them, read-only (in place) and return it: shared data that a
    caller changes by mistake raises instead of changing what other users see."""
    for a in arrays.values() if isinstance(arrays, dict) else [arrays]:
        if isinstance(a, np.ndarray):
            a.flags.writeable = False
    return arrays


POSITIVE_SETS = ("authentic", "noise")
ERRORS_SET = "errors"


@dataclass(frozen=True)
class SetNeighbours:
    """Stored neighbours of one evaluation set for one (layer, mode): ``I`` int32 (n, K), ``D`` float32 (n, K)."""

    I: np.ndarray
    D: np.ndarray


class RunData:
    """Read-only view of a finished run's evaluation data (sets, neighbours, labels), loaded on demand.

    Parameters
    ----------
    run : RunDir or path
    verify : bool
        Check each file's sha256 against the manifest when it is first loaded.
    """

    def __init__(self, run: RunDir | str, *, verify: bool = True):
        self.run = run if isinstance(run, RunDir) else RunDir(run)
        self.verify = verify
        m = self.run.manifest
        self.summary: dict = m.get("summary", {})
        self.config: dict = m.get("config", {})
        self._sets: dict[str, dict[str, np.ndarray]] = {}
        self._nb: dict[tuple[str, str, str], SetNeighbours] = {}
        self._lock = threading.Lock()  # one load per file however many threads ask at once
        self.train_labels = _read_only(self.run.load_npy("train_labels.npy", verify=verify))

    def _once(self, cache: dict, key: Any, load: Callable[[], Any]) -> Any:
        """``cache[key]``, loaded by ``load()`` the first time under the lock (thread-safe, loaded once)."""
        hit = cache.get(key)
        if hit is None:
            with self._lock:
                hit = cache.get(key)
                if hit is None:
                    hit = cache[key] = load()
        return hit

    @property
    def set_names(self) -> list[str]:
        """Evaluation sets in report order: authentic, noise, errors, then the attacks as configured."""
        present = list(self.summary.get("sets", {}))
        cfg = self.config
        order = ["authentic", "noise", "errors", *cfg.get("evalsets", {}).get("attacks", []),
                 *cfg.get("external", {})]
        return [s for s in order if s in present] + [s for s in present if s not in order]

    @property
    def attack_sets(self) -> list[str]:
        return [s for s in self.set_names if s not in POSITIVE_SETS and s != ERRORS_SET]

    @property
    def layers(self) -> list[str]:
        return list(self.summary.get("layers", []))

    @property
    def modes(self) -> list[str]:
        return list(self.summary.get("modes", []))

    def train_image(self, i: int) -> np.ndarray | None:
        """Training image ``i`` as uint8 (H, W, C): from ``train_images.npy`` when the run keeps the training
        images, else its stored JPEG thumbnail (``thumbs/bank.npz``); None if neither has it."""
        store = self._once(self._sets, "train_images", lambda: (
            {"images": self.run.load_npy("train_images.npy", mmap=True, verify=self.verify)}
            if self.run.is_recorded("train_images.npy") else
            _read_only(self.run.load_npz("thumbs/bank.npz", verify=self.verify))
            if self.run.is_recorded("thumbs/bank.npz") else {}))
        if "images" in store:
            return np.asarray(store["images"][i])
        if "ids" in store:
            j = int(np.searchsorted(store["ids"], i))
            if j < len(store["ids"]) and store["ids"][j] == i:
                import io

                from PIL import Image

                raw = store["data"][store["offsets"][j]:store["offsets"][j + 1]].tobytes()
                arr = np.asarray(Image.open(io.BytesIO(raw), formats=["JPEG"]))  # L or RGB, as stored
                return arr[..., None] if arr.ndim == 2 else arr
        return None

    def evalset(self, name: str) -> dict[str, np.ndarray]:
        """Arrays of set ``name``: images uint8 (n, H, W, C), true, predicted, target, source (n,).

        Shared by every caller (the app's sessions) and read-only: copy an array before changing it.
        """
        return self._once(self._sets, name,
                          lambda: _read_only(self.run.load_npz(f"evalsets/{name}.npz", verify=self.verify)))

    def neighbours(self, name: str, layer: str, mode: str) -> SetNeighbours:
        """Stored neighbours of set ``name`` for ``layer`` and processing ``mode``."""
        def load() -> SetNeighbours:
            z = _read_only(self.run.load_npz(f"neighbours/{name}/{layer}-{mode}.npz", verify=self.verify))
            return SetNeighbours(z["I"], z["D"])

        return self._once(self._nb, (name, layer, mode), load)

    def scores(self, name: str, layer: str, mode: str, fn: str, k: int) -> np.ndarray:
        """kNN scores (n,) of the predicted class for every image of set ``name``."""
        nb = self.neighbours(name, layer, mode)
        return scoring.score(nb.I, nb.D, self.train_labels, self.evalset(name)["predicted"], k=k, fn=fn)

    def positives(self, layer: str, mode: str, fn: str, k: int) -> np.ndarray:
        """Scores of every positive (authentic and noise) image, concatenated."""
        return np.concatenate([self.scores(s, layer, mode, fn, k) for s in POSITIVE_SETS if s in self.set_names])


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
