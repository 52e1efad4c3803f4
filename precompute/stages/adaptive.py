"""The ``adaptive`` stage: attack the guarded model (CNN + detector at the report's operating point).

On the first ``adaptive.n`` authentic images of the report's test split, each with a seeded random wrong target:

- the guarded-success curve over the L∞ and L2 budgets for three variants: ``oblivious`` (the same PGD with
  ``lam = 0``), ``adaptive_layer`` (surrogate at the operating point's layer) and ``adaptive_all`` (every tapped
  layer); guarded success = the CNN is fooled (prediction != true class) and the operating point trusts it;
- the median extra L2 the detector forces, the CW confidence sweep and the attack's sanity checks.

Files: ``adaptive/results.npz`` (per item), ``adaptive/summary.json``, ``adaptive/curve.png``; the summary is also
written into ``report.json`` as ``report["adaptive"]`` and rendered in ``report.md``.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from core._util.threads import one_torch_thread
from core.attacks import (
    AdaptiveL2,
    AdaptiveLinf,
    CarliniL2,
    KnnSurrogate,
    quantise,
    to_uint8,
)
from core.data.datasets import to_float
from core.detector import Detector
from core.evaluation.bootstrap import SourceBootstrap
from core.evaluation.operating_point import OperatingPoint, Setting
from core.evaluation.report import json_safe
from core.evaluation.rundata import RunData
from core.evaluation.splits import split_sources
from precompute.render import VARIANTS, render_markdown

__all__ = ["NORMS", "unbounded", "stage_adaptive", "operating_point", "guarded"]

log = logging.getLogger(__name__)

#: Attack variants, in display order: name -> what it aims at.
#: Norms: name -> attack class.
NORMS = {"linf": AdaptiveLinf, "l2": AdaptiveL2}
def unbounded(norm: str, x: np.ndarray) -> float:
    """The budget of the sanity check that bounds nothing: the whole [0, 1] box (L2: its diagonal)."""
    return 1.0 if norm == "linf" else float(np.sqrt(x[0].size)) if len(x) else 1.0


def operating_point(report: dict) -> OperatingPoint:
    """The report's operating point as an :class:`~core.evaluation.operating_point.OperatingPoint`."""
    o = report["operating_point"]
    return OperatingPoint(Setting(o["layer"], o["processing"], o["fn"], int(o["k"])), float(o["threshold"]),
                          o.get("target_tpr"), float(o.get("criterion_validation") or np.nan),
                          float(o.get("tpr_validation") or np.nan), o.get("rule", "target_tpr"))


def guarded(det: Detector, op: OperatingPoint, x_adv: np.ndarray, true: np.ndarray) -> dict[str, np.ndarray]:
    """Score stored (uint8-rounded) adversarials at ``op``: ``fooled``, ``trusted``, ``guarded`` (bool (n,)),
    ``score`` (n,) and ``predicted`` (n,); ``x_adv`` float (n, C, H, W)."""
    s = op.setting
    out = det.score(to_uint8(x_adv), mode=s.mode, fn=s.fn, k=s.k, layers=[s.layer])
    score = out.scores[s.layer]
    fooled = out.predicted != true
    trusted = op.trusted(score)
    return {"fooled": fooled, "trusted": trusted, "guarded": fooled & trusted, "score": score,
            "predicted": out.predicted}


