"""The run's report: detection tables (paper Tables 2 and 4), k sweep, set sizes, timings, findings.

Everything here is computed from the run folder's stored neighbours (never copied from anywhere);
``report.md`` is rendered from ``report.json`` and never hand-edited.
"""
from __future__ import annotations

import logging

import numpy as np

from core.artefacts import RunDir
from core.evaluation import RunData, detection_row, detection_table
from core.scoring import SCORE_FNS

__all__ = ["build_report", "render_markdown"]

log = logging.getLogger(__name__)

ITERATIVE = ("ifgsm", "pgd")


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and not np.isnan(x)]
    return float(np.mean(xs)) if xs else float("nan")


def _findings(rows: list[dict], layers: list[str], attacks: list[str]) -> list[dict]:
    """The paper's three findings, checked on this run (DW-kNN unless stated)."""
    by = {(r["layer"], r["mode"], r["fn"]): r for r in rows}
    out = []
    modes = {r["mode"] for r in rows}
    conv = [la for la in layers if "conv" in la or la.startswith(("features", "Mixed", "maxpool", "layer"))]
    if "pca" in modes and "none" in modes and conv:
        pca = _mean(by[(la, "pca", "dwknn")]["aggr"] for la in conv)
        none = _mean(by[(la, "none", "dwknn")]["aggr"] for la in conv)
        out.append({"claim": "PCA-whitening helps conv features (paper: pool5 70.4 -> 85.0 % with DW-kNN)",
                    "holds": bool(pca > none),
                    "evidence": f"mean Aggr. EER accuracy over conv layers {conv}: none {none:.1%}, PCA-whiten {pca:.1%}"})
    its = [a for a in attacks if a in ITERATIVE]
    if its and len(layers) > 1:
        mode = "pca" if "pca" in modes else sorted(modes)[0]
        acc = {la: _mean(by[(la, mode, "dwknn")]["attacks"].get(a, {}).get("eer_acc") for a in its) for la in layers}
        best = max(acc, key=lambda la: -1 if np.isnan(acc[la]) else acc[la])
        out.append({"claim": "a mid-depth layer beats the last one against iterative attacks (paper: Mixed_6d)",
                    "holds": bool(best != layers[-1]),
                    "evidence": f"mean EER accuracy on {its} ({mode}, DW-kNN): " +
                                ", ".join(f"{la} {v:.1%}" for la, v in acc.items()) + f"; best {best}"})
    knn = _mean(r["aggr"] for r in rows if r["fn"] == "knn")
    weighted = {fn: _mean(r["aggr"] for r in rows if r["fn"] == fn) for fn in ("wknn", "dwknn")}
    out.append({"claim": "weighted scores (W-kNN, DW-kNN) beat plain kNN",
                "holds": bool(max(weighted.values()) > knn),
                "evidence": f"mean Aggr. over every layer and processing: kNN {knn:.1%}, " +
                            ", ".join(f"{SCORE_FNS[f]} {v:.1%}" for f, v in weighted.items())})
    return out


def build_report(run: RunDir, cfg: dict) -> dict:
    """Compute the report dict of a run whose neighbours are stored."""
    data = RunData(run, verify=False)
    sc = cfg["scoring"]
    rows = detection_table(data, k=sc["k"])
    attacks = data.attack_sets
    modes = data.modes
    # Best processing overall (mean Aggr. across layers and score functions) -> Table-4-style block
    best_mode = max(modes, key=lambda m: _mean(r["aggr"] for r in rows if r["mode"] == m))
    per_layer = [r for r in rows if r["mode"] == best_mode]
    best = max(rows, key=lambda r: -1 if np.isnan(r["aggr"]) else r["aggr"])
    headline = {"best": {k: best[k] for k in ("layer", "mode", "fn", "k")} | {"aggr": best["aggr"]},
                "best_layer_per_attack": {}}
    for a in attacks:
        cands = [r for r in rows if r["fn"] == "dwknn" and a in r["attacks"]]
        if cands:
            r = max(cands, key=lambda r: r["attacks"][a]["eer_acc"])
            headline["best_layer_per_attack"][a] = {"layer": r["layer"], "mode": r["mode"],
                                                     "eer_acc": r["attacks"][a]["eer_acc"]}
    sweep = []
    for k in sorted(set(sc["k_sweep"]) | {sc["k"]}):
        for layer in data.layers:
            r = detection_row(data, layer, best_mode, sc["fn"], k)
            sweep.append({"k": k, "layer": layer, "mode": best_mode, "fn": sc["fn"], "aggr": r["aggr"],
                          "errors": r.get("errors", {}).get("eer_acc")})
    model = run.load_json("model.json")
    stages = {s: v["seconds"] for s, v in run.manifest["stages"].items()}
    return {"run": run.path.name, "model": model, "sets": run.manifest["summary"]["sets"], "k": sc["k"],
            "layers": data.layers, "modes": modes, "attacks": attacks, "best_mode": best_mode, "rows": rows,
            "per_layer": per_layer, "k_sweep": sweep, "headline": headline,
            "findings": _findings(rows, data.layers, attacks), "stage_seconds": stages}


