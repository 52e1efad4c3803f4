"""Cached loaders of a run for the pages, and the library calls whose results the pages show.

``st.cache_resource`` holds the heavy shared objects (the :class:`~core.detector.Detector`, whose load
:func:`warm` starts in a background thread on the first page; :class:`~core.evaluation.paper_figures.RunData`), ``st.cache_data`` small arrays and tables (scores of a stored set for one
setting, EER thresholds, failure cases), each keyed by the run folder and its manifest's modification time. A
damaged or missing run file stops the page with the command that rebuilds the run. The precomputed evaluation
sets are only ever scored from their stored neighbours: no page searches them.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from app_ui.selection import Run, resume_command
from app_ui.text import md
from core.evaluation import paper_figures
from core.evaluation.rundata import RunData


def _refuse(run: Run, err: Exception) -> None:
    """A run whose files fail their checks: say which and how to rebuild, then stop the page."""
    st.error(f"Run {md(Path(run.path).name)} cannot be loaded: {md(err)}")
    st.markdown("Rebuild it with:")
    st.code(resume_command(run.manifest), language="bash")
    st.stop()


@contextlib.contextmanager
def _guard(run: Run, *also: type[Exception]) -> Iterator[None]:
    """Turn a damaged or missing run file met while loading (or any of ``also``) into :func:`_refuse`."""
    from core.errors import ArtefactError

    try:
        yield
    except (ArtefactError, OSError, *also) as e:
        _refuse(run, e)


#: Modules the other pages import on their first visit (ROC curves): imported in the background after the
#: first page's script run.
WARM_IMPORTS = ("sklearn.metrics",)


@st.cache_resource(show_spinner=False)
def _background() -> ThreadPoolExecutor:
    """One worker thread per process for loads that a page will wait on later."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="knnguard-warm")


@st.cache_resource(show_spinner=False)
def _loading(path: str, stamp: int) -> dict:
    """The run's detector load: ``{"lock", "future"}`` (one per run and manifest stamp)."""
    return {"lock": threading.Lock(), "future": None}


def _load_detector(path: str):
    from core.detector import Detector

    return Detector.load(path, verify="full")  # one-image work picks its threads: core._util.threads


def _import_warm() -> None:
    from core._util.lazy_import import import_locked

    for name in WARM_IMPORTS:
        import_locked(name)  # under the lock the attacks import ART with: ART imports scikit-learn too


@st.cache_resource(show_spinner=False)
def _imports() -> Future:
    return _background().submit(_import_warm)


def _detector_future(path: str, stamp: int) -> Future:
    """The detector's load, started in the background on first call (again after a failed one)."""
    slot = _loading(path, stamp)
    with slot["lock"]:
        f = slot["future"]
        if f is None or (f.done() and f.exception() is not None):
            f = slot["future"] = _background().submit(_load_detector, path)
    return f


def warm(run: Run) -> None:
    """Start loading the run's detector in the background (returns at once; pages wait in :func:`detector`)."""
    _detector_future(run.path, run.stamp)


def preload(path: str, *, timeout: float | None = None) -> bool:
    """Load run ``path``'s detector and evaluation data into this process's resource caches (the launcher calls
    it before the server listens, for the run the sidebar opens on: the first page then finds them loaded).
    Outside a script run: only :func:`st.cache_resource` caches, which are process-wide, are filled.

    Returns False when the detector took longer than ``timeout`` seconds: its load goes on in the background,
    where the first page that needs it waits for the same load.
    """
    from concurrent.futures import TimeoutError as FutureTimeout

    from app_ui.selection import default_k, stamp

    s = stamp(path)
    try:
        _detector_future(path, s).result(timeout=timeout)
    except FutureTimeout:
        return False
    summary = _rundata(path, s).run.manifest["summary"]
    _ood_references(path, s, summary["defaults"]["mode"], default_k(summary))  # the sidebar's first settings
    return True


def warm_imports() -> None:
    """Import :data:`WARM_IMPORTS` in the background, once per process (after the detector's load)."""
    _imports()


@st.cache_resource(show_spinner="Loading the detector (model and faiss indexes)…")
def loaded_detector(path: str, stamp: int):
    """The detector of the run at ``path`` (manifest ``stamp``), waiting for its background load."""
    return _detector_future(path, stamp).result()


