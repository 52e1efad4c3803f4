"""Run: what the selected run is (dataset, model, accuracy, layers, protocol, split and operating point, evaluation
sets, attacks, the paper's findings per layer, timings, library versions) and how to make another one."""
import json

import streamlit as st

from app_ui import cache, selection
from app_ui.charts import bars
from app_ui.text import md, md_records
from app_ui.widgets import downloads
from core.evaluation.setting_figures import operating_point
from precompute.stages import STAGE_NAMES

run = selection.current_run()
m = run.manifest
cfg = m["config"]
s = run.summary
model = cache.model_info(run)
rep = cache.report(run) or {}

st.title(f"Run {md(cfg['name'])}")
bars.how_to_read("How to read this: everything the app shows was computed once by the precompute pipeline; this "
                   "page says on what data, with which model and attacks, and how long each stage took.")

acc = model.get("test_accuracy")
c = st.columns(4)
c[0].metric("Dataset", md(cfg["data"]["dataset"]))
c[1].metric("Model", md(s.get("model", cfg["model"]["name"])))
c[2].metric("Test accuracy", "–" if acc is None else f"{acc:.2%}",
            help=f"on {md(model.get('n_test', '?'))} test images; trained on {md(model.get('n_train', '?'))}")
c[3].metric("Neighbours stored (K_max)", md(s["k_max"]))
if model.get("warning"):
    st.warning(md(model["warning"]))
d = s["defaults"]
st.markdown(f"**Layers tapped** (input → output): {', '.join(md(la) for la in s['layers'])}  \n"
            f"**Processing modes**: {', '.join(selection.MODE_NAMES.get(x) or md(x) for x in s['modes'])}  \n"
            f"**Defaults**: {selection.MODE_NAMES.get(d['mode']) or md(d['mode'])}, "
            f"{selection.FN_NAMES.get(d['fn']) or md(d['fn'])}, k = {md(d['k'])}  \n"
            f"**Trained here**: {'yes' if model.get('trained_here') else 'no (pretrained weights)'}"
            + (f", {len(model['losses'])} epochs" if model.get("losses") else ""))
labels = rep.get("processing_labels", {})


def _processing(layer: str, mode: str) -> str:
    """The processing as fitted (report's ``processing_labels``), else its mode's name."""
    return labels.get(layer, {}).get(mode) or selection.MODE_NAMES.get(mode) or mode


#: Rates as percent with one decimal everywhere on the page ("25.0 %", "95.3 %").
PERCENT = "{:.1f} %"


def _pct(x) -> float | None:
    """A fraction as percent (None stays None)."""
    return None if x is None else 100 * float(x)


st.subheader("Protocol and operating point")
op = operating_point(rep)
if op is None:
    st.info("This run's report predates the validation / test split, the operating point and the confidence "
            "intervals: rebuild the run to see them.", icon=":material/info:")
    st.code(selection.resume_command(m), language="bash")
else:
    split = rep.get("split", {})
    st.markdown(f"**Protocol**: {md(rep.get('protocol', '?'))} (positives: {md(', '.join(rep.get('positives', [])))})"
                f"  \n**Split by source image**: {md(split.get('validation', '?'))} validation, "
                f"{md(split.get('test', '?'))} test (seed {md(split.get('seed', '?'))}); everything chosen (layer, "
                "processing, score, k, threshold) is chosen on validation, every figure is measured on test.  \n"
                f"**Operating point**: layer {md(op['layer'])}, {md(_processing(op['layer'], op['processing']))}, "
                f"{selection.FN_NAMES.get(op['fn']) or md(op['fn'])}, k = {md(op['k'])}, threshold "
                f"{float(op['threshold']):.4f} (trust {md(op.get('trust', 'score >= threshold'))}); TPR on test "
                f"**{bars.ci_text(op.get('tpr_test'))}** %.")
    if op.get("criterion"):
        st.caption(f"Rule: {md(op['criterion'])}.")
    att = rep.get("attacks", {})
    if isinstance(att, dict) and att:
        st.markdown(md_records([{"attack": a, "test images": v.get("n_test"),
                                 "success (prediction changed)": _pct(v.get("success_changed")),
                                 "success (target reached)": _pct(v.get("success_target")),
                                 "detection rate %": bars.ci_text(v.get("detection_rate")),
                                 "guarded success %": bars.ci_text(v.get("guarded_success")),
                                 "EER accuracy % (oracle)": bars.ci_text(v.get("eer_accuracy"))}
                                for a, v in att.items()], formats=dict.fromkeys(
                                    ("success (prediction changed)", "success (target reached)"), PERCENT)))
        st.caption("On the test split at the operating point, [95 % confidence interval]. Guarded success: attack "
                   "attempts that fool the CNN and are trusted. EER accuracy: the paper's metric, each attack with "
                   "its own (oracle) threshold.")

st.subheader("Evaluation sets")


def _points(iv) -> str:
    """A difference ``[v, lo, hi]`` (fractions) in points, ``+1.2 [-0.3, 2.6]``."""
    if not iv or iv[0] is None:
        return "–"
    v, lo, hi = (None if x is None else 100 * x for x in iv)
    return f"{v:+.1f}" + ("" if lo is None or hi is None else f" [{lo:+.1f}, {hi:+.1f}]")


def _params(p) -> str:
    """Attack parameters as 'eps=0.1, steps=20' (the manifest holds a dict, or its repr in older runs)."""
    if isinstance(p, str):
        try:
            import ast

            p = ast.literal_eval(p)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return p
    if not isinstance(p, dict):
        return "" if p is None else str(p)
    return ", ".join(f"{k}={v}" for k, v in p.items() if k not in ("attack", "targeted"))


