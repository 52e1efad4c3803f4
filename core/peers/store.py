"""Where a run keeps its fitted detectors: per entry, ``detectors/<entry>/detector.json`` (name, parameters,
thresholds, times), ``fit-<fit>.npz`` (fitted statistics) and ``scores-<fit>.npz`` (the score of every image
of every evaluation set); ``<fit>`` is ``all`` or the attack left out. Arrays only, no pickle."""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from core.peers.base import PeerDetector
from core.peers.fitting import ALL, CLASSES
from core.runs.folder import RunDir

__all__ = ["ROOT", "meta_rel", "state_rel", "scores_rel", "entries", "load_fitted", "load_scores", "fit_for"]

log = logging.getLogger(__name__)

ROOT = "detectors"


def meta_rel(entry: str) -> str:
    return f"{ROOT}/{entry}/detector.json"


def state_rel(entry: str, fit: str) -> str:
    return f"{ROOT}/{entry}/fit-{fit}.npz"


def scores_rel(entry: str, fit: str) -> str:
    return f"{ROOT}/{entry}/scores-{fit}.npz"


def entries(run: RunDir) -> dict[str, dict[str, Any]]:
    """``{entry: detector.json}`` of every detector the run stores, in the stage's order (empty if none)."""
    order = run.manifest.get("summary", {}).get("detectors", [])
    return {e: run.load_json(meta_rel(e)) for e in order if run.is_recorded(meta_rel(e))}


def fit_for(meta: dict[str, Any], attack: str | None) -> str:
    """The fit reported against ``attack``: the one without it for a supervised detector, else ``all``."""
    return attack if attack is not None and meta["supervised"] and attack in meta["fits"] else ALL


def load_fitted(run: RunDir, entry: str, fit: str = ALL, *, meta: dict[str, Any] | None = None) -> PeerDetector:
    """The fitted detector ``entry`` (fit ``fit``) rebuilt from its stored statistics."""
    meta = meta or run.load_json(meta_rel(entry))
    det = CLASSES[meta["name"]](**meta["params"])
    # Hash-checked always (small files): a same-size forged fit made a signed run's Mahalanobis trust everything.
    state = run.load_npz(state_rel(entry, fit), verify=True) if run.is_recorded(state_rel(entry, fit)) else {}
    return det.load_state(state)


def load_scores(run: RunDir, entry: str, fit: str = ALL) -> dict[str, np.ndarray]:
    """``{set: scores (n_set,)}`` of fit ``fit`` of ``entry``."""
    return run.load_npz(scores_rel(entry, fit), verify=True)  # hash-checked: these draw the Compare page