def detector(run: Run):
    """The run's :class:`core.detector.Detector` (loaded once per process).

    A model file that no longer fits the model's code (torch's ``load_state_dict`` RuntimeError, e.g. after the
    architecture changed) is reported like a damaged file: rebuild the run.
    """
    with _guard(run, RuntimeError, KeyError):
        return loaded_detector(run.path, run.stamp)


@st.cache_resource(show_spinner="Loading the run's evaluation data…")
def _rundata(path: str, stamp: int) -> RunData:
    from core.evaluation.report import PROTOCOLS

    data = RunData(path, verify=True)
    protocol = data.config.get("evaluation", {}).get("protocol", "paper")
    data.positive_sets = PROTOCOLS.get(protocol, PROTOCOLS["paper"])[0]  # authors: authentic only
    return data


def rundata(run: Run) -> RunData:
    """The run's :class:`core.evaluation.paper_figures.RunData` (stored sets and neighbours; shared, read-only)."""
    with _guard(run):
        return _rundata(run.path, run.stamp)


def train_image(run: Run, i: int) -> np.ndarray | None:
    """Training image ``i`` uint8 (H, W, C) (:meth:`core.evaluation.paper_figures.RunData.train_image`); None when the run keeps
    neither the training images nor their thumbnails."""
    return rundata(run).train_image(int(i))


@st.cache_resource(show_spinner=False, max_entries=64)
def run_json(path: str, stamp: int, name: str) -> Any:
    """A JSON file of the run, hash-checked against the manifest; None when the manifest does not record it.

    One object shared by every session and page: read it, never change it (``st.cache_data`` handed out a copy,
    unpickled on every call: report.json, 0.3 MB on the default run, cost 70 ms of each Threshold script run)."""
    from core.runs.folder import RunDir

    rd = RunDir(path)
    return rd.load_json(name) if name in rd.manifest["files"] else None


def classes(run: Run) -> list[str]:
    """``classes.json`` of the run (the page stops on a damaged file)."""
    with _guard(run):
        return run_json(run.path, run.stamp, "classes.json")


def report(run: Run) -> dict:
    """``report.json`` of the run (the page stops on a damaged file)."""
    with _guard(run):
        return run_json(run.path, run.stamp, "report.json")


def model_info(run: Run) -> dict:
    """``model.json`` of the run (empty dict when absent; the page stops on a damaged file)."""
    with _guard(run):
        return run_json(run.path, run.stamp, "model.json") or {}


@st.cache_data(show_spinner=False, max_entries=512)
def _scores(path: str, stamp: int, name: str, layer: str, mode: str, fn: str, k: int) -> np.ndarray:
    return _rundata(path, stamp).scores(name, layer, mode, fn, k)


def set_scores(run: Run, name: str, layer: str) -> np.ndarray:
    """kNN scores (n,) of stored set ``name`` at ``layer`` and the sidebar's settings (from stored neighbours)."""
    with _guard(run):
        return _scores(run.path, run.stamp, name, layer, run.mode, run.fn, run.k)


def separation(run: Run, layer: str, negatives: Sequence[str]) -> paper_figures.Separation:
    """:class:`core.evaluation.paper_figures.Separation` of the positive sets against the sets ``negatives`` at ``layer``."""
    sets = rundata(run).set_names
    return paper_figures.Separation([set_scores(run, s, layer) for s in rundata(run).positive_sets if s in sets],
                                 {s: set_scores(run, s, layer) for s in negatives})


@dataclass(frozen=True)
class SeparationCurves:
    """What the Threshold page draws that does not move with the threshold, at one setting and set of negatives
    (empty arrays and lists when there is no negative)."""

    sep: paper_figures.Separation
    roc_xy: tuple[np.ndarray, np.ndarray]  # the ROC's corners (c,), (c,)
    centres: np.ndarray  # (bins,)
    densities: list[np.ndarray]  # one (bins,) per group
    grid: np.ndarray  # (points,)
    shares: list[np.ndarray]  # one (points,) per group


