"""The run's report: the honest figures of :func:`core.evaluation.report.honest_report` (split, operating point chosen on
validation, per-attack figures and findings with bootstrap intervals) and the paper's Tables 2 / 4 and k sweep
measured on the test split, each cell with its interval.

Everything here is computed from the run folder's stored neighbours (never copied from anywhere);
``report.md`` is rendered from ``report.json`` and never hand-edited.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from core.knn import processing
from core.runs.folder import RunDir
from core.evaluation.bootstrap import Estimate, SourceBootstrap
from core.peers.evaluate import detectors_report
from core.evaluation.rundata import ERRORS_SET, RunData
from core.evaluation.paper_figures import detection_row
from core.evaluation.report import honest_report, json_safe
from core.knn.scoring import SCORE_FNS
from core.evaluation.splits import split_sources

__all__ = ["build_report", "paper_tables", "render_markdown", "processing_labels", "TableCI"]

log = logging.getLogger(__name__)

#: What each finding of :mod:`core.evaluation.findings` claims (the paper's direction is a positive difference).
CLAIMS = {
    "whitening_helps": "PCA-whitening beats raw features (paper: pool5 70.4 -> 85.0 % with DW-kNN)",
    "mid_beats_last": "this layer beats the last one (paper: Mixed_6d against iterative attacks)",
    "wknn_beats_knn": "W-kNN beats plain kNN",
    "dwknn_beats_knn": "DW-kNN beats plain kNN",
}


class TableCI:
    """Paired bootstrap intervals of the paper's table cells on the test split.

    Parameters
    ----------
    test : RunData
        The test side of the split (:meth:`core.evaluation.paper_figures.RunData.restricted`).
    bs : SourceBootstrap
        Over the test sources.
    """

    def __init__(self, test: RunData, bs: SourceBootstrap):
        self.test, self.bs = test, bs
        self.negatives = [a for a in test.attack_sets if len(test.evalset(a)["source"])]
        self.has_errors = ERRORS_SET in test.set_names and len(test.evalset(ERRORS_SET)["source"]) > 0
        self.sizes = {a: bs.total(bs.per_source(np.ones(len(src)), src))
                      for a in self.negatives for src in [test.evalset(a)["source"]]}
        self.cache: dict[tuple, dict[str, list[float]]] = {}

    def __call__(self, layer: str, mode: str, fn: str, k: int) -> dict[str, list[float]]:
        """``{column: [lo, hi]}`` for every attack column, ``aggr`` and ``errors`` of one setting."""
        key = (layer, mode, fn, int(k))
        if key not in self.cache:
            t = self.test
            pos_sets = [s for s in t.positive_sets if s in t.set_names]
            pos = np.concatenate([t.scores(s, layer, mode, fn, k) for s in pos_sets] or [np.zeros(0)])
            src = np.concatenate([t.evalset(s)["source"] for s in pos_sets] or [np.zeros(0, np.int64)])
            negs = {a: (t.scores(a, layer, mode, fn, k), t.evalset(a)["source"]) for a in self.negatives}
            if self.has_errors:
                negs[ERRORS_SET] = (t.scores(ERRORS_SET, layer, mode, fn, k), t.evalset(ERRORS_SET)["source"])
            out: dict[str, list[float]] = {}
            if len(pos) and negs:
                rocs = self.bs.roc_many(pos, src, negs)
                accs: list[Estimate] = [rocs[a][0] for a in self.negatives]
                for a in self.negatives:
                    out[a] = rocs[a][0].interval()[1:]
                if accs:
                    out["aggr"] = self.bs.aggregate(accs, [self.sizes[a] for a in self.negatives]).interval()[1:]
                if self.has_errors:
                    out["errors"] = rocs[ERRORS_SET][0].interval()[1:]
            self.cache[key] = out
        return self.cache[key]


def processing_labels(run: RunDir, data: RunData) -> dict[str, dict[str, str]]:
    """``{layer: {mode: label}}``: the processing stage's labels, else :func:`core.knn.processing.describe` of the
    stored parameters."""
    labels = data.summary.get("processing_labels")
    if labels:
        return labels
    out: dict[str, dict[str, str]] = {}
    for layer in data.layers:
        d_in = int(run.load_npy(f"features/{layer}.npy", mmap=True, verify=False).shape[1])
        for mode in data.modes:
            out.setdefault(layer, {})[mode] = processing.describe(run.load_npz(f"processing/{layer}-{mode}.npz",
                                                                               verify=False), d_in)
    return out


def paper_tables(test: RunData, bs: SourceBootstrap, *, k: int, k_sweep: Sequence[int], fn: str,
                 mode: str) -> dict:
    """The paper's Tables 2 / 4 and k sweep on one side of the split, each cell with its interval.

    Parameters
    ----------
    test : RunData
        The side measured (:meth:`core.evaluation.paper_figures.RunData.restricted`), with the protocol's positives.
    bs : SourceBootstrap
        Over that side's sources.
    k : int
        k of the tables.
    k_sweep : sequence of int
    fn, mode : str
        Score function of the k sweep; processing of the per-layer table and the k sweep.

    Returns
    -------
    dict
        ``rows`` (:func:`core.evaluation.paper_figures.detection_row` of every layer, mode and score function, plus
        ``ci``: ``{column: [lo, hi]}``), ``per_layer`` (the rows of ``mode``), ``per_layer_mode`` and
        ``k_sweep`` (``{"k", "layer", "mode", "fn", "aggr", "errors", "ci"}``).
    """
    with threadpool_limits(limits=1, user_api="blas"):  # many small products: threads only contend
        ci = TableCI(test, bs)

        def row(layer: str, mo: str, f: str, kk: int) -> dict:
            return {**detection_row(test, layer, mo, f, kk), "ci": ci(layer, mo, f, kk)}

        rows = [row(la, m, f, k) for la in test.layers for m in test.modes for f in SCORE_FNS]
        sweep = []
        for kk in sorted(set(map(int, k_sweep)) | {int(k)}):
            for layer in test.layers:
                r = row(layer, mode, fn, kk)
                sweep.append({"k": kk, "layer": layer, "mode": mode, "fn": fn, "aggr": r["aggr"],
                              "errors": r.get("errors", {}).get("eer_acc"),
                              "ci": {c: v for c, v in r["ci"].items() if c in ("aggr", "errors")}})
    return {"rows": rows, "per_layer": [r for r in rows if r["mode"] == mode], "per_layer_mode": mode,
            "k_sweep": sweep}


def build_report(run: RunDir, cfg: dict) -> dict:
    """The report dict of a run whose neighbours are stored (the ``report.json`` contract of issue 12)."""
    t0 = time.perf_counter()
    data = RunData(run, verify=False)
    ev, sc, seed = cfg["evaluation"], cfg["scoring"], int(cfg["seed"])
    rep = honest_report(data, protocol=ev["protocol"], validation_share=ev["validation_share"],
                        target_tpr=ev["target_tpr"], seed=seed, n_boot=ev["n_boot"])
    t1 = time.perf_counter()
    split = split_sources({s: data.evalset(s)["source"] for s in data.set_names}, ev["validation_share"], seed)
    k, mode = int(sc["k"]), rep["operating_point"]["processing"]
    tables = paper_tables(data.restricted(split.test, positives=rep["positives"]),
                          SourceBootstrap(split.test, n_boot=ev["n_boot"], seed=seed), k=k, k_sweep=sc["k_sweep"],
                          fn=sc["fn"], mode=mode)
    rep.update(detectors_report(data, split, SourceBootstrap(split.test, n_boot=ev["n_boot"], seed=seed),
                                rep["positives"]))
    t2 = time.perf_counter()
    rep["timing"] = {**rep.get("timing", {}), "honest_s": round(t1 - t0, 3), "tables_s": round(t2 - t1, 3),
                     "report_s": round(t2 - t0, 3)}
    log.info("report in %.2f s (honest figures %.2f s, test-split tables %.2f s)", t2 - t0, t1 - t0, t2 - t1)
    stages = {s: v["seconds"] for s, v in run.manifest["stages"].items()}
    return json_safe({"run": run.path.name, "model": run.load_json("model.json"), "sets": data.summary["sets"],
                      "k": k, "layers": data.layers, "modes": data.modes, "attack_sets": data.attack_sets, **rep,
                      "processing_labels": processing_labels(run, data), **tables, "stage_seconds": stages})


# ------------------------------------------------------------------------------------------------ markdown
def _pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.1f}"


def _ci(v: Sequence | None, signed: bool = False) -> str:
    """``[v, lo, hi]`` as ``84.2 [82.9, 85.4]`` (percent; ``signed``: points with a sign)."""
    if not v or v[0] is None:
        return "–"
    f = (lambda x: "–" if x is None else f"{100 * x:+.1f}") if signed else _pct
    return f"{f(v[0])} [{f(v[1])}, {f(v[2])}]"


def _val(r: dict, c: str):
    if c == "aggr":
        return r["aggr"]
    if c == "errors":
        return r.get("errors", {}).get("eer_acc")
    return r["attacks"].get(c, {}).get("eer_acc")


def _table(rows: list[dict], attacks: list[str], first: tuple[str, ...]) -> list[str]:
    head = [*first, *attacks, "Aggr.", "Errors"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cols = attacks + ["aggr", "errors"]
    best = {}
    for c in cols:
        vals = [v for v in (_val(r, c) for r in rows) if v is not None and not np.isnan(v)]
        best[c] = max(vals) if vals else None
    for r in rows:
        cells = [str(r[f]) if f != "fn" else SCORE_FNS[r[f]].split(" ")[0] for f in first]
        for c in cols:
            v, lohi = _val(r, c), r.get("ci", {}).get(c)
            s = _ci([v, *lohi]) if lohi and v is not None else _pct(v)
            cells.append(f"**{s}**" if v is not None and best[c] is not None and v == best[c] else s)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(rep: dict) -> str:
    """``report.md`` from the report dict."""
    m, attacks, op = rep["model"], rep["attack_sets"], rep["operating_point"]
    labels = rep.get("processing_labels", {})
    sp, boot = rep["split"], rep.get("bootstrap", {})
    L = [f"# knnguard report: run `{rep['run']}`", "",
         "Generated by `python -m precompute` from the run's stored neighbours; do not edit by hand.", "",
         f"Model `{m['model']}`: test accuracy **{100 * m['test_accuracy']:.2f} %** "
         f"({m['n_train']} training, {m['n_test']} test images)." + (f" **{m['warning']}**" if m.get("warning") else ""),
         "", "Figures are percent on the **test split**, as `value [lo, hi]` with a 95 % interval of a paired "
         f"bootstrap over source images ({boot.get('n_boot', '?')} resamples).", "",
         "## Protocol and split", "",
         f"Protocol `{rep['protocol']}`: positives = {', '.join(rep['positives'])}; negatives = each adversarial "
         "set. The evaluation sets are split by source test image (an image, its noisy copy and its "
         f"adversarials on one side): **{sp['validation']}** validation and **{sp['test']}** test source images "
         f"(seed {sp['seed']}). Layer, processing, score, k and threshold are chosen on validation; every figure "
         "below is measured on test.", "",
         "## Operating point", "",
         f"Chosen on validation: layer `{op['layer']}`, processing `{op['processing']}` "
         f"({labels.get(op['layer'], {}).get(op['processing'], op['processing'])}), {SCORE_FNS[op['fn']]}, "
         f"k = {op['k']}; threshold **{op['threshold']:.4f}** (trust {op['trust']}).",
         "", f"Rule: {op.get('criterion', op.get('rule'))}.", "",
         f"TPR (positives trusted): validation {_pct(op.get('tpr_validation'))}, test **{_ci(op['tpr_test'])}**"
         + (f" (target {_pct(op['target_tpr'])})." if op.get("target_tpr") is not None else "."), "",
         f"All attacks: detection rate **{_ci(rep['aggr']['detection_rate'])}**, Aggr. EER accuracy "
         f"{_ci(rep['aggr']['eer_accuracy'])} (paper's metric, oracle threshold per attack)."
         + (f" Authentic errors rejected: {_ci(rep['errors']['detection_rate'])}." if rep.get("errors") else ""),
         "", "## Per attack (test split)", "",
         "Prediction changed / target reached: share of attack attempts whose stored (uint8) image is predicted "
         "other than its true class (the paper's success rule) / as its target (targeted attacks). Detection rate: "
         "adversarials rejected at the operating point. Guarded success: share of attempts that fool the CNN *and* "
         "are trusted. EER accuracy: the paper's metric, oracle threshold per attack.", "",
         "| attack | test images | prediction changed | target reached | detection rate | guarded success | "
         "EER accuracy (paper's metric, oracle threshold per attack) | AUC |", "|---|---|---|---|---|---|---|---|"]
    for a in attacks:
        v = rep["attacks"].get(a)
        if not v:
            continue
        L.append(f"| {a} | {v.get('n_test', '')} | {_pct(v['success_changed'])} | {_pct(v['success_target'])} | "
                 f"{_ci(v['detection_rate'])} | {_ci(v['guarded_success'])} | {_ci(v['eer_accuracy'])} | "
                 f"{_ci(v.get('auc'))} |")
    L += ["", "## The paper's findings on this run", "",
          "Difference of the Aggr. EER accuracy (points, test split, paired interval); **holds** where the interval "
          "lies above 0, **reversed** where it lies below 0, **not shown** otherwise.", "",
          "| finding | layer | mode | difference | verdict |", "|---|---|---|---|---|"]
    for f in rep["findings"]:
        L.append(f"| {CLAIMS.get(f['finding'], f['finding'])} | {f['layer']} | {f.get('mode') or ''} | "
                 f"{_ci(f['difference'], signed=True)} | {f['verdict']} |")
    L += ["", "Reversals (the interval excludes 0 against the paper's direction):", ""]
    L += [f"- {CLAIMS.get(r['finding'], r['finding'])}: layer `{r['layer']}`, mode `{r.get('mode')}`, "
          f"{'Aggr.' if r['attack'] == 'aggr' else r['attack']}: {_ci(r['difference'], signed=True)}"
          for r in rep.get("reversals", [])] or ["- none"]
    L += ["", "## Processing, named by what it does", "", "| layer | " + " | ".join(rep["modes"]) + " |",
          "|---|" + "---|" * len(rep["modes"])]
    L += [f"| {la} | " + " | ".join(labels.get(la, {}).get(mo, "") for mo in rep["modes"]) + " |"
          for la in rep["layers"]]
    L += ["", "## Evaluation sets", "",
          "Perturbation norms in [0, 1] pixel units, of the stored (uint8) images; prediction changed / target "
          "reached are shares of all attempts (every split side).", "",
          "| set | images | attempted | prediction changed | target reached | mean L2 | mean L∞ | seconds | "
          "parameters |", "|---|---|---|---|---|---|---|---|---|"]
    for s, v in rep["sets"].items():
        ch = _pct(v.get("success_changed")) if s in attacks else ""
        tg = _pct(v.get("success_target")) if s in attacks else ""
        l2 = f"{v['mean_l2']:.3f}" if v.get("mean_l2") is not None else ""
        li = f"{v['mean_linf']:.3f}" if v.get("mean_linf") is not None else ""
        params = v.get("params") or {}
        shown = ", ".join(f"{k}={p}" for k, p in params.items() if k not in ("attack", "seed"))
        secs = v.get("seconds")
        L.append(f"| {s} | {v['n']} | {v['attempted']} | {ch} | {tg} | {l2} | {li} | "
                 f"{'' if secs is None else secs} | {shown} |")
    L += ["", f"## Table 2 style: layer × processing × score (k = {rep['k']}), test split", "",
          "EER accuracy with the paper's oracle threshold per attack (and per row); Aggr. = mean over attacks "
          "weighted by set sizes; Errors = authentic misclassified images as negatives. Best per column in bold.", ""]
    L += _table(rep["rows"], attacks, ("layer", "mode", "fn"))
    L += ["", f"## Table 4 style: per layer, processing `{rep['per_layer_mode']}` (the operating point's), "
          "test split", ""]
    L += _table(rep["per_layer"], attacks, ("layer", "fn"))
    ks = sorted({r["k"] for r in rep["k_sweep"]})
    L += ["", f"## k sweep: Aggr. EER accuracy (processing `{rep['per_layer_mode']}`, "
          f"{SCORE_FNS[rep['k_sweep'][0]['fn']]}), test split", "",
          "| layer | " + " | ".join(f"k={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for layer in rep["layers"]:
        L.append(f"| {layer} | " + " | ".join(_ci([r["aggr"], *r["ci"]["aggr"]]) if r["ci"].get("aggr")
                                              else _pct(r["aggr"])
                                              for r in rep["k_sweep"] if r["layer"] == layer) + " |")
    L += _detectors_md(rep)
    L += ["", "## Stage times (seconds, this machine)", "", "| stage | seconds |", "|---|---|"]
    L += [f"| {s} | {t:.1f} |" for s, t in rep["stage_seconds"].items()]
    if rep.get("adaptive"):
        from precompute.adaptive_stage import render_adaptive

        L += render_adaptive(rep["adaptive"])
    return "\n".join(L) + "\n"


def _detectors_md(rep: dict) -> list[str]:
    """The "Detectors" section of ``report.md`` (empty when the run has none)."""
    dets, labels = rep.get("detectors") or {}, rep.get("detector_labels", {})
    if not dets:
        return []
    L = ["", "## Detectors (test split)", "",
         "Each detector at its own operating point, set on validation by the same rule as the kNN's; "
         "\"other attacks\" detectors are fitted on the validation adversarials of every attack but the one "
         "in the row (leave-one-attack-out). Errors: authentic errors rejected at that threshold. Fit: seconds; "
         "score: ms per image from stored features and neighbours (no forward pass, no search).", "",
         "| detector | attack | detection rate | guarded success | EER accuracy | AUC | Errors | fit s | "
         "score ms |", "|---|---|---|---|---|---|---|---|---|"]
    for e, per in dets.items():
        for a, v in per.items():
            L.append(f"| {labels.get(e, {}).get('label', e)} `{e}` | {a} | {_ci(v['detection_rate'])} | "
                     f"{_ci(v['guarded_success'])} | {_ci(v['eer_accuracy'])} | {_ci(v['auc'])} | "
                     f"{_ci(v.get('errors', {}).get('detection_rate'))} | {v['fit_s']:.2f} | {v['score_ms']:.4f} |")
    means = rep.get("detector_means", {})
    if means:
        L += ["", "Mean over attacks (equal weight, paired intervals):", "", "| detector | detection rate | AUC |",
              "|---|---|---|"]
        L += [f"| `{e}` | {_ci(m['detection_rate'])} | {_ci(m['auc'])} |" for e, m in means.items()]
    for comb, res in rep.get("detector_comparison", {}).items():
        L += ["", f"`{comb}` against the best single kNN layer on test (chosen on test, which favours the single "
              "layer); difference in points, paired interval:", "",
              "| attack | best layer | AUC difference | detection-rate difference | verdict (AUC) |",
              "|---|---|---|---|---|"]
        L += [f"| {a} | `{r['best_layer']}` | {_ci(r['auc_difference'], signed=True)} | "
              f"{_ci(r['detection_rate_difference'], signed=True)} | {r['verdict_auc']} |" for a, r in res.items()]
    return L