def _pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.1f}"


def _table(rows: list[dict], attacks: list[str], first: tuple[str, ...]) -> list[str]:
    head = [*first, *attacks, "Aggr.", "Errors"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    cols = attacks + ["aggr", "errors"]
    best = {}
    for c in cols:
        vals = [(_val(r, c)) for r in rows]
        vals = [v for v in vals if v is not None and not np.isnan(v)]
        best[c] = max(vals) if vals else None
    for r in rows:
        cells = [str(r[f]) if f != "fn" else SCORE_FNS[r[f]].split(" ")[0] for f in first]
        for c in cols:
            v = _val(r, c)
            s = _pct(v)
            cells.append(f"**{s}**" if v is not None and best[c] is not None and v == best[c] else s)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _val(r: dict, c: str):
    if c == "aggr":
        return r["aggr"]
    if c == "errors":
        return r.get("errors", {}).get("eer_acc")
    return r["attacks"].get(c, {}).get("eer_acc")


def render_markdown(rep: dict) -> str:
    """``report.md`` from the report dict."""
    m, attacks = rep["model"], rep["attacks"]
    L = [f"# knnguard report: run `{rep['run']}`", "",
         "Generated by `python -m precompute` from the run's stored neighbours; do not edit by hand.", "",
         f"Model `{m['model']}`: test accuracy **{100 * m['test_accuracy']:.2f} %** "
         f"({m['n_train']} training, {m['n_test']} test images)." + (f" **{m['warning']}**" if m.get("warning") else ""),
         "", "EER accuracy (%) = 1 − equal error rate; positives = authentic images correctly classified (plus "
         "noisy ones still correct), negatives = each adversarial set; Aggr. = mean over attacks weighted by set "
         "sizes; Errors = authentic misclassified images as negatives. Best per column in bold.", "",
         "## Headline", "",
         f"Best setting overall: layer `{rep['headline']['best']['layer']}`, processing "
         f"`{rep['headline']['best']['mode']}`, {SCORE_FNS[rep['headline']['best']['fn']]}, k = {rep['k']}: "
         f"Aggr. **{_pct(rep['headline']['best']['aggr'])} %**.", "",
         "| attack | best layer (DW-kNN) | processing | EER acc. % |", "|---|---|---|---|"]
    for a, v in rep["headline"]["best_layer_per_attack"].items():
        L.append(f"| {a} | {v['layer']} | {v['mode']} | {_pct(v['eer_acc'])} |")
    L += ["", "## Evaluation sets", "",
          "Perturbation norms in [0, 1] pixel units, of the stored (uint8) images; success = the attack reached its "
          "target (untargeted: changed the prediction) after rounding to uint8.", "",
          "| set | images | attempted | success rate | mean L2 | mean L∞ | seconds | parameters |",
          "|---|---|---|---|---|---|---|---|"]
    for s, v in rep["sets"].items():
        sr = _pct(v.get("success_rate")) + " %" if "success_rate" in v else ""
        l2 = f"{v['mean_l2']:.3f}" if v.get("mean_l2") is not None else ""
        li = f"{v['mean_linf']:.3f}" if v.get("mean_linf") is not None else ""
        params = v.get("params") or {}
        shown = ", ".join(f"{k}={p}" for k, p in params.items() if k not in ("attack", "seed", "targeted"))
        secs = v.get("seconds")
        L.append(f"| {s} | {v['n']} | {v['attempted']} | {sr} | {l2} | {li} | {'' if secs is None else secs} | {shown} |")
    L += ["", f"## Table 2 style: layer × processing × score (k = {rep['k']})", ""]
    L += _table(rep["rows"], attacks, ("layer", "mode", "fn"))
    L += ["", f"## Table 4 style: per layer, processing `{rep['best_mode']}`", ""]
    L += _table(rep["per_layer"], attacks, ("layer", "fn"))
    L += ["", f"## k sweep (processing `{rep['best_mode']}`, {SCORE_FNS[rep['k_sweep'][0]['fn']]})", "",
          "| layer | " + " | ".join(f"k={k}" for k in sorted({r['k'] for r in rep['k_sweep']})) + " |",
          "|---|" + "---|" * len({r['k'] for r in rep['k_sweep']})]
    for layer in rep["layers"]:
        L.append(f"| {layer} | " + " | ".join(_pct(r["aggr"]) for r in rep["k_sweep"] if r["layer"] == layer) + " |")
    L += ["", "## The paper's findings on this run", ""]
    for f in rep["findings"]:
        L.append(f"- **{'Holds' if f['holds'] else 'Does not hold'}**: {f['claim']}. {f['evidence']}.")
    L += ["", "## Stage times (seconds, this machine)", "", "| stage | seconds |", "|---|---|"]
    L += [f"| {s} | {t:.1f} |" for s, t in rep["stage_seconds"].items()]
    return "\n".join(L) + "\n"
