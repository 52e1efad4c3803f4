"""knnguard core library: detect adversarial inputs to a CNN with kNN over its hidden-layer features.

One package per concept, lowest layer first (``tests/test_layers.py`` keeps imports going down only;
docs/architecture.md has the diagram and a table of every module):

``_util`` (atomic writes, caches, lazy imports, the thread rule) < ``errors`` < ``runs`` (the run folder, checked
file reads, signing) < ``uploads`` (policy, sandboxed decode) < ``data`` (dataset readers) < ``models`` (zoo,
entry points, feature extraction) < ``knn`` (processing, faiss indexes, kNN scores) < ``evaluation`` (metrics,
splits, bootstrap, operating point, verdicts, the report's figures) < ``attacks`` < ``config`` (the precompute
config schema) < ``results``, ``detector`` (the :class:`Detector` façade) < ``peers`` (the other detectors).
Nothing here imports Streamlit or ``precompute``.

The public surface is importable from here, loaded on first use (``import core`` stays light):

>>> from core import Detector, KnnguardError   # doctest: +SKIP
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Detector", "Scores", "Inspection", "NeighbourList", "IncompleteRun", "NeedsEntryPoint",
           "KnnguardError", "ArtefactError", "ConfigError", "SigningKeyError", "DatasetNotFound", "UploadError"]

_HOMES = {"Detector": "core.detector", "IncompleteRun": "core.detector",
          "Scores": "core.results", "Inspection": "core.results", "NeighbourList": "core.results",
          "NeedsEntryPoint": "core.models.entrypoints", "UploadError": "core.uploads.policy",
          **{name: "core.errors" for name in ("KnnguardError", "ArtefactError", "ConfigError", "SigningKeyError",
                                             "DatasetNotFound")}}


def __getattr__(name: str) -> Any:
    """``core.Detector`` and the rest of :data:`__all__`, imported from their home module when first asked for."""
    if name not in _HOMES:
        raise AttributeError(f"module 'core' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
