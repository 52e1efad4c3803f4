"""The honest report of a run: split by source image, one operating point chosen on validation, test figures
with bootstrap 95 % intervals, and the paper's findings per layer (the ``report.json`` schema: docs/report-schema.md).

>>> rep = honest_report(RunData("data/runs/fmnist"), protocol="paper", target_tpr=0.95)      # doctest: +SKIP
>>> rep["attacks"]["fgsm"]["detection_rate"]                                                 # [v, lo, hi]
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from core._util.threads import one_blas_thread
from core.evaluation.bootstrap import SourceBootstrap
from core.evaluation.findings import aggregate_eer, findings, reversals
from core.evaluation.metrics import threshold_at_tpr
from core.evaluation.operating_point import (
    RULES,
    AttackItems,
    OperatingPoint,
    Setting,
    choose_operating_point,
    measure,
)
from core.evaluation.rundata import ERRORS_SET, POSITIVE_SETS, RunData
from core.evaluation.splits import SourceSplit, split_sources
from core.knn import scoring

__all__ = ["PROTOCOLS", "attempted_sources", "success_rates", "candidate_settings", "json_safe", "honest_report"]

log = logging.getLogger(__name__)


def attempted_sources(auth_source: np.ndarray, attempted: int, set_source: np.ndarray) -> tuple[np.ndarray,
                                                                                                np.ndarray, bool]:
    """Attack attempts per source image.

    The precompute attacks the first ``attempted`` authentic images. When the set's sources are all among them,
    those are the attempts (exact); otherwise each authentic source carries ``attempted / n_authentic``
    expected attempts (estimated).

    Parameters
    ----------
    auth_source : int ndarray (n_auth,)
        Sources of the authentic set, in stored order.
    attempted : int
        Number of attempts recorded for the set.
    set_source : int ndarray (n,)
        Sources of the set's stored items.

    Returns
    -------
    ids : int64 ndarray (m,)
    attempts : float64 ndarray (m,)
    exact : bool
    """
    auth_source = np.asarray(auth_source, dtype=np.int64)
    head = auth_source[:attempted]
    if attempted <= len(auth_source) and np.isin(set_source, head).all():
        return head, np.ones(len(head)), True
    return auth_source, np.full(len(auth_source), attempted / max(len(auth_source), 1)), False


def success_rates(true: np.ndarray, predicted: np.ndarray, target: np.ndarray, attempts: float) -> dict:
    """Attack success among ``attempts``: ``changed`` (prediction != true class) and ``target`` (prediction ==
    target; None for an untargeted set, all targets -1), from the stored items' arrays (n,); None when there
    were no attempts."""
    true, predicted, target = (np.asarray(a) for a in (true, predicted, target))
    rate = (lambda n: float(n / attempts) if attempts > 0 else None)
    targeted = bool(len(target)) and bool((target >= 0).any())
    return {"changed": rate(np.count_nonzero(predicted != true)),
            "target": rate(np.count_nonzero((predicted == target) & (target >= 0))) if targeted else None}


def candidate_settings(data: RunData, ks: Sequence[int] | None = None) -> list[Setting]:
    """Every (layer, mode, fn, k) of the run; ``ks`` defaults to the configured k and k sweep (<= k_max)."""
    sc = data.config.get("scoring", {})
    k_max = int(data.summary.get("k_max", sc.get("k_max", 0)))
    if ks is None:
        ks = sorted({int(sc.get("k", k_max)), *map(int, sc.get("k_sweep", []))})
    ks = [k for k in ks if 1 <= k <= k_max]
    return [Setting(L, m, f, k) for L in data.layers for m in data.modes for f in scoring.SCORE_FNS for k in ks]


def _default_setting(data: RunData) -> Setting:
    d = data.summary.get("defaults", {})
    sc = data.config.get("scoring", {})
    return Setting(data.layers[-1], d.get("mode", sc.get("mode", data.modes[0])), d.get("fn", sc.get("fn", "dwknn")),
                   int(d.get("k", sc.get("k", data.summary.get("k_max", 1)))))


#: How the operating point is set when the validation side has no adversarial to choose on.
FALLBACK = ("no adversarial on the validation side: the configured default setting, its threshold keeping "
            "target_tpr of the validation positives (0.5 without any)")


def _fallback_point(pos: np.ndarray, d: Setting, target_tpr: float, rule: str) -> OperatingPoint:
    """The configured default setting ``d`` with the threshold keeping ``target_tpr`` of ``pos`` (n,) (0.5 if none),
    trusting as the protocol's ``rule`` does (``score > t`` under ``nearest_eer``)."""
    th = threshold_at_tpr(pos, target_tpr) if np.size(pos) else 0.5
    op = OperatingPoint(d, th, float(target_tpr), float("nan"), float("nan"), rule)
    return OperatingPoint(d, th, float(target_tpr), float("nan"),
                          float(op.trusted(pos).mean()) if np.size(pos) else float("nan"), rule)


