"""Read-only access to a finished run's evaluation data: sets, stored neighbours, scores, one side of a split.

Set roles (the paper's protocol): ``authentic`` and ``noise`` are positives (correct predictions to trust);
each adversarial set is a negative set; ``errors`` (authentic, misclassified) is the "Errors" column.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from core.knn.prefix_scores import PrefixScores
from core.runs.folder import RunDir

__all__ = ["POSITIVE_SETS", "ERRORS_SET", "RunData", "RestrictedRunData", "SetNeighbours", "decode_thumb"]

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
        self._prefix: dict[tuple[str, str, str, str], PrefixScores] = {}
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


                raw = store["data"][store["offsets"][j]:store["offsets"][j + 1]].tobytes()
                return decode_thumb(raw, int(np.clip(self.config.get("thumbs", {}).get("size", 64), 8, 1024)))
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
        """kNN scores (n,) of the predicted class for every image of set ``name``: ``core.knn.scoring.score``'s, from
        prefix sums kept per (set, layer, mode, fn) (:class:`core.knn.prefix_scores.PrefixScores`), so a new k costs
        a few neighbour rows, not all of them."""
        nb = self.neighbours(name, layer, mode)
        predicted = self.evalset(name)["predicted"]
        prefix = self._once(self._prefix, (name, layer, mode, fn),
                            lambda: PrefixScores(nb.I, nb.D, self.train_labels, predicted, fn))
        return prefix.at(k)

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
        self._prefix: dict[tuple[str, str, str, str], PrefixScores] = {}
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


def decode_thumb(raw: bytes, max_side: int) -> np.ndarray | None:
    """A stored JPEG thumbnail as uint8 (H, W, C), decoded in the upload sandbox (bounded in CPU time and memory) and
    at most ``max_side`` pixels a side (the run's ``thumbs.size``); None, logged, when it is not such an image.

    A run's thumbnails are untrusted: decoded in the server, a bank of progressive 8192-pixel JPEGs of 300 scans
    held a core for 160 s and 1.2 GB, and went to the browser at full size."""
    from core.uploads import sandbox
    from core.uploads.policy import UploadError

    try:
        mode, (w, h), pixels = sandbox.decode(raw, max_pixels=max_side * max_side)
    except UploadError as e:
        log.warning("a stored thumbnail was refused (%s): %s", e.reason, e)
        return None
    if max(w, h) > max_side:
        log.warning("a stored thumbnail is %dx%d, larger than the run's %d-pixel thumbnails", w, h, max_side)
        return None
    return np.frombuffer(pixels, np.uint8).reshape(h, w, len(mode))