@st.cache_resource(show_spinner=False, max_entries=32)
def _separation_curves(_run: Run, path: str, stamp: int, layer: str, mode: str, fn: str, k: int,
                       negatives: tuple[str, ...], strict: bool) -> SeparationCurves:
    from core.evaluation.metrics import roc_corners

    sep = separation(_run, layer, list(negatives))
    if not len(sep.all_negatives):
        return SeparationCurves(sep, (np.zeros(0), np.zeros(0)), np.zeros(0), [], np.zeros(0), [])
    centres, densities = sep.densities()
    grid, shares = sep.trusted_shares(strict=strict)
    return SeparationCurves(sep, roc_corners(sep.roc), centres, densities, grid, shares)


def separation_curves(run: Run, layer: str, negatives: Sequence[str], *, strict: bool) -> SeparationCurves:
    """:func:`separation` with its ROC corners, score densities and trusted shares (``strict``: the run's trust
    rule), computed once per process for a setting and set of negatives (shared: read, never change)."""
    return _separation_curves(run, run.path, run.stamp, layer, run.mode, run.fn, int(run.k), tuple(negatives),
                              bool(strict))


@st.cache_data(show_spinner=False)
def _eer_thresholds(path: str, stamp: int, mode: str, fn: str, k: int) -> dict[str, float]:
    return paper_figures.eer_thresholds(_rundata(path, stamp), mode, fn, k)


def eer_thresholds(run: Run) -> dict[str, float]:
    """:func:`core.evaluation.paper_figures.eer_thresholds` at the sidebar's settings."""
    with _guard(run):
        return _eer_thresholds(run.path, run.stamp, run.mode, run.fn, run.k)


@st.cache_data(show_spinner="Ranking the adversarial images…", max_entries=64)
def _failure_cases(path: str, stamp: int, layer: str, mode: str, fn: str, k: int, attacks: tuple[str, ...],
                   n: int, threshold: float | None = None, strict: bool = False) -> paper_figures.FailureCases:
    data, det = _rundata(path, stamp), loaded_detector(path, stamp)
    return paper_figures.failure_cases(data, layer, mode, fn, k, attacks, n, threshold=threshold, strict=strict,
                                    nearest=lambda name, i, cls: (  # search within the class
                                        det.nearest_of_class(data.evalset(name)["images"][i], layer, mode, cls)))


def failure_cases(run: Run, layer: str, attacks: Sequence[str], n: int, *, threshold: float | None = None,
                  strict: bool = False) -> paper_figures.FailureCases:
    """:func:`core.evaluation.paper_figures.failure_cases` at the sidebar's settings (at ``threshold``; default the EER one; the
    detector searches within the class where the stored neighbours have none of it)."""
    detector(run)
    with _guard(run):
        return _failure_cases(run.path, run.stamp, layer, run.mode, run.fn, run.k, tuple(attacks), int(n),
                              None if threshold is None else float(threshold), bool(strict))


@st.cache_data(show_spinner="Scoring every layer from stored neighbours…")
def _detection_rows(path: str, stamp: int, mode: str, k: int) -> list[dict]:
    return paper_figures.detection_table(_rundata(path, stamp), k=k, modes=[mode])


def detection_rows(run: Run) -> list[dict]:
    """:func:`core.evaluation.paper_figures.detection_table` of every layer and score function at the sidebar's mode and k."""
    with _guard(run):
        return _detection_rows(run.path, run.stamp, run.mode, run.k)


@st.cache_data(show_spinner=False, max_entries=64)
def _inspect(path: str, stamp: int, image: np.ndarray, mode: str, fn: str, k: int):
    return loaded_detector(path, stamp).inspect(image, mode=mode, fn=fn, k=k, n_neighbours=k)


def inspect(run: Run, image: np.ndarray):
    """:meth:`core.detector.Detector.inspect` of a uint8 (H, W, C) image at the sidebar's settings (cached), with
    all k neighbours per layer (the k-th one's distance is the out-of-distribution check's)."""
    detector(run)  # loaded (or refused) first, so a failure inside inspect() is never taken for a bad run
    with _guard(run):
        return _inspect(run.path, run.stamp, np.ascontiguousarray(image), run.mode, run.fn, run.k)