rows = []
for name in selection.ordered_sets(run, nonempty=False):
    v = s["sets"][name]
    aim = (v.get("params") or {}).get("targeted") if isinstance(v.get("params"), dict) else None
    rows.append({"set": name, "what": selection.SET_HELP.get(name) or f"adversarial ({selection.attack_title(name)})",
                 "images": v.get("n"), "attempted": v.get("attempted"),
                 "aim": None if aim is None else ("a target class" if aim else "any other class"),
                 "success rate": _pct(v.get("success_rate")), "target reached": _pct(v.get("success_target")),
                 "mean L2": v.get("mean_l2"), "mean L∞": v.get("mean_linf"),
                 "mean L∞ (/255)": None if v.get("mean_linf") is None else 255 * v["mean_linf"],
                 "seconds": v.get("seconds"), "parameters": _params(v.get("params"))})
st.markdown(md_records(rows, formats={"success rate": PERCENT, "target reached": PERCENT, "mean L2": "{:.3f}",
                                      "mean L∞": "{:.3f}", "mean L∞ (/255)": "{:.1f}", "seconds": "{:.1f}"}))
if any("success_changed" in v for v in s["sets"].values()):
    st.caption("Adversarial sets keep every attempt whose stored image the CNN predicts other than its true class "
               "(the paper's success rule); 'target reached' is the share of attempts that also reached the aimed "
               "class. 'noise' keeps noisy images still classified correctly. Norms are in [0, 1] pixel units.")
else:
    st.caption("Adversarial sets keep only successful attacks (targeted: the prediction reached the random target "
               "class; a run made before the paper's success rule); 'noise' keeps noisy images still classified "
               "correctly. Norms are in [0, 1] pixel units.")

findings = rep.get("findings") or []
if findings and all("verdict" in f for f in findings):
    st.subheader("The paper's findings on this run, per layer")
    st.markdown("Each is a difference of Aggr. EER accuracy on the test split with its paired 95 % interval: "
                "**holds** where the interval lies above 0, **reversed** where it lies below 0, **not shown** "
                "otherwise.")
    st.markdown(md_records([{"finding": f["finding"], "layer": f["layer"],
                             "processing": _processing(f["layer"], f["mode"]) if f.get("mode") else "",
                             "difference (points)": _points(f["difference"]), "verdict": f["verdict"]}
                            for f in findings]))
    rev = rep.get("reversals") or []
    st.markdown(f"**Reversals** ({len(rev)}): where the paper's direction is reversed, on the aggregate or one "
                "attack." if rev else "**Reversals**: none.")
    if rev:
        st.markdown(md_records([{"finding": r["finding"], "layer": r["layer"], "processing": r.get("mode") or "",
                                 "attack": r["attack"], "difference (points)": _points(r["difference"])}
                                for r in rev]))
elif findings:
    st.subheader("The paper's findings on this run")
    for f in findings:
        st.markdown(f"- **{'Holds' if f.get('holds') else 'Does not hold'}**: {md(f.get('claim', ''))}. "
                    f"{md(f.get('evidence', ''))}.")
    st.caption("Tested without confidence intervals on every image: rebuild the run to see them per layer.")

left, right = st.columns(2)
with left:
    st.subheader("Stage times")
    stages = [{"stage": k, "seconds": m["stages"][k].get("seconds"), "status": m["stages"][k].get("status")}
              for k in STAGE_NAMES if k in m["stages"]]
    stages.append({"stage": "total", "seconds": sum(x["seconds"] or 0 for x in stages), "status": ""})
    st.markdown(md_records(stages, formats={"seconds": "{:.1f}"}))
with right:
    st.subheader("Library versions")
    versions = m.get("versions", {})
    st.markdown(md_records([{"library": k, "version": v} for k, v in versions.items() if k != "cpu_count"]))
    if "cpu_count" in versions:
        st.caption(f"Built on a machine with {md(versions['cpu_count'])} CPU cores.")

st.subheader("Report")
st.markdown("The run's report (what `python -m precompute` wrote), as Markdown or as a standalone HTML page.")
downloads.report_downloads(run)

st.subheader("Make another run")
st.markdown("Runs live in `data/runs/<name>/` (or `$KNNGUARD_RUNS_DIR`); every run there appears in the sidebar. "
            "A finished stage is skipped when run again, so a killed run resumes.")
# Inline code, not st.code: a code block loads the syntax highlighter, 0.5-0.8 s of the browser's main thread the
# first time a tab shows one (Chrome's profiler on a click to this page, 2026-11-29).
st.markdown("""- the default run (Fashion-MNIST CNN, a few minutes on a laptop CPU):
  `python -m precompute --config precompute/configs/fmnist.toml`
- what would run, without running it: `python -m precompute --config precompute/configs/fmnist.toml --dry-run`
- another run with changed settings (each `--set` is type-checked; unknown keys are refused):
  `python -m precompute --config precompute/configs/fmnist.toml --set name=fmnist-k100 --set scoring.k=100`
- recompute from a stage on: `python -m precompute --config precompute/configs/fmnist.toml --from evalsets`
- the layers a model can tap: `python -m precompute --list-layers precompute/configs/fmnist.toml`""")
config_box = st.expander("Full configuration of this run", key="run_config", on_change="rerun")
if config_box.open:  # drawn only when opened: a JSON code block is the highlighter again
    with config_box:
        st.code(json.dumps(cfg, indent=2), language="json")
