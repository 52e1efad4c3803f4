"""The precompute stages, one module each, and their one registry :data:`STAGES` (in pipeline order).

Order: ``data → train → features → processing → index → evalsets → neighbours → detectors → thumbs → report →
adaptive``. Each stage is a function ``stage(ctx) -> [files written]`` over the shared inputs of
:class:`precompute.context.Context`; :mod:`precompute.runner` runs them, skips the ones whose input key and files
match the manifest, and resumes a killed run.
"""
from __future__ import annotations

from collections.abc import Callable

from core.config.schema import ATTACK_SECTION, EXTERNAL_SECTION
from precompute.context import Context
from precompute.stages.adaptive import stage_adaptive
from precompute.stages.data import stage_data
from precompute.stages.detectors import stage_detectors
from precompute.stages.evalsets import stage_evalsets
from precompute.stages.features import stage_features
from precompute.stages.index import stage_index
from precompute.stages.neighbours import stage_neighbours
from precompute.stages.processing import stage_processing
from precompute.stages.report import stage_report
from precompute.stages.thumbs import stage_thumbs
from precompute.stages.train import stage_train

__all__ = ["STAGES", "STAGE_NAMES", "STAGE_VERSIONS"]

#: (name, function, config sections whose values are the stage's inputs)
STAGES: list[tuple[str, Callable[[Context], list[str]], tuple[str, ...]]] = [
    ("data", stage_data, ("seed", "data")),
    ("train", stage_train, ("model",)),
    ("features", stage_features, ("features",)),
    ("processing", stage_processing, ("processing",)),
    ("index", stage_index, ("index", "scoring.k_max")),
    ("evalsets", stage_evalsets, ("evalsets", ATTACK_SECTION, EXTERNAL_SECTION)),
    ("neighbours", stage_neighbours, ("scoring.k_max",)),
    ("detectors", stage_detectors, ("detectors", "scoring", "processing.modes", "evaluation")),
    ("thumbs", stage_thumbs, ("thumbs", "scoring.mode")),
    ("report", stage_report, ("scoring", "evaluation")),
    ("adaptive", stage_adaptive, ("adaptive",)),
]
STAGE_NAMES = [s[0] for s in STAGES]
#: Stages whose artefacts changed meaning; a run made before keeps its stale key and is recomputed from there.
#: processing 2: labels of what each fit does; evalsets 2: the paper's success rule (prediction changed);
#: detectors 2: the validation / test split no longer depends on the order of the sets (the first stage that splits).
STAGE_VERSIONS = {"processing": 2, "evalsets": 2, "detectors": 2}
