"""The peer detectors on the test split, with the report's figures and intervals (``report["detectors"]``).

Every detector is measured as :func:`core.evaluation.report.honest_report` measures the kNN operating point: its stored
validation threshold, the same split and paired bootstrap over source images, the same fields per attack.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from core._util.threads import one_blas_thread
from core.evaluation.bootstrap import Estimate, SourceBootstrap
from core.evaluation.operating_point import AttackItems, measure
from core.evaluation.report import attempted_sources, json_safe, success_rates
from core.evaluation.rundata import ERRORS_SET, RunData
from core.evaluation.splits import SourceSplit
from core.peers import store

__all__ = ["detectors_report", "mean_estimate", "test_scores"]

log = logging.getLogger(__name__)

#: Detectors whose combination of the kNN layers is compared with the best single layer.
COMBINED = ("knn_lr", "knn_mean")


def mean_estimate(values: Sequence[Estimate]) -> Estimate:
    """Equal-weight mean of estimates, replicate by replicate (paired)."""
    return Estimate(float(np.mean([e.value for e in values])), np.mean([e.replicates for e in values], axis=0))


def _verdict(iv: list) -> str:
    return "beats" if iv[1] > 0 else "loses" if iv[2] < 0 else "not shown"


def detectors_report(data: RunData, split: SourceSplit, bs: SourceBootstrap, positives: Sequence[str]) -> dict:
    """``{"detectors": {entry: {attack: fields}}, "detector_labels", "detector_means", "detector_comparison"}``.

    Parameters
    ----------
    data : RunData
        The whole run.
    split : SourceSplit
    bs : SourceBootstrap
        Over the test sources.
    positives : sequence of str
        The protocol's positive sets.

    Returns
    -------
    dict
        JSON-safe; empty when the run stores no detector. Per attack: ``success_changed``, ``success_target``,
        ``detection_rate``, ``guarded_success``, ``eer_accuracy``, ``auc`` (``[value, lo, hi]``), ``n_test``,
        ``attempts_exact``, ``errors`` (``detection_rate``, ``eer_accuracy``, ``auc``), ``threshold``, ``fit``
        (which fit), ``fit_s``, ``score_ms`` (per image).
    """
    metas = store.entries(data.run)
    if not metas:
        return {}
    with one_blas_thread():
        return json_safe(_report(data, split, bs, positives, metas))


def _report(data: RunData, split: SourceSplit, bs: SourceBootstrap, positives: Sequence[str], metas: dict) -> dict:
    src = {s: np.asarray(data.evalset(s)["source"]) for s in data.set_names}
    test = {s: split.mask(src[s], "test") for s in data.set_names}
    attacks = [a for a in data.attack_sets if test[a].any()]
    pos_sets = [s for s in positives if s in src]
    pos_src = np.concatenate([src[s][test[s]] for s in pos_sets] or [np.zeros(0, np.int64)])
    auth = src.get("authentic", np.empty(0, np.int64))
    base: dict[str, dict] = {}
    for a in attacks:
        z = data.evalset(a)
        m = test[a]
        attempted = int(z["attempted"]) if "attempted" in z else int(data.summary["sets"][a]["attempted"])
        ids, n_att, exact = attempted_sources(auth, attempted, z["source"])
        on_test = np.isin(ids, split.test)
        per = np.zeros(len(bs.sources))
        np.add.at(per, bs.positions(ids[on_test]), n_att[on_test])
        true, pred = np.asarray(z["true"])[m], np.asarray(z["predicted"])[m]
        base[a] = {"fooled": pred != true, "attempts": per, "exact": exact,
                   "success": success_rates(true, pred, np.asarray(z["target"])[m], float(per.sum()))}
    has_errors = ERRORS_SET in test and test[ERRORS_SET].any()
    out, est = {}, {}
    none3 = [None] * 3
    for entry, meta in metas.items():
        out[entry], est[entry] = {}, {}
        strict = meta["rule"] == "nearest_eer"
        by_fit: dict[str, list[str]] = {}
        for a in attacks:
            by_fit.setdefault(store.fit_for(meta, a), []).append(a)
        for fit, fit_attacks in by_fit.items():  # one measure and one ROC pass per fit
            sc = store.load_scores(data.run, entry, fit)
            th = float(meta["fits"][fit]["threshold"])
            pos = np.concatenate([sc[s][test[s]] for s in pos_sets] or [np.zeros(0)])
            items = {a: AttackItems(sc[a][test[a]], src[a][test[a]], base[a]["fooled"], base[a]["attempts"])
                     for a in fit_attacks}
            at = measure(bs, th, pos, pos_src, items, strict=strict)["attacks"]
            negs = {a: (it.scores, it.source) for a, it in items.items()}
            if has_errors:
                negs[ERRORS_SET] = (sc[ERRORS_SET][test[ERRORS_SET]], src[ERRORS_SET][test[ERRORS_SET]])
            rocs = bs.roc_many(pos, pos_src, negs) if len(pos) else {}
            err = None
            if has_errors:
                e, e_src = negs[ERRORS_SET]
                e_acc, e_auc = rocs.get(ERRORS_SET, (None, None))
                err = {"detection_rate": bs.rate(~(e > th if strict else e >= th), e_src).interval(),
                       "eer_accuracy": e_acc.interval() if e_acc else none3,
                       "auc": e_auc.interval() if e_auc else none3}
            for a in fit_attacks:
                b = base[a]
                acc, auc = rocs.get(a, (None, None))
                row = {"success_changed": b["success"]["changed"], "success_target": b["success"]["target"],
                       "detection_rate": at[a]["detection_rate"].interval(),
                       "guarded_success": at[a]["guarded_success"].interval(),
                       "eer_accuracy": acc.interval() if acc else none3, "auc": auc.interval() if auc else none3,
                       "n_test": int(len(items[a].scores)), "attempts_exact": b["exact"], "threshold": th,
                       "fit": fit, "fit_s": meta["fits"][fit]["fit_s"], "score_ms": meta["fits"][fit]["score_ms"]}
                if err is not None:
                    row["errors"] = err
                out[entry][a] = row
                if auc is not None:
                    est[entry][a] = {"auc": auc, "detection_rate": at[a]["detection_rate"]}
        out[entry] = {a: out[entry][a] for a in attacks}
    means = {e: {f: mean_estimate([v[f] for v in est[e].values()]).interval() for f in ("auc", "detection_rate")}
             for e in est if est[e]}
    return {"detectors": out,
            "detector_labels": {e: {"label": m["label"], "name": m["name"], "supervised": m["supervised"]}
                                for e, m in metas.items()},
            "detector_means": means, "detector_comparison": _comparison(est, attacks)}


def _comparison(est: dict, attacks: list[str]) -> dict:
    """Each combined kNN against the best single kNN layer on test (per attack and over attacks, by AUC),
    with the paired interval of the difference; picking the best on test favours the single layer."""
    singles = [e for e in est if e.startswith("knn-") and est[e]]
    out: dict = {}
    if not singles:
        return out
    for comb in (c for c in COMBINED if est.get(c)):
        res = {}
        for a in [*attacks, "mean"]:
            def get(e: str, f: str) -> Estimate | None:
                if a == "mean":
                    return mean_estimate([v[f] for v in est[e].values()]) if len(est[e]) == len(attacks) else None
                return est[e].get(a, {}).get(f)

            cands = [(e, get(e, "auc")) for e in singles]
            cands = [(e, v) for e, v in cands if v is not None]
            if not cands or get(comb, "auc") is None:
                continue
            best = max(cands, key=lambda t: t[1].value)[0]
            d_auc = (get(comb, "auc") - get(best, "auc")).interval()
            d_dr = (get(comb, "detection_rate") - get(best, "detection_rate")).interval()
            res[a] = {"best_layer": best, "auc_difference": d_auc, "detection_rate_difference": d_dr,
                      "verdict_auc": _verdict(d_auc), "verdict_detection_rate": _verdict(d_dr)}
        out[comb] = res
    return out


def test_scores(data: RunData, split: SourceSplit, positives: Sequence[str], entry: str,
                attack: str) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """Test-side scores of detector ``entry`` as reported against ``attack``.

    Returns
    -------
    pos : float ndarray (n_pos,)
        Scores of the test positives (the protocol's ``positives``).
    neg : float ndarray (n_neg,)
        Scores of the attack's test adversarials.
    threshold : float
        The fit's validation threshold.
    strict : bool
        Trust ``score > threshold`` (else ``>=``).
    """
    meta = data.run.load_json(store.meta_rel(entry))
    fit = store.fit_for(meta, attack)
    sc = store.load_scores(data.run, entry, fit)

    def side(s: str) -> np.ndarray:
        return sc[s][split.mask(data.evalset(s)["source"], "test")] if s in sc else np.zeros(0)

    pos = np.concatenate([side(s) for s in positives if s in data.set_names] or [np.zeros(0)])
    return pos, side(attack), float(meta["fits"][fit]["threshold"]), meta["rule"] == "nearest_eer"
