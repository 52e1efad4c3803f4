"""Scores and detection tables of a run's evaluation sets, from stored neighbours (no search, no model).

Both the precompute report and the app use these, so a threshold, k or score-function change only
recomputes scores from the stored top-K_max neighbours.

Set roles (the paper's protocol): ``authentic`` and ``noise`` are positives (correct predictions to trust);
each adversarial set is a negative set; ``errors`` (authentic, misclassified) is the "Errors" column.
"""
from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

import numpy as np

from core import metrics, scoring
from core.artefacts import RunDir

__all__ = ["POSITIVE_SETS", "ERRORS_SET", "FailureCase", "FailureCases", "Perturbation", "RestrictedRunData",
           "RunData", "Separation",
           "SetNeighbours", "best_layer", "best_setting", "detection_row", "detection_table", "eer_thresholds",
           "failure_cases", "perturbation_norms", "row_accuracy", "trusted_share"]

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
    neighbours_from : callable, optional
        ``(set, layer, mode) -> SetNeighbours`` used instead of the stored neighbour files (e.g. a search of
        another index); its results are kept like loaded files.
    """

    def __init__(self, run: RunDir | str, *, verify: bool = True,
                 neighbours_from: Callable[[str, str, str], SetNeighbours] | None = None):
        self.run = run if isinstance(run, RunDir) else RunDir(run)
        self.verify = verify
        self._neighbours_from = neighbours_from
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
        """Stored neighbours of set ``name`` for ``layer`` and processing ``mode`` (or ``neighbours_from``'s)."""
        def load() -> SetNeighbours:
            if self._neighbours_from is not None:
                return self._neighbours_from(name, layer, mode)
            z = _read_only(self.run.load_npz(f"neighbours/{name}/{layer}-{mode}.npz", verify=self.verify))
            return SetNeighbours(z["I"], z["D"])

        return self._once(self._nb, (name, layer, mode), load)

    def loaded_neighbours(self) -> Iterator[tuple[tuple[str, str, str], SetNeighbours]]:
        """``((set, layer, mode), neighbours)`` of every neighbour array loaded so far."""
        return iter(list(self._nb.items()))

    def nearest_of_class(self, name: str, index: int, layer: str, mode: str, cls: int) -> tuple[int, float] | None:
        """Nearest stored training neighbour of class ``cls`` of image ``index`` of set ``name``.

        Returns
        -------
        (int, float) or None
            Training id and squared distance; None when no neighbour of the K_max stored has class ``cls``.
        """
        nb = self.neighbours(name, layer, mode)
        hit = np.flatnonzero(self.train_labels[nb.I[index]] == cls)
        return (int(nb.I[index, hit[0]]), float(nb.D[index, hit[0]])) if len(hit) else None

    def scores(self, name: str, layer: str, mode: str, fn: str, k: int) -> np.ndarray:
        """kNN scores (n,) of the predicted class for every image of set ``name``."""
        nb = self.neighbours(name, layer, mode)
        return scoring.score(nb.I, nb.D, self.train_labels, self.evalset(name)["predicted"], k=k, fn=fn)

    #: Sets whose images are positives (images to trust).
    positive_sets: tuple[str, ...] = POSITIVE_SETS

    def positives(self, layer: str, mode: str, fn: str, k: int) -> np.ndarray:
        """Scores of every positive image (of :attr:`positive_sets`), concatenated."""
        return np.concatenate([self.scores(s, layer, mode, fn, k) for s in self.positive_sets
                               if s in self.set_names] or [np.zeros(0)])

    def restricted(self, sources: np.ndarray, positives: Sequence[str] | None = None) -> RestrictedRunData:
        """A view of this run keeping, in every set, only the items whose source is in ``sources`` (n,);
        ``positives`` replaces :attr:`positive_sets` in the view."""
        return RestrictedRunData(self, sources, positives)


class RestrictedRunData(RunData):
    """:class:`RunData` of the items of every set whose source image is in ``sources`` (one side of a split).

    Sets and neighbours are the parent's, indexed by the kept items (in stored order); scores are kept once
    computed. Scalars stored with a set (e.g. ``attempted``) are the parent's.

    Parameters
    ----------
    parent : RunData
    sources : int ndarray (n,)
        Source ids to keep.
    positives : sequence of str, optional
        The view's positive sets (default: the parent's).
    """

    def __init__(self, parent: RunData, sources: np.ndarray, positives: Sequence[str] | None = None):
        self.positive_sets = tuple(positives) if positives is not None else parent.positive_sets
        self.parent, self.run, self.verify = parent, parent.run, parent.verify
        self.summary, self.config, self.train_labels = parent.summary, parent.config, parent.train_labels
        self.sources = np.unique(np.asarray(sources, dtype=np.int64))
        self._sets: dict[str, dict[str, np.ndarray]] = {}
        self._nb: dict[tuple[str, str, str], SetNeighbours] = {}
        self._masks: dict[str, np.ndarray] = {}
        self._scores: dict[tuple, np.ndarray] = {}
        self._lock = threading.RLock()  # a score's load reads the view's neighbours under the same lock

    def mask(self, name: str) -> np.ndarray:
        """Boolean mask (n_set,) of the kept items of the parent's set ``name``."""
        return self._once(self._masks, name, lambda: np.isin(self.parent.evalset(name)["source"], self.sources))

    def train_image(self, i: int) -> np.ndarray | None:
        return self.parent.train_image(i)

    def evalset(self, name: str) -> dict[str, np.ndarray]:
        m = self.mask(name)
        return self._once(self._sets, name, lambda: _read_only(
            {a: (v if np.ndim(v) == 0 else np.asarray(v)[m]) for a, v in self.parent.evalset(name).items()}))

    def neighbours(self, name: str, layer: str, mode: str) -> SetNeighbours:
        m = self.mask(name)

        def load() -> SetNeighbours:
            nb = self.parent.neighbours(name, layer, mode)
            return SetNeighbours(_read_only(nb.I[m]), _read_only(nb.D[m]))

        return self._once(self._nb, (name, layer, mode), load)

    def scores(self, name: str, layer: str, mode: str, fn: str, k: int) -> np.ndarray:
        return self._once(self._scores, (name, layer, mode, fn, int(k)),
                          lambda: _read_only(super(RestrictedRunData, self).scores(name, layer, mode, fn, k)))


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


def best_setting(report: dict | None) -> dict | None:
    """The report's best setting (``layer``, ``mode``, ``fn``, ``k``, ``aggr``), or None when it has none."""
    return (report or {}).get("headline", {}).get("best")


def best_layer(report: dict | None, layers: Sequence[str]) -> str:
    """The layer of the report's best setting when it is one of ``layers``, else the last layer."""
    best = (best_setting(report) or {}).get("layer")
    return best if best in layers else layers[-1]


# ------------------------------------------------------------------------------------ separation curves
def trusted_share(scores: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Share of ``scores`` (n,) at or above each threshold of ``grid`` (m,) -> (m,); NaN scores count as 0 (and
    no scores as all trusted)."""
    s = np.sort(np.nan_to_num(scores))
    return 1.0 - np.searchsorted(s, grid, side="left") / max(len(s), 1)


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
        """:func:`core.metrics.roc` of the positives against every negative."""
        return metrics.roc(self.positives, self.all_negatives)

    @property
    def eer_threshold(self) -> float:
        """The EER threshold clipped to [0, 1]."""
        return float(np.clip(self.roc.eer_threshold, 0, 1))

    def at(self, threshold: float) -> dict[str, float]:
        """:func:`core.metrics.rates_at` of the positives against every negative."""
        return metrics.rates_at(self.positives, self.all_negatives, threshold)

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

    def trusted_shares(self, points: int = 501) -> tuple[np.ndarray, list[np.ndarray]]:
        """:func:`trusted_share` of each group of :attr:`groups` on ``points`` thresholds of [0, 1].

        Returns
        -------
        grid : ndarray (points,)
        shares : list of ndarray (points,)
        """
        grid = np.linspace(0, 1, points)
        return grid, [trusted_share(sc, grid) for sc in self.groups]


# -------------------------------------------------------------------------------------------- failures
@dataclass(frozen=True)
class FailureCase:
    """One adversarial image: set, index, score, true and predicted class, and the nearest training image of the
    predicted class among its stored neighbours (``(id, squared distance)``, None when none has that class)."""

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


def failure_cases(data: RunData, layer: str, mode: str, fn: str, k: int, attacks: Sequence[str],
                  n: int) -> FailureCases:
    """Rank the adversarial images of ``attacks`` at the EER threshold of positives against all of them
    (paper Table 3). NaN scores count as 0; ties keep set order, then index order."""
    pos = data.positives(layer, mode, fn, k)
    per_set = {a: data.scores(a, layer, mode, fn, k) for a in attacks}
    th = float(metrics.roc(pos, np.concatenate(list(per_set.values()))).eer_threshold)
    items = [(a, i, float(s)) for a, sc in per_set.items() for i, s in enumerate(np.nan_to_num(sc))]
    caught = sorted((x for x in items if x[2] < th), key=lambda x: x[2])
    missed = sorted((x for x in items if x[2] >= th), key=lambda x: -x[2])

    def case(name: str, i: int, score: float) -> FailureCase:
        e = data.evalset(name)
        pred = int(e["predicted"][i])
        return FailureCase(name, i, score, int(e["true"][i]), pred, data.nearest_of_class(name, i, layer, mode, pred))

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
