"""The façade: load a precomputed run and tell whether to trust the CNN's prediction on new images.

Scores are the kNN score of the predicted class among the training images' features (paper eq. (2)); a score
under the threshold means "do not trust this prediction".

Examples
--------
>>> from core.detector import Detector
>>> det = Detector.load("data/runs/fmnist")          # doctest: +SKIP
>>> r = det.inspect(upload_bytes)                    # or a PIL image, or uint8 (H, W, C)   # doctest: +SKIP
>>> r.predicted, r.scores["conv3"]                   # (1,), (1,)                           # doctest: +SKIP
>>> b = det.score(uint8_batch)                       # (N, H, W, C) -> predicted (N,), scores {layer: (N,)}
...                                                  # doctest: +SKIP
>>> det.model                # nn.Module: float (N, C, H, W) in [0, 1] -> logits            # doctest: +SKIP
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from core._util.threads import single_image_threads
from core.config.recorded import model_builder, recorded_config
from core.data.datasets import to_float
from core.errors import ArtefactError
from core.knn import index as knn_index
from core.knn import processing, scoring
from core.models import zoo
from core.models.features import FeatureExtractor
from core.results import Inspection, NeighbourList, Scores
from core.runs.folder import RunDir
from core.uploads.read import read_upload
from core.uploads.transforms import image_to_array

__all__ = ["Detector", "IncompleteRun"]

log = logging.getLogger(__name__)

#: Largest k a request may ask for (bounded by the run's training-set size too).
MAX_K = 10_000
#: ``verify="auto"`` hashes every loaded file when the run's files total at most this many bytes.
FULL_VERIFY_MAX_BYTES = 4 << 30
#: Largest batch :meth:`Detector.score` takes in one call (split bigger inputs yourself).
MAX_BATCH = 4096


class IncompleteRun(ArtefactError):
    """The run folder is missing or unfinished; the message gives the command that builds it."""


class Detector:
    """A loaded run: model, per-layer processing and faiss indexes, training labels.

    Use :meth:`load`; the constructor takes already loaded parts.
    """

    def __init__(self, run: RunDir, model: zoo.Classifier, classes: list[str], train_labels: np.ndarray,
                 layers: list[str], defaults: dict[str, Any], *, verify: bool = True, verify_full: bool = True):
        self.run = run
        self.model = model
        self.classes = classes
        self.train_labels = train_labels
        self.layers = layers
        self.defaults = defaults
        self.modes = list(run.manifest["summary"]["modes"])
        self.k_max = int(run.manifest["summary"]["k_max"])
        spec = run.load_json("input.json")
        self.input_spec = zoo.InputSpec(tuple(spec["size"]), int(spec["resize"]))
        self._verify = verify
        self._verify_full = verify_full
        self._extractor = FeatureExtractor(model, layers)
        self._params: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        self._indexes: dict[tuple[str, str], Any] = {}
        self._class_ids: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, run: str | Path | RunDir, *, verify: str = "auto", modes: list[str] | None = None,
             entry: str | Callable[[], torch.nn.Module] | None = None,
             require_signature: bool | None = None) -> "Detector":
        """Load a finished run.

        The run supplies data only: the builder of a custom model comes from ``entry`` or the operator's
        allow-list (``$KNNGUARD_ALLOWED_ENTRIES``, see :mod:`core.models.entrypoints`), never from the manifest.

        Parameters
        ----------
        run : path or RunDir
            The run folder (``data/runs/<name>``).
        verify : {"auto", "full", "size", "none"}
            Check each loaded file against the manifest's sha256 (``full``), only its size, or not at all;
            ``auto`` = full when the run's files total under :data:`FULL_VERIFY_MAX_BYTES`, else sizes only
            (then check hashes on demand: ``python -m precompute --verify RUN_DIR``).
        modes : list of str, optional
            Processing modes to load now (default: the run's default mode; others load on first use).
        entry : str or callable, optional, keyword-only
            Custom-model runs: the builder returning the bare ``nn.Module``, or its ``"package.module:fn"``.
        require_signature : bool, optional
            Refuse a run whose manifest has no valid signature (default: ``$KNNGUARD_REQUIRE_SIGNATURE``); a
            present signature is always checked when a key is there (:mod:`core.runs.signing`).

        Raises
        ------
        IncompleteRun
            No run there, or its precompute has not finished.
        NeedsEntryPoint
            A custom-model run and no ``entry`` given or allowed.
        ArtefactError
            A file was changed, truncated, replaced or is not a regular file inside the run, the manifest's
            signature is wrong or required and missing, or the recorded config is invalid (the message
            names it).
        """
        run = run if isinstance(run, RunDir) else RunDir(run, require_signature=require_signature)
        if not run.exists():
            raise IncompleteRun(f"no run in {run.path}; build it with "
                                "`python -m precompute --config precompute/configs/<config>.toml`")
        m = run.manifest
        if require_signature:
            run.check_signature(require=True)
        if m.get("stages", {}).get("neighbours", {}).get("status") != "done":
            raise IncompleteRun(f"run {run.path} is unfinished; finish it with "
                                f"`python -m precompute --config <its config>` (name = {m.get('config', {}).get('name')!r})")
        if verify not in ("auto", "full", "size", "none"):
            raise ValueError("verify must be 'auto', 'full', 'size' or 'none'")
        cfg = recorded_config(run)
        builder = model_builder(run, cfg["model"], entry)
        if verify == "auto":
            total = sum(f["size"] for f in m["files"].values())
            verify = "full" if total <= FULL_VERIFY_MAX_BYTES else "size"
        t0 = time.perf_counter()
        full = verify == "full"
        base = ["model.pt", "classes.json", "train_labels.npy", "input.json"]
        base += ["train_images.npy"] if "train_images.npy" in m["files"] else []  # see docs/design.md#detector
        if verify != "none":  # model.pt, when hashed, is hashed from the bytes it is loaded from, below
            run.verify([r for r in base if not (full and r == "model.pt")], full=full)
        model = zoo.from_config({**cfg["model"], "weights": "none", "state_dict": ""}, builder=builder)[0]
        try:
            model.load_state_dict(run.load_torch("model.pt", verify=full))
        except RuntimeError as e:  # shapes or keys differ: the run was made by other model code
            raise ArtefactError(f"{run.path / 'model.pt'} does not fit the model {cfg['model']['name']!r} as the "
                                f"code now builds it ({str(e).splitlines()[0]}); rebuild the run with "
                                "`python -m precompute --config <its config> --from train`") from e
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        defaults = dict(m["summary"]["defaults"])
        classes, labels = run.load_json("classes.json"), run.load_npy("train_labels.npy")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(classes)):
            raise ArtefactError(f"{run.path / 'train_labels.npy'}: labels {int(labels.min())}..{int(labels.max())} "
                                f"do not all name one of the {len(classes)} classes of classes.json")
        det = cls(run, model, classes, labels, list(m["summary"]["layers"]), defaults, verify=verify != "none",
                  verify_full=full)
        for mode in modes or [defaults["mode"]]:
            for layer in det.layers:
                det.processing_and_index(layer, mode)
        log.info("loaded detector %s in %.2fs (verify=%s)", run.path, time.perf_counter() - t0, verify)
        return det

    def processing_and_index(self, layer: str, mode: str) -> tuple[dict[str, np.ndarray], Any]:
        """The fitted processing parameters and the faiss index of (``layer``, ``mode``), loaded and hash-checked
        once (thread-safe): what the adaptive surrogate and the peer detectors reuse.

        Returns
        -------
        params : dict of str to ndarray
            As :func:`core.knn.processing.apply` takes them.
        index : faiss.Index or core.knn.index.Refined or core.knn.pq_scan.PQScan
            Searched by :func:`core.knn.index.search`.
        """
        key = (layer, mode)
        if key not in self._indexes:
            if layer not in self.layers or mode not in self.modes:
                raise ValueError(f"unknown layer/mode {key}; layers {self.layers}, modes {self.modes}")
            with self._lock:
                if key not in self._indexes:
                    rels = [f"processing/{layer}-{mode}.npz", f"index/{layer}-{mode}.faiss"]
                    rels += [r for r in [knn_index.refine_rel(rels[1])] if self.run.is_recorded(r)]
                    if self._verify:  # processing and index, when hashed, are hashed as they are loaded, below
                        self.run.verify(rels[2:] if self._verify_full else rels, full=self._verify_full)
                    self._params[key] = self.run.load_npz(rels[0], verify=self._verify_full)
                    self._indexes[key] = knn_index.open_saved(self.run, rels[1], verify=self._verify_full)
        return self._params[key], self._indexes[key]

    # ------------------------------------------------------------------ inputs
    def prepare(self, image: Any) -> np.ndarray:
        """Images as the model sees them.

        Parameters
        ----------
        image : bytes, PIL.Image.Image or uint8 ndarray (H, W, C), (H, W) or (N, H, W, C)
            Upload bytes go through :func:`core.uploads.read.read_upload`; bytes and PIL images are then resized,
            cropped and converted by :func:`core.uploads.transforms.image_to_array`; arrays must already have the
            model's size.

        Returns
        -------
        uint8 ndarray (N, H, W, C)

        Raises
        ------
        UploadError
            Bytes that are not a usable image (``e.reason`` says why).
        ValueError
            An array that is not uint8 or not the model's size.
        """
        c, h, w = self.input_spec.size
        if isinstance(image, (bytes, bytearray, memoryview)):
            image = read_upload(image)
        if isinstance(image, Image.Image):
            return image_to_array(image, size=(h, w), channels=c, resize=self.input_spec.resize)[None]
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            raise ValueError(f"expected uint8 pixels (as the dataset stores them), got {arr.dtype}; "
                             "pass a PIL image or np.uint8 array")
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim == 3:
            arr = arr[None]
        if arr.ndim != 4 or arr.shape[1:] != (h, w, c):
            raise ValueError(f"expected images shaped (N, {h}, {w}, {c}), got {arr.shape}; pass a PIL image to "
                             "have it resized")
        return arr

    def _settings(self, mode: str | None, fn: str | None, k: int | None) -> tuple[str, str, int]:
        mode = mode or self.defaults["mode"]
        fn = fn or self.defaults["fn"]
        if k is None:
            k = self.defaults["k"]
        if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
            raise TypeError(f"k must be an int, got {type(k).__name__} {k!r}")
        k = int(k)
        if fn not in scoring.SCORE_FNS:
            raise ValueError(f"unknown score function {fn!r}; use one of {list(scoring.SCORE_FNS)}")
        limit = min(MAX_K, len(self.train_labels), self.k_max)
        if not 1 <= k <= limit:
            raise ValueError(f"k must be in [1, {limit}], got {k}")
        return mode, fn, k

    # ------------------------------------------------------------------ scoring
    def forward(self, images: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One forward pass of prepared uint8 ``images`` (N, H, W, C): softmax probabilities (N, n_classes) and
        every tapped layer's features (N, d_layer), global-average-pooled for conv maps (no processing, no search)."""
        with single_image_threads(images), torch.no_grad():
            logits, feats = self._extractor(torch.from_numpy(to_float(images)))
        probs = torch.softmax(logits.float(), 1).numpy()
        return probs, {k: v.numpy() for k, v in feats.items()}

    def score(self, batch: Any, *, mode: str | None = None, fn: str | None = None, k: int | None = None,
              layers: list[str] | None = None) -> Scores:
        """Predictions and per-layer kNN scores of a batch.

        Parameters
        ----------
        batch : uint8 ndarray (N, H, W, C), or anything :meth:`prepare` takes
            At most :data:`MAX_BATCH` images.
        mode, fn, k : optional, keyword-only
            Processing, score function and k (default: the run's).
        layers : list of str, optional
            Subset of the tapped layers.

        Returns
        -------
        Scores

        Raises
        ------
        TypeError
            ``k`` is not an int (a bool, float or str).
        ValueError
            ``k`` is outside ``[1, k_max]``, ``fn`` or ``mode`` is unknown, the images are not uint8 of the
            model's size, or there are more than :data:`MAX_BATCH`.

        Examples
        --------
        >>> s = det.score(images, k=100)        # images uint8 (N, H, W, C)      # doctest: +SKIP
        >>> s.predicted.shape, s.scores["conv3"].shape                            # doctest: +SKIP
        ((N,), (N,))
        """
        mode, fn, k = self._settings(mode, fn, k)
        images = self.prepare(batch)
        if len(images) > MAX_BATCH:
            raise ValueError(f"batch of {len(images)} images is over the limit of {MAX_BATCH}; split it")
        probs, feats = self.forward(images)
        pred = probs.argmax(1)
        scores = {}
        for layer in layers or self.layers:
            params, index = self.processing_and_index(layer, mode)
            D, I = knn_index.search(index, processing.apply(params, feats[layer]), k)
            scores[layer] = scoring.score(I, D, self.train_labels, pred, fn=fn)
        return Scores(pred, probs, scores, {"mode": mode, "fn": fn, "k": k})

    def nearest_of_class(self, image: Any, layer: str, mode: str, cls: int) -> tuple[int, float] | None:
        """The nearest training image of class ``cls`` to ``image`` at ``layer`` (processing ``mode``).

        An exact search of the run's index restricted to the class's training ids (faiss ``IDSelectorBatch``).

        Parameters
        ----------
        image : uint8 ndarray (H, W, C), or anything :meth:`prepare` takes (one image)

        Returns
        -------
        (int, float) or None
            Training id and squared distance; None when the class has no training image or the index finds none.
        """
        import faiss

        images = self.prepare(image)[:1]
        _, feats = self.forward(images)
        params, index = self.processing_and_index(layer, mode)
        xq = np.ascontiguousarray(processing.apply(params, feats[layer]), dtype=np.float32)
        if int(cls) not in self._class_ids:
            self._class_ids[int(cls)] = np.flatnonzero(self.train_labels == int(cls)).astype(np.int64)
        ids = self._class_ids[int(cls)]
        if not len(ids):
            return None
        sel = faiss.IDSelectorBatch(ids)
        ivf = faiss.try_extract_index_ivf(index) if hasattr(faiss, "try_extract_index_ivf") else None
        params_ = (faiss.SearchParametersIVF(sel=sel, nprobe=ivf.nlist) if ivf is not None
                   else faiss.SearchParameters(sel=sel))
        D, I = index.search(xq, 1, params=params_)
        return (int(I[0, 0]), float(D[0, 0])) if I[0, 0] >= 0 else None

    def inspect(self, image: Any, *, mode: str | None = None, fn: str | None = None, k: int | None = None,
                n_neighbours: int = 8) -> Inspection:
        """Everything about one image: prediction, top-5, per-layer scores and nearest training images.

        Parameters
        ----------
        image : bytes, PIL.Image.Image or uint8 ndarray (H, W, C)
            What a page has: the bytes of an upload (read by :func:`core.uploads.read.read_upload`), a decoded
            image (resized and cropped to the model's input), or an array already of the model's size.
        mode, fn, k : optional, keyword-only
            As in :meth:`score`.
        n_neighbours : int
            Neighbours to return per layer, overall and of the predicted class.

        Returns
        -------
        Inspection
            ``timings["prepare"]`` includes the decoding of bytes.

        Raises
        ------
        UploadError
            ``image`` is bytes that are not a usable image.
        TypeError, ValueError
            As :meth:`score`, or more than one image.

        Examples
        --------
        >>> r = det.inspect(uploaded_file.getvalue())                       # doctest: +SKIP
        >>> r.predicted[0], r.top5[0], r.neighbours["conv3"].ids            # doctest: +SKIP
        """
        mode, fn, k = self._settings(mode, fn, k)
        t = {"prepare": time.perf_counter()}
        images = self.prepare(image)
        if len(images) != 1:
            raise ValueError(f"inspect takes one image, got {len(images)}; use score() for batches")
        t["forward"] = time.perf_counter()
        probs, feats = self.forward(images)
        pred = int(probs[0].argmax())
        t["search"] = time.perf_counter()
        scores, nbs, cnbs = {}, {}, {}
        proc_time = search_time = 0.0
        for layer in self.layers:
            params, index = self.processing_and_index(layer, mode)
            p0 = time.perf_counter()
            xq = processing.apply(params, feats[layer])
            p1 = time.perf_counter()
            D, I = knn_index.search(index, xq, k)
            proc_time += p1 - p0
            search_time += time.perf_counter() - p1
            scores[layer] = scoring.score(I, D, self.train_labels, np.array([pred]), fn=fn)
            n = min(n_neighbours, I.shape[1])
            nbs[layer] = NeighbourList(I[0, :n], D[0, :n], self.train_labels[I[0, :n]])
            same = np.flatnonzero(self.train_labels[I[0]] == pred)[:n_neighbours]
            cnbs[layer] = NeighbourList(I[0, same], D[0, same], self.train_labels[I[0, same]])
        t["done"] = time.perf_counter()
        top = np.argsort(-probs[0])[:5]
        names = list(t)
        timings = {names[i]: t[names[i + 1]] - t[names[i]] for i in range(len(names) - 1)}
        loop = timings.pop("search")
        timings.update(processing=proc_time, search=search_time, scoring=loop - proc_time - search_time)
        return Inspection(np.array([pred]), probs, scores, {"mode": mode, "fn": fn, "k": k}, image=images[0],
                          top5=[(int(c), float(probs[0, c])) for c in top], neighbours=nbs,
                          class_neighbours=cnbs, timings=timings)
