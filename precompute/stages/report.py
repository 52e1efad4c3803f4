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

from core._util.threads import one_blas_thread
from core.evaluation.bootstrap import Estimate, SourceBootstrap
from core.evaluation.paper_figures import detection_row
from core.evaluation.report import honest_report, json_safe
from core.evaluation.rundata import ERRORS_SET, RunData
from core.evaluation.splits import split_sources
from core.knn import processing
from core.knn.scoring import SCORE_FNS
from core.peers.evaluate import detectors_report
from core.runs.folder import RunDir
from precompute.context import Context
from precompute.render import render_markdown

__all__ = ["build_report", "paper_tables", "processing_labels", "TableCI", "stage_report"]

log = logging.getLogger(__name__)



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
    with one_blas_thread():  # many small products: threads only contend
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
    """The report dict of a run whose neighbours are stored (the ``report.json`` schema: docs/report-schema.md)."""
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


def stage_report(ctx: Context) -> list[str]:
    """Split, operating point, per-attack figures with intervals, findings and the paper's tables on the test
    split -> report.json and report.md."""
    rep = build_report(ctx.run, ctx.cfg)
    ctx.run.save_json("report.json", rep)
    ctx.run.save_text("report.md", render_markdown(rep))
    summary = ctx.run.manifest["summary"]
    summary.pop("headline", None)
    summary["split"], summary["operating_point"] = rep["split"], rep["operating_point"]
    ctx.run.save_manifest()
    return ["report.json", "report.md"]
