"""Compare: the peer detectors of the run's report side by side on the test split (ROC curves with each
operating point, and the report's Detectors table)."""
import numpy as np
import streamlit as st

from app_ui import cache, navigation, selection
from app_ui.charts import bars
from app_ui.charts import lines as line_chart
from app_ui.text import md, md_records
from core.evaluation import metrics

run = selection.current_run()
rep = cache.report(run) or {}
dets = rep.get("detectors") or {}

st.title("Is kNN better than the detectors I know?")
bars.how_to_read("How to read this: each curve is one detector against one attack on the test split (true "
                   "positive rate = authentic images trusted, false positive rate = adversarials trusted); the dot "
                   "is the detector's operating point, its threshold set on validation like the kNN's. "
                   "\"Trained on other attacks\" detectors never saw the attack they are tested on.")
if not dets:
    st.info("This run's report has no peer detectors. Rebuild it with the detectors stage: "
            f"`{selection.resume_command(run.manifest)}`")
    navigation.end_page()

labels = rep.get("detector_labels", {})
entries = list(dets)
attacks = [a for a in selection.attack_sets(run) if any(a in dets[e] for e in entries)]
default = [e for e in entries if not e.startswith("knn-")] + [e for e in entries if e.startswith("knn-")][:1]
chosen = st.multiselect("Detectors", entries, default=default, key="compare_detectors",
                        format_func=lambda e: f"{e} — {labels.get(e, {}).get('label', e)}")
picked = st.multiselect("Attacks", attacks, default=attacks[:1], key="compare_attacks", format_func=md)


@st.cache_data(show_spinner=False)
def _curve(_data, path: str, stamp: int, entry: str, attack: str, positives: tuple[str, ...]) -> dict:
    """ROC points of ``entry`` against ``attack`` on the test split and its operating point."""
    from core.evaluation.splits import split_sources
    from core.peers.evaluate import test_scores

    data = _data
    ev = data.config["evaluation"]
    split = split_sources({s: data.evalset(s)["source"] for s in data.set_names}, ev["validation_share"],
                          int(data.config["seed"]))
    pos, neg, th, strict = test_scores(data, split, list(positives), entry, attack)
    r = metrics.roc(pos, neg)
    trust = (lambda s: s > th) if strict else (lambda s: s >= th)
    fpr, tpr = metrics.roc_corners(r)  # the same polyline, fewer points to send and draw
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": r.auc,
            "op": (float(np.mean(trust(neg))) if len(neg) else None, float(np.mean(trust(pos))) if len(pos) else None)}


lines, dots = [], []
for e in chosen:
    for a in picked:
        if a not in dets[e]:
            continue
        c = _curve(cache.rundata(run), run.path, run.stamp, e, a, tuple(rep.get("positives", ["authentic"])))
        name = f"{e} · {a} (AUC {100 * c['auc']:.1f})"
        color = bars.PALETTE[len(lines) % len(bars.PALETTE)]
        lines.append(dict(name=name, x=c["fpr"], y=c["tpr"], color=color))
        if c["op"][0] is not None:
            dots.append(dict(name=f"{name}: operating point", x=c["op"][0], y=c["op"][1], color=color,
                             in_legend=False))
bars.show(line_chart.lines_spec(lines, title="ROC on the test split (dot = operating point)",
                              ytitle="authentic trusted (TPR)", xtitle="adversarial trusted (FPR)", height=480,
                              legend="bottom-right", x_domain=(0, 1), y_domain=(0, 1.02), points=dots),
            key="compare_roc")

rows = []
for e in chosen:
    for a in picked:
        v = dets[e].get(a)
        if v:
            rows.append({"detector": e, "attack": a, "detection rate %": bars.ci_text(v["detection_rate"]),
                         "guarded success %": bars.ci_text(v["guarded_success"]),
                         "EER accuracy %": bars.ci_text(v["eer_accuracy"]), "AUC %": bars.ci_text(v["auc"]),
                         "errors rejected %": bars.ci_text(v.get("errors", {}).get("detection_rate")),
                         "fit s": v["fit_s"], "score ms/image": v["score_ms"]})
st.markdown(md_records(rows, formats={"fit s": "{:.2f}", "score ms/image": "{:.3f}"}))

for comb, res in rep.get("detector_comparison", {}).items():
    m = res.get("mean")
    if m:
        st.markdown(f"**{md(comb)}** against the best single kNN layer ({md(m['best_layer'])}, chosen on test), "
                    f"mean AUC difference over attacks {m['auc_difference'][0] * 100:+.1f} points "
                    f"[{m['auc_difference'][1] * 100:+.1f}, {m['auc_difference'][2] * 100:+.1f}]: "
                    f"**{m['verdict_auc']}**.")
