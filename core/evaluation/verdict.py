"""Verdicts at per-layer thresholds: the trust rule of a run's protocol, the thresholds chosen on validation for
every layer, and one overall verdict from the layers' verdicts.

>>> th = validation_thresholds(data, "l2", "wknn", 500)                                   # doctest: +SKIP
>>> overall_verdict(scores, th, how="any", operating_layer="conv3", strict=False).trusted  # doctest: +SKIP
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from core.evaluation.metrics import threshold_at_tpr, trusted
from core.evaluation.operating_point import nearest_eer_threshold
from core.evaluation.report import PROTOCOLS
from core.evaluation.rundata import RunData
from core.evaluation.setting_figures import EvaluationConfig
from core.evaluation.splits import split_sources

__all__ = ["COMBINATIONS", "is_strict", "trusts", "trust_text", "Overall", "overall_verdict",
           "validation_thresholds"]

log = logging.getLogger(__name__)

#: How the layers' verdicts make one: key -> label.
COMBINATIONS = {"validation": "the configuration chosen on validation",
                "any": "any layer rejects",
                "majority": "majority of layers"}


def is_strict(config: Mapping) -> bool:
    """Whether a run's protocol (``config["evaluation"]["protocol"]``) trusts ``score > threshold``."""
    protocol = EvaluationConfig.from_config(config).protocol
    return PROTOCOLS.get(protocol, PROTOCOLS["paper"])[1] == "nearest_eer"


def trusts(score: float, threshold: float, strict: bool) -> bool:
    """Whether ``score`` is trusted at ``threshold`` (``>`` when ``strict``, else ``>=``; NaN counts as 0)."""
    return bool(trusted([score], threshold, strict=strict)[0])


def trust_text(strict: bool) -> str:
    """The trust rule in words: ``"score > threshold"`` or ``"score ≥ threshold"``."""
    return "score > threshold" if strict else "score ≥ threshold"


@dataclass(frozen=True)
class Overall:
    """One verdict from the layers'.

    Attributes
    ----------
    trusted : bool
    how : str
        A key of :data:`COMBINATIONS`.
    rejecting : list of str
        Layers that reject, in the given order.
    layers : list of str
        Layers that voted (``how="validation"``: the operating layer only).
    """

    trusted: bool
    how: str
    rejecting: list[str]
    layers: list[str]


def overall_verdict(scores: Mapping[str, float], thresholds: Mapping[str, float], *, how: str = "validation",
                    operating_layer: str, strict: bool) -> Overall:
    """Combine per-layer verdicts.

    Parameters
    ----------
    scores, thresholds : mapping layer -> float
        Same keys; the layers vote in the order of ``scores``.
    how : {"validation", "any", "majority"}
        ``validation``: the verdict of ``operating_layer``; ``any``: rejected when any layer rejects;
        ``majority``: rejected when more than half of the layers reject.
    operating_layer : str
        The layer of the configuration chosen on validation (a key of ``scores``).
    strict : bool
        Trust ``score > threshold`` (else ``>=``).

    Returns
    -------
    Overall

    Raises
    ------
    ValueError
        On an unknown ``how`` or an ``operating_layer`` without a score.
    """
    if how not in COMBINATIONS:
        raise ValueError(f"unknown combination {how!r}; use one of {list(COMBINATIONS)}")
    if operating_layer not in scores:
        raise ValueError(f"operating layer {operating_layer!r} has no score")
    layers = [operating_layer] if how == "validation" else list(scores)
    rejecting = [la for la in layers if not trusts(scores[la], thresholds[la], strict)]
    if how == "majority":
        trusted = 2 * len(rejecting) <= len(layers)
    else:
        trusted = not rejecting
    return Overall(trusted, how, rejecting, layers)


def validation_thresholds(data: RunData, mode: str, fn: str, k: int, *, layers: Sequence[str] | None = None,
                          scores: Callable[[str, str, str, str, int], np.ndarray] | None = None
                          ) -> dict[str, float]:
    """Each layer's threshold set on the validation split by the run's protocol rule, at one setting.

    The rule, positives, split and target TPR are those of the run's report (:mod:`core.evaluation.report`), so the
    threshold of the operating point's setting is the report's.

    Parameters
    ----------
    data : RunData
    mode, fn, k : str, str, int
        The setting (processing, score function, k) shared by every layer.
    layers : sequence of str, optional
        Default: every layer of the run.
    scores : callable, optional
        ``(set, layer, mode, fn, k) -> scores (n,)`` (default ``data.scores``).

    Returns
    -------
    dict of layer -> float
        NaN for a layer without validation positives (or negatives under the authors' rule).

    Raises
    ------
    ValueError
        If a set has no ``source`` array (a run older than the split).
    """
    score = scores or data.scores
    c = EvaluationConfig.from_config(data.config)
    positives, rule = PROTOCOLS.get(c.protocol, PROTOCOLS["paper"])
    sets = data.set_names
    if any("source" not in data.evalset(s) for s in sets):
        raise ValueError("the run's sets have no source ids; rebuild the run")
    split = split_sources({s: data.evalset(s)["source"] for s in sets}, c.validation_share, c.seed)
    val = {s: split.mask(data.evalset(s)["source"], "validation") for s in sets}
    attacks = [a for a in data.attack_sets if val[a].any()]
    out = {}
    for layer in layers or data.layers:
        def side(name: str) -> np.ndarray:
            return np.asarray(score(name, layer, mode, fn, int(k)))[val[name]]

        pos = np.concatenate([side(s) for s in positives if s in sets] or [np.zeros(0)])
        if rule == "nearest_eer":
            neg = np.concatenate([side(a) for a in attacks] or [np.zeros(0)])
            out[layer] = nearest_eer_threshold(pos, neg)["threshold"]
        else:
            out[layer] = threshold_at_tpr(pos, c.target_tpr)
    log.debug("validation thresholds at %s/%s/k=%d: %s", mode, fn, k, out)
    return out