#: Evaluation protocols: name -> (positive sets, threshold rule of :data:`core.evaluation.operating_point.RULES`).
PROTOCOLS = {"paper": (POSITIVE_SETS, "target_tpr"), "authors": (("authentic",), "nearest_eer")}


class _SplitScores:
    """Scores of every set for a setting, cut by side; every fn and candidate k of a (layer, mode, set) at once."""

    def __init__(self, data: RunData, split: SourceSplit, ks: Sequence[int], positives: Sequence[str]):
        self.data, self.cache = data, {}
        self.ks = sorted(set(int(k) for k in ks))
        self.row = {k: i for i, k in enumerate(self.ks)}
        self.positive_sets = [n for n in positives if n in data.set_names]
        self.source = {s: np.asarray(data.evalset(s)["source"]) for s in data.set_names}
        self.masks = {side: {s: split.mask(self.source[s], side) for s in data.set_names}
                      for side in ("validation", "test")}

    def get(self, s: Setting, name: str, side: str) -> tuple[np.ndarray, np.ndarray]:
        key = (s.layer, s.mode, name)
        if key not in self.cache:
            nb = self.data.neighbours(name, s.layer, s.mode)
            self.cache[key] = scoring.score_table(nb.I, nb.D, self.data.train_labels,
                                                  self.data.evalset(name)["predicted"], self.ks)
        m = self.masks[side][name]
        return self.cache[key][s.fn][self.row[int(s.k)]][m], self.source[name][m]

    def positives(self, s: Setting, side: str) -> tuple[np.ndarray, np.ndarray]:
        parts = [self.get(s, n, side) for n in self.positive_sets]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def json_safe(x: Any) -> Any:
    """``x`` with NaN / infinite floats as None, numpy scalars as Python ones and tuples as lists."""
    if isinstance(x, Mapping):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def honest_report(data: RunData, *, protocol: str = "paper", validation_share: float = 0.5,
                  target_tpr: float = 0.95, seed: int = 0, n_boot: int = 1000,
                  ks: Sequence[int] | None = None) -> dict:
    """The honest report of a run (``report.json``, docs/report-schema.md: the protocol part, plus ``aggr``, ``errors``, ``timing``).

    Parameters
    ----------
    data : RunData
    protocol : {"paper", "authors"}
        ``paper``: positives = authentic and noise, threshold keeping ``target_tpr`` of validation positives;
        ``authors``: positives = authentic only, one threshold at the validation ROC point nearest FNR = FPR
        with the attack sets pooled (see :data:`core.evaluation.operating_point.RULES` for each rule and its choice).
    validation_share : float
        Share of source images on the validation side.
    target_tpr : float
        Share of validation positives the threshold keeps (``paper`` only).
    seed : int
        Seeds the split and the bootstrap draws.
    n_boot : int
        Bootstrap replicates.
    ks : sequence of int, optional
        Candidate k values (default: the configured k and k sweep).

    Returns
    -------
    dict
        JSON-safe (undefined values are None): ``protocol``, ``positives``, ``split``, ``operating_point``,
        ``attacks[name]`` (``success_changed``, ``success_target``, ``detection_rate``, ``guarded_success``,
        ``eer_accuracy``, ``auc``, ``n_test``, ``attempts_exact``), ``aggr``, ``errors``, ``findings``,
        ``reversals``, ``bootstrap``, ``timing``; every interval is ``[value, lo, hi]`` on the test split.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; use one of {list(PROTOCOLS)}")
    with one_blas_thread():  # many small products: threads only contend
        return _report(data, protocol, validation_share, target_tpr, seed, n_boot, ks)


def _report(data: RunData, protocol: str, validation_share: float, target_tpr: float, seed: int, n_boot: int,
            ks: Sequence[int] | None) -> dict:
    positive_sets, rule = PROTOCOLS[protocol]
    t0 = time.perf_counter()
    sets = data.set_names
    attack_sets = [a for a in data.attack_sets if len(data.evalset(a)["source"])]
    split = split_sources({s: data.evalset(s)["source"] for s in sets}, validation_share, seed)
    candidates = candidate_settings(data, ks)
    d = _default_setting(data)
    sc = _SplitScores(data, split, [c.k for c in candidates] + [d.k], positive_sets)

    def validation_scores(s: Setting) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return sc.positives(s, "validation")[0], {a: sc.get(s, a, "validation")[0] for a in attack_sets}

    try:
        op, criterion = choose_operating_point(candidates, validation_scores, target_tpr=target_tpr, rule=rule), None
    except ValueError:  # no adversarial (or no positive) on the validation side: nothing to choose on
        op, criterion = _fallback_point(sc.positives(d, "validation")[0], d, target_tpr, rule), FALLBACK
        log.warning("no validation adversarials to choose on: operating point = the configured default %s", d)
    t_choose = time.perf_counter()
    bs = SourceBootstrap(split.test, n_boot=n_boot, seed=seed)
    s = op.setting
    pos, pos_src = sc.positives(s, "test")
    items, success, exact = _test_attack_items(data, sc, split.test, bs, s, attack_sets)
    at = measure(bs, op.threshold, pos, pos_src, items, strict=op.strict)
    negs = {a: (items[a].scores, items[a].source) for a in attack_sets}
    aggr, _ = aggregate_eer(bs, pos, pos_src, negs)
    rocs = bs.roc_many(pos, pos_src, {a: v for a, v in negs.items() if len(v[0])})
    attacks = {}
    for a in attack_sets:
        acc, auc = rocs.get(a, (None, None))
        none3 = [None] * 3
        attacks[a] = {"success_changed": success[a]["changed"], "success_target": success[a]["target"],
                      "detection_rate": at["attacks"][a]["detection_rate"].interval(),
                      "guarded_success": at["attacks"][a]["guarded_success"].interval(),
                      "eer_accuracy": acc.interval() if acc else none3, "auc": auc.interval() if auc else none3,
                      "n_test": int(len(items[a].scores)), "attempts_exact": exact[a]}
    sizes = [bs.total(bs.per_source(np.ones(len(it.source)), it.source)) for it in items.values()]
    rej = [at["attacks"][a]["detection_rate"] for a in attack_sets]
    report = {
        "protocol": protocol,
        "positives": list(sc.positive_sets),
        "split": split.to_dict(),
        "operating_point": {"layer": s.layer, "processing": s.mode, "fn": s.fn, "k": int(s.k),
                            "threshold": op.threshold, "target_tpr": op.target_tpr,
                            "tpr_test": at["tpr"].interval(), "tpr_validation": op.tpr_validation,
                            "rule": op.rule, "trust": "score > threshold" if op.strict else "score >= threshold",
                            "criterion": criterion or RULES[op.rule], "criterion_validation": op.criterion},
        "attacks": attacks,
        "aggr": {"eer_accuracy": aggr.interval(),
                 "detection_rate": bs.aggregate(rej, sizes).interval() if rej else [None] * 3},
        "bootstrap": {"n_boot": int(n_boot), "seed": int(seed), "level": 0.95},
    }
    if ERRORS_SET in sets and sc.masks["test"][ERRORS_SET].any():
        e, e_src = sc.get(s, ERRORS_SET, "test")
        acc, auc = bs.roc(pos, pos_src, e, e_src)
        report["errors"] = {"detection_rate": bs.rate(~op.trusted(e), e_src).interval(),
                            "eer_accuracy": acc.interval(), "auc": auc.interval()}
    t_measure = time.perf_counter()

    def test_scores(t: Setting):
        return (*sc.positives(t, "test"), {a: sc.get(t, a, "test") for a in attack_sets})

    report["findings"] = findings(bs, test_scores, layers=data.layers, modes=data.modes,
                                  fns=list(scoring.SCORE_FNS), default=d)
    report["reversals"] = reversals(report["findings"])
    t1 = time.perf_counter()
    report["timing"] = {"choose_s": round(t_choose - t0, 3), "measure_s": round(t_measure - t_choose, 3),
                        "findings_s": round(t1 - t_measure, 3), "total_s": round(t1 - t0, 3)}
    log.info("honest report (%s) in %.2f s (choosing %.2f s, findings %.2f s)", protocol, t1 - t0,
             t_choose - t0, t1 - t_measure)
    return json_safe(report)


def _test_attack_items(data: RunData, sc: _SplitScores, test_sources: np.ndarray, bs: SourceBootstrap, s: Setting,
                       attack_sets: Sequence[str]) -> tuple[dict[str, AttackItems], dict[str, dict], dict[str, bool]]:
    """Per attack, its test-split items at setting ``s`` (scores, sources, fooled, attempts per bootstrap source),
    its success rates over the test attempts and whether the attempts per source are exact."""
    sets = data.set_names
    auth_source = np.asarray(data.evalset("authentic")["source"]) if "authentic" in sets else np.empty(0, np.int64)
    items, success, exact = {}, {}, {}
    for a in attack_sets:
        z = data.evalset(a)
        m = sc.masks["test"][a]
        attempted = int(z["attempted"]) if "attempted" in z else int(data.summary["sets"][a]["attempted"])
        ids, n_att, exact[a] = attempted_sources(auth_source, attempted, z["source"])
        on_test = np.isin(ids, test_sources)
        per = np.zeros(len(bs.sources))
        np.add.at(per, bs.positions(ids[on_test]), n_att[on_test])
        scores, src = sc.get(s, a, "test")
        items[a] = AttackItems(scores, src, np.asarray(z["predicted"])[m] != np.asarray(z["true"])[m], per)
        success[a] = success_rates(np.asarray(z["true"])[m], np.asarray(z["predicted"])[m],
                                   np.asarray(z["target"])[m], float(per.sum()))
    return items, success, exact