def _norms(x: np.ndarray, x_adv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2 and L∞ norms (n,) of the stored (uint8-rounded) perturbations, shapes (n, C, H, W)."""
    d = quantise(x_adv) - x
    return np.linalg.norm(d.reshape(len(d), -1), axis=1), np.abs(d.reshape(len(d), -1)).max(1)


def _sources(ctx: Any, report: dict, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images float (n, C, H, W), true (n,), source ids (n,)) of the first ``n`` test-side authentic images."""
    data = RunData(ctx.run, verify=False)
    ev = ctx.cfg["evaluation"]
    split = split_sources({s: data.evalset(s)["source"] for s in data.set_names}, ev["validation_share"],
                          int(ctx.cfg["seed"]))
    z = data.evalset("authentic")
    m = np.flatnonzero(split.mask(z["source"], "test"))[:n]
    return to_float(np.asarray(z["images"])[m]), np.asarray(z["true"])[m].astype(np.int64), \
        np.asarray(z["source"])[m].astype(np.int64)


def stage_adaptive(ctx: Any) -> list[str]:
    """Run the adaptive attacks on the guarded model; write the artefacts and ``report["adaptive"]``."""
    with one_torch_thread():  # small batches, many steps: extra threads only contend
        return _stage(ctx)


def _stage(ctx: Any) -> list[str]:
    a = ctx.cfg["adaptive"]
    t0 = time.perf_counter()
    report = ctx.run.load_json("report.json")
    op = operating_point(report)
    man = ctx.run.manifest["summary"]
    layers = list(man["layers"])
    det = Detector(ctx.run, ctx.model(), ctx.run.load_json("classes.json"), ctx.run.load_npy("train_labels.npy"),
                   layers, dict(man["defaults"]), verify=False)
    x, true, src = _sources(ctx, report, a["n"])
    if not len(x):
        log.info("adaptive stage: no source image (adaptive.n = %d), nothing to attack", a["n"])
        if report.pop("adaptive", None) is not None:  # an earlier build's results no longer describe this config
            ctx.run.save_json("report.json", report)
            ctx.run.save_text("report.md", render_markdown(report))
        return []
    n_classes = len(det.classes)
    rng = np.random.default_rng(int(ctx.cfg["seed"]))
    target = (true + rng.integers(1, n_classes, len(true))) % n_classes
    sk = {"k": a["k"], "k_class": a["k_class"], "tau": a["tau"]}
    surs = {"adaptive_layer": KnnSurrogate.from_detector(det, layers=[op.setting.layer], mode=op.setting.mode, **sk),
            "adaptive_all": KnnSurrogate.from_detector(det, layers=layers, mode=op.setting.mode, **sk)}
    common = {"steps": a["steps"], "restarts": a["restarts"], "kappa": a["kappa"], "refresh": a["refresh"]}
    arrays: dict[str, np.ndarray] = {"source": src, "true": true, "target": target}
    seed = int(ctx.cfg["seed"])
    traces: dict[str, list[float]] = {}

    def attack(norm: str, variant: str, eps: float, todo: np.ndarray, steps: int | None = None,
               restarts: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Attack the images ``todo``; the adaptive variants stop per image at guarded success."""
        lam = 0.0 if variant == "oblivious" else float(a["lam"])
        stop = None if variant == "oblivious" else \
            (lambda xa, rows: guarded(det, op, xa, true[todo[rows]])["guarded"])
        atk = NORMS[norm](surs.get(variant), stop=stop, eps=float(eps), lam=lam,
                          **{**common, "steps": steps or a["steps"], "restarts": restarts or a["restarts"]})
        res = atk(det.model, x[todo], target=target[todo], seed=seed)
        return res.x_adv, atk.trace.mean(0)

    oblivious_adv: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    def curve(norm: str, variant: str, budgets: list[float]) -> list[dict[str, np.ndarray]]:
        """Budgets from small to large. An adaptive variant keeps a success for the larger budgets and starts
        from the oblivious attack's guarded successes at the same budget (it knows the detector's verdict)."""
        x_adv, ok, rows = x.copy(), np.zeros(len(x), dtype=bool), []
        for j, eps in enumerate(budgets):
            todo = np.arange(len(x))
            if variant != "oblivious":
                ob_adv, ob_ok = oblivious_adv[norm][j]
                take = ob_ok & ~ok
                x_adv[take], ok = ob_adv[take], ok | take
                todo = np.flatnonzero(~ok)
            trace = np.zeros(0)
            if len(todo):
                x_adv[todo], trace = attack(norm, variant, eps, todo)
            g = guarded(det, op, x_adv, true)
            g["l2"], g["linf"] = _norms(x, x_adv)
            g["trace"], g["budget"], g["attacked"] = trace, np.float64(eps), np.int64(len(todo))
            if variant == "oblivious":
                oblivious_adv.setdefault(norm, []).append((x_adv.copy(), g["guarded"]))
            else:
                ok = g["guarded"]
            rows.append(g)
        return rows

    n_boot = int(ctx.cfg["evaluation"]["n_boot"])
    bs = SourceBootstrap(src, n_boot=n_boot, seed=seed) if len(src) else None
    ci = (lambda flags: bs.rate(flags, src).interval() if bs is not None else [None] * 3)
    curves: dict[str, dict] = {}
    for norm in NORMS:
        budgets = [float(b) for b in a[norm]]
        for variant in VARIANTS:
            rows = curve(norm, variant, budgets)
            for key in ("guarded", "fooled", "trusted", "score", "l2", "linf"):
                arrays[f"{variant}-{norm}-{key}"] = np.stack([r[key] for r in rows]) if rows else np.zeros((0, len(src)))
            traces[f"{variant}-{norm}"] = [r["trace"].tolist() for r in rows if len(r["trace"])]
            curves.setdefault(variant, {})[norm] = {
                "budgets": budgets, "guarded_success": [ci(r["guarded"]) for r in rows],
                "cnn_success": [ci(r["fooled"]) for r in rows],
                "detected_of_fooled": [float((r["fooled"] & ~r["trusted"]).sum() / max(r["fooled"].sum(), 1))
                                       for r in rows]}
    t_curves = time.perf_counter()
    def run_unbounded(norm: str) -> dict[str, np.ndarray]:
        todo = np.arange(len(x))
        x_adv, _ = attack(norm, "adaptive_layer", unbounded(norm, x), todo, a["unbounded_steps"],
                          a["unbounded_restarts"])
        g = guarded(det, op, x_adv, true)
        g["l2"], g["linf"] = _norms(x, x_adv)
        g["budget"] = np.float64(unbounded(norm, x))
        return g

    sanity = _sanity(a, arrays, curves, traces, run_unbounded, ci)

    def first_success_l2(variant: str) -> tuple[np.ndarray, np.ndarray]:
        """L2 (n,) of each image's first successful iterate of one early-stopping L2 PGD from the image itself
        (radius the largest L2 budget, ``unbounded_steps`` steps, success checked every ``refresh`` steps), and
        the success flags:
        oblivious = the CNN says the target; adaptive_layer = guarded success."""
        if variant == "oblivious":
            stop = (lambda xa, rows: np.ones(len(rows), dtype=bool))
        else:
            stop = (lambda xa, rows: guarded(det, op, xa, true[rows])["guarded"])
        lam = 0.0 if variant == "oblivious" else float(a["lam"])
        atk = AdaptiveL2(surs.get(variant), stop=stop, random_start=False, eps=float(max(a["l2"])), lam=lam,
                         **{**common, "steps": a["unbounded_steps"], "restarts": 1})
        res = atk(det.model, x, target=target, seed=seed)
        g = guarded(det, op, res.x_adv, true)
        ok = g["predicted"] == target if variant == "oblivious" else g["guarded"]
        return _norms(x, res.x_adv)[0], ok

    if len(a["l2"]):
        for variant in ("oblivious", "adaptive_layer"):
            arrays[f"first-{variant}-l2"], arrays[f"first-{variant}-ok"] = first_success_l2(variant)
    t_sanity = time.perf_counter()
    kappas = _cw_sweep(a, det, op, x, true, target, n_boot, seed)
    t_cw = time.perf_counter()
    summary = {
        "n": int(len(src)), "layer": op.setting.layer, "layers": layers, "variants": VARIANTS,
        "operating_point": report["operating_point"],
        "params": {k: a[k] for k in ("lam", "tau", "k", "k_class", "steps", "restarts", "kappa", "refresh")},
        "curves": curves, "extra_l2": _extra_l2(a, arrays), "sanity": sanity, "cw_confidence": kappas,
        "traces": traces,
        "timing": {"curves_s": round(t_curves - t0, 2), "sanity_s": round(t_sanity - t_curves, 2),
                   "cw_s": round(t_cw - t_sanity, 2)},
    }
    summary = json_safe(summary)
    ctx.run.save_npz("adaptive/results.npz", arrays)
    ctx.run.save_json("adaptive/summary.json", summary)
    files = ["adaptive/results.npz", "adaptive/summary.json"]
    if len(src):
        ctx.run.record_existing("adaptive/curve.png", lambda tmp: plot_curves(summary, tmp))
        files.append("adaptive/curve.png")
    report["adaptive"] = {k: v for k, v in summary.items() if k != "traces"}
    report["adaptive"]["plot"] = "adaptive/curve.png" if len(src) else None
    ctx.run.save_json("report.json", report)
    ctx.run.save_text("report.md", render_markdown(report))
    log.info("adaptive stage in %.1f s (curves %.1f s, sanity %.1f s, CW sweep %.1f s)", time.perf_counter() - t0,
             t_curves - t0, t_sanity - t_curves, t_cw - t_sanity)
    return files


def _sanity(a: dict, arrays: dict, curves: dict, traces: dict, run_unbounded, ci) -> dict:
    """Tramèr et al.'s checks: unbounded budget, falling loss, adaptive >= oblivious where oblivious is caught."""
    out: dict[str, Any] = {"unbounded": {}, "loss_falls": {}, "adaptive_beats_oblivious": {}}
    for norm in NORMS:
        u = run_unbounded(norm)
        out["unbounded"][norm] = {"budget": float(np.max(u["budget"])), "steps": a["unbounded_steps"],
                                  "restarts": a["unbounded_restarts"],
                                  "guarded_success": ci(u["guarded"]), "mean_l2": float(np.mean(u["l2"]))
                                  if len(u["l2"]) else None}
        tr = traces.get(f"adaptive_layer-{norm}", [])
        if tr:
            first, last = float(np.mean([t[0] for t in tr])), float(np.mean([t[-1] for t in tr]))
            out["loss_falls"][norm] = {"first": first, "last": last, "ok": bool(last < first)}
        ob, ad = curves["oblivious"][norm], curves["adaptive_layer"][norm]
        rows = []
        for i, b in enumerate(ob["budgets"]):
            caught = ob["detected_of_fooled"][i] > 0
            rows.append({"budget": b, "oblivious": ob["guarded_success"][i][0], "adaptive": ad["guarded_success"][i][0],
                         "oblivious_caught": bool(caught),
                         "ok": bool(not caught or ad["guarded_success"][i][0] >= ob["guarded_success"][i][0])})
        out["adaptive_beats_oblivious"][norm] = rows
    out["unbounded_ok"] = all((v["guarded_success"][0] or 0) >= 0.9 for v in out["unbounded"].values())
    out["all_ok"] = bool(out["unbounded_ok"] and all(v["ok"] for v in out["loss_falls"].values())
                         and all(r["ok"] for rows in out["adaptive_beats_oblivious"].values() for r in rows))
    return out


def _extra_l2(a: dict, arrays: dict) -> dict:
    """Median over images of the extra L2 the detector forces: the L2 at which the same early-stopping PGD first
    fools CNN and detector (``adaptive_layer``) minus the L2 at which it first fools the CNN alone (oblivious,
    λ = 0), on the images where both succeed; each L2 is an upper bound of that image's minimal perturbation."""
    if "first-oblivious-l2" not in arrays or not len(arrays["source"]):
        return {"median": None, "n": 0}
    l2f, okf = arrays["first-oblivious-l2"], arrays["first-oblivious-ok"]
    l2g, okg = arrays["first-adaptive_layer-l2"], arrays["first-adaptive_layer-ok"]
    ok = okf & okg
    out = {"n": int(ok.sum()), "of": int(len(ok)), "radius": float(max(a["l2"])), "steps": int(a["unbounded_steps"])}
    if not ok.any():
        return {"median": None, **out}
    diff = (l2g - l2f)[ok]
    return {"median": float(np.median(diff)), "median_with": float(np.median(l2g[ok])),
            "median_without": float(np.median(l2f[ok])), "share_more": float(np.mean(diff > 0)), **out}


def _cw_sweep(a: dict, det: Detector, op: OperatingPoint, x: np.ndarray, true: np.ndarray, target: np.ndarray,
              n_boot: int, seed: int) -> list[dict]:
    """CW L2 at each confidence κ on the first ``cw_n`` sources: CNN and guarded success, mean L2."""
    n = min(int(a["cw_n"]), len(x))
    if n == 0:
        return []
    rows = []
    for kappa in a["cw_kappas"]:
        res = CarliniL2(confidence=float(kappa), max_iter=a["cw_max_iter"], binary_search_steps=a["cw_binary_steps"],
                        initial_const=a["cw_initial_const"], learning_rate=a["cw_learning_rate"])(det.model, x[:n], target=target[:n], seed=seed)
        g = guarded(det, op, res.x_adv, true[:n])
        l2, _ = _norms(x[:n], res.x_adv)
        fooled = g["fooled"]
        bs = SourceBootstrap(np.arange(n), n_boot=n_boot, seed=seed)
        rows.append({"kappa": float(kappa), "n": n, "cnn_success": bs.rate(fooled, np.arange(n)).interval(),
                     "guarded_success": bs.rate(g["guarded"], np.arange(n)).interval(),
                     "detected_of_fooled": float((fooled & ~g["trusted"]).sum() / max(fooled.sum(), 1)),
                     "mean_l2_fooled": float(l2[fooled].mean()) if fooled.any() else None})
    return rows


def plot_curves(summary: dict, path: Any) -> None:
    """Guarded success against the budget, one panel per norm, a line (with its 95 % band) per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(NORMS), figsize=(10, 4), constrained_layout=True)
    for ax, norm in zip(np.atleast_1d(axes), NORMS):
        for variant in VARIANTS:
            c = summary["curves"][variant][norm]
            if not c["budgets"]:
                continue
            v = np.array([[np.nan if e is None else e for e in r] for r in c["guarded_success"]], dtype=float)
            ax.plot(c["budgets"], 100 * v[:, 0], marker="o", label=variant)
            ax.fill_between(c["budgets"], 100 * v[:, 1], 100 * v[:, 2], alpha=0.2)
        ax.set_xlabel("L∞ budget ε" if norm == "linf" else "L2 budget ε")
        ax.set_ylabel("guarded success (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{norm.upper()}: fools the CNN and trusted at {summary['layer']}")
        ax.legend()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