@st.cache_resource(show_spinner="Drawing the bootstrap over the test split…")
def _live(path: str, stamp: int):
    from core.evaluation.setting_figures import LiveFigures

    return LiveFigures.for_run(_rundata(path, stamp),
                               scores=lambda name, layer, mode, fn, k: _scores(path, stamp, name, layer, mode, fn, k))


def live(run: Run):
    """The run's :class:`core.evaluation.setting_figures.LiveFigures` (built once per process), or None for a run older than the
    validation / test split (a set without source ids) or whose split leaves no test image."""
    with _guard(run):
        try:
            return _live(run.path, run.stamp)
        except ValueError:
            return None


def live_at(run: Run, layer: str, threshold: float) -> dict | None:
    """:meth:`core.evaluation.setting_figures.LiveFigures.at` of ``layer`` at the sidebar's settings (None: see :func:`live`)."""
    lf = live(run)
    if lf is None:
        return None
    with _guard(run):
        return lf.at((layer, run.mode, run.fn, run.k), threshold)


def live_eer(run: Run, layer: str, fn: str) -> dict | None:
    """:meth:`core.evaluation.setting_figures.LiveFigures.eer` of ``layer`` and ``fn`` at the sidebar's mode and k (None: see
    :func:`live`)."""
    lf = live(run)
    if lf is None:
        return None
    with _guard(run):
        return lf.eer((layer, run.mode, fn, run.k))


def _thresholds_entry(value: Any, layers: Sequence[str]) -> dict[str, float] | None:
    """A cached ``{layer: threshold}`` of exactly ``layers`` (numbers or NaN), else None (a miss)."""
    if not isinstance(value, dict) or sorted(value) != sorted(layers):
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value.values()):
        return None
    return {la: float(value[la]) for la in layers}


@st.cache_data(show_spinner=False, max_entries=64)
def _validation_thresholds(path: str, stamp: int, mode: str, fn: str, k: int) -> dict[str, float] | None:
    """Computed once per run content, setting and version of ``core`` (kept in :mod:`core._util.disk_cache` across
    server starts: 0.6 s of a fresh server's first page on the default run, 2 s while its files were served)."""
    from core._util import disk_cache
    from core.evaluation.verdict import validation_thresholds

    data = _rundata(path, stamp)
    key = disk_cache.cache_key("validation_thresholds", data.run.manifest, mode, fn, int(k))
    hit = _thresholds_entry(disk_cache.get_json("thresholds", key), data.layers)
    if hit is not None:
        return hit
    try:
        out = validation_thresholds(data, mode, fn, k,
                                    scores=lambda name, layer, m, f, kk: _scores(path, stamp, name, layer, m, f, kk))
    except ValueError:  # a run older than the validation / test split
        return None
    disk_cache.put_json("thresholds", key, {la: float(v) for la, v in out.items()})
    return out


def validation_thresholds(run: Run) -> dict[str, float] | None:
    """:func:`core.evaluation.verdict.validation_thresholds` at the sidebar's settings; None for a run without a split."""
    with _guard(run):
        return _validation_thresholds(run.path, run.stamp, run.mode, run.fn, run.k)


@st.cache_resource(show_spinner=False, max_entries=32)
def _ood_references(path: str, stamp: int, mode: str, k: int):
    """Computed once per run content, mode, k and version of ``core`` (kept in :mod:`core._util.disk_cache`: reading the
    held-out authentic images' neighbours of every layer was 0.3 s of a fresh server's first page)."""
    from core._util import disk_cache
    from core.evaluation import ood

    data = _rundata(path, stamp)
    key = disk_cache.cache_key("ood_references", data.run.manifest, mode, int(k))
    hit = ood.references_from_json(disk_cache.get_json("ood", key), data.layers, mode, k)
    if hit is not None:
        return hit
    try:
        refs = ood.references(data, data.layers, mode, k)
    except ValueError:  # no source ids, or k beyond the stored neighbours
        return None
    disk_cache.put_json("ood", key, ood.references_to_json(refs))
    return refs


def ood_references(run: Run):
    """:func:`core.evaluation.ood.references` of every layer at the sidebar's mode and k (None for a run without a split)."""
    with _guard(run):
        return _ood_references(run.path, run.stamp, run.mode, run.k)
