"""The paper's three findings, tested per layer with paired bootstrap intervals of the difference.

Every difference is of the paper's metric, the **Aggr. EER accuracy on the test split**: the EER accuracy of
each attack set (its own oracle threshold, positives = the test positives) averaged with weights = set sizes,
computed on the sample and on each bootstrap replicate (the same source draws for both sides, so the interval
is of the paired difference). ``fn0`` and ``k0`` are the run's default score function and k; every finding but
the first is stated for each processing mode M of the run.

- ``whitening_helps`` (layer L, mode W = "pca" or "pca_nw"): Aggr(L, W, fn0, k0) - Aggr(L, "none", fn0, k0).
- ``mid_beats_last`` (layer L, every layer but the last; mode M): Aggr(L, M, fn0, k0) - Aggr(last, M, fn0, k0).
- ``wknn_beats_knn`` / ``dwknn_beats_knn`` (layer L, mode M): Aggr(L, M, "wknn" / "dwknn", k0) -
  Aggr(L, M, "knn", k0).

Each entry also gives the difference per attack set. The paper's direction is a positive difference. Verdict:
"holds" when the 95 % interval lies above 0, "reversed" when it lies below 0, "not shown" otherwise.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from core.evaluation.bootstrap import Estimate, SourceBootstrap
from core.evaluation.operating_point import Setting

__all__ = ["TestScores", "WHITENING_MODES", "verdict", "aggregate_eer", "findings", "reversals"]

log = logging.getLogger(__name__)

#: ``test_scores(setting) -> (pos (n_pos,), pos_source (n_pos,), {attack: (neg (n_a,), neg_source (n_a,))})``.
#: Processing modes compared with "none" by ``whitening_helps``.
WHITENING_MODES = ("pca", "pca_nw")

TestScores = Callable[[Setting], tuple[np.ndarray, np.ndarray, Mapping[str, tuple[np.ndarray, np.ndarray]]]]


def verdict(interval: Sequence[float]) -> str:
    """"holds" if ``lo > 0``, "reversed" if ``hi < 0``, else "not shown", for ``[value, lo, hi]``."""
    _, lo, hi = interval
    if lo > 0:
        return "holds"
    if hi < 0:
        return "reversed"
    return "not shown"


def aggregate_eer(bs: SourceBootstrap, pos: np.ndarray, pos_source: np.ndarray,
                  attacks: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> tuple[Estimate, dict[str, Estimate]]:
    """Aggr. EER accuracy and the per-attack EER accuracies (non-empty sets only), as bootstrap estimates.

    Parameters
    ----------
    bs : SourceBootstrap
    pos, pos_source : ndarray (n_pos,)
    attacks : mapping of name -> (scores (n_a,), sources (n_a,))

    Returns
    -------
    aggr : Estimate
    per_attack : dict of name -> Estimate
    """
    attacks = {k: v for k, v in attacks.items() if len(v[0])}
    per = {k: acc for k, (acc, _) in bs.roc_many(pos, pos_source, attacks).items()}
    sizes = [bs.total(bs.per_source(np.ones(len(src)), src)) for _, src in attacks.values()]
    return bs.aggregate(list(per.values()), sizes), per


def _entry(finding: str, layer: str, mode: str, a: tuple[Estimate, dict[str, Estimate]],
           b: tuple[Estimate, dict[str, Estimate]]) -> dict:
    d = (a[0] - b[0]).interval()
    per = {}
    for name in a[1]:
        if name in b[1]:
            di = (a[1][name] - b[1][name]).interval()
            per[name] = {"difference": di, "verdict": verdict(di)}
    return {"finding": finding, "layer": layer, "mode": mode, "difference": d, "verdict": verdict(d),
            "per_attack": per}


def findings(bs: SourceBootstrap, test_scores: TestScores, *, layers: Sequence[str], modes: Sequence[str],
             fns: Sequence[str], default: Setting) -> list[dict]:
    """Entries of the three findings, per layer and processing mode (see the module docstring).

    Parameters
    ----------
    bs : SourceBootstrap
        Over the test sources.
    test_scores : TestScores
        Test-split scores of a setting.
    layers : sequence of str
        In network order (the last is the "last layer").
    modes, fns : sequence of str
        Processing modes and score functions the run has; a finding needing an absent one is left out.
    default : Setting
        ``(layer and mode ignored, fn0, k0)``.

    Returns
    -------
    list of dict
        ``{"finding", "layer", "mode", "difference": [v, lo, hi], "verdict", "per_attack": {name:
        {"difference", "verdict"}}}``; for ``whitening_helps`` ``mode`` is the mode compared with "none".
    """
    cache: dict[Setting, tuple[Estimate, dict[str, Estimate]]] = {}

    def aggr(s: Setting) -> tuple[Estimate, dict[str, Estimate]]:
        if s not in cache:
            cache[s] = aggregate_eer(bs, *test_scores(s))
        return cache[s]

    _, _, fn0, k0 = default
    out: list[dict] = []
    if "none" in modes:
        for W in (m for m in WHITENING_MODES if m in modes):
            for L in layers:
                out.append(_entry("whitening_helps", L, W, aggr(Setting(L, W, fn0, k0)),
                                  aggr(Setting(L, "none", fn0, k0))))
    for M in modes:
        if len(layers) > 1:
            last = layers[-1]
            for L in layers[:-1]:
                out.append(_entry("mid_beats_last", L, M, aggr(Setting(L, M, fn0, k0)),
                                  aggr(Setting(last, M, fn0, k0))))
        if "knn" in fns:
            for weighted in ("wknn", "dwknn"):
                if weighted in fns:
                    for L in layers:
                        out.append(_entry(f"{weighted}_beats_knn", L, M, aggr(Setting(L, M, weighted, k0)),
                                          aggr(Setting(L, M, "knn", k0))))
    log.info("%d finding entries: %s", len(out), {v: sum(e["verdict"] == v for e in out)
                                                 for v in ("holds", "reversed", "not shown")})
    return out


def reversals(entries: Sequence[Mapping]) -> list[dict]:
    """Every reversed difference of :func:`findings`' entries, on the aggregate and per attack.

    Returns
    -------
    list of dict
        ``{"finding", "layer", "mode", "attack", "difference": [v, lo, hi]}``; ``attack`` is "aggr" for the
        aggregate, else the attack set's name.
    """
    out = []
    for e in entries:
        rows = [("aggr", e)] + list(e.get("per_attack", {}).items())
        for attack, r in rows:
            if r["verdict"] == "reversed":
                out.append({"finding": e["finding"], "layer": e["layer"], "mode": e.get("mode"), "attack": attack,
                            "difference": list(r["difference"])})
    return out
