"""Adaptive attacks: how often an attacker who knows the detector gets through it, against the budget (the run's
``report["adaptive"]``, built by the precompute's ``adaptive`` stage)."""
import streamlit as st

from app_ui import cache, navigation, selection
from app_ui.charts import bars
from app_ui.charts import lines as line_chart
from app_ui.text import md, md_records

#: Variant -> (label, colour).
VARIANTS = {"oblivious": ("oblivious (fools the CNN only)", "#7f7f7f"),
            "adaptive_layer": ("adaptive, aimed at the operating layer", "#d62728"),
            "adaptive_all": ("adaptive, aimed at every layer", "#1f77b4")}
NORMS = {"linf": "L∞ budget ε (per pixel)", "l2": "L2 budget ε (whole image)"}

run = selection.current_run()
st.title("Attack the detector too")
bars.how_to_read("How to read this: each curve is the share of attacks that fool the CNN **and** are still trusted "
                   "by the detector at the run's operating point, against the attacker's budget. The grey curve "
                   "ignores the detector; the coloured ones also push the image's features toward training images "
                   "of the target class. Bands are 95 % bootstrap intervals.")
ad = cache.report(run).get("adaptive")
if not ad and run.manifest.get("config", {}).get("adaptive", {}).get("n") == 0:
    st.info("This run's config sets `adaptive.n = 0`: no adaptive attack was run.", icon=":material/info:")
    navigation.end_page()
if not ad:
    st.info(f"This run has no adaptive-attack results yet. Build them with `{md(selection.resume_command(run.manifest))}` "
            "(the `adaptive` stage runs after the report).", icon=":material/info:")
    navigation.end_page()

op = ad["operating_point"]
st.caption(f"{ad['n']} test images, each pushed toward a random wrong class · operating point: layer "
           f"**{md(op['layer'])}**, threshold {op['threshold']:.4f} · λ = {ad['params']['lam']}, "
           f"{ad['params']['steps']} PGD steps")
cols = st.columns(len(NORMS))
for col, (norm, xtitle) in zip(cols, NORMS.items()):
    lines = []
    for v, (label, colour) in VARIANTS.items():
        c = ad["curves"][v][norm]
        if not c["budgets"]:
            continue
        vals = [[None if e is None else 100 * e for e in r] for r in c["guarded_success"]]
        lines.append(dict(name=label, x=c["budgets"], y=[r[0] for r in vals], color=colour, markers=True,
                          band_lo=[r[1] for r in vals], band_hi=[r[2] for r in vals],
                          hover=[bars.ci_text([None if e is None else e / 100 for e in r]) + " %" for r in vals]))
    bars.show(line_chart.lines_spec(lines, title=f"{norm.upper()}: fools the CNN and trusted",
                                  ytitle="guarded success (%)", xtitle=xtitle, legend="below", y_domain=(0, 100),
                                  height=420), key=f"adp_curve_{norm}", where=col)

e = ad.get("extra_l2", {})
if e.get("median") is not None:
    st.metric("Median extra L2 the detector forces", f"{e['median']:.3f}",
              help=f"{e['median_without']:.3f} to fool the CNN alone, {e['median_with']:.3f} to fool CNN and detector "
                   f"({e['n']} of {e['of']} images succeed both ways). Each is the L2 of the first successful "
                   "iterate of the same early-stopping L2 PGD: an upper bound of the image's minimal perturbation.")
if ad.get("cw_confidence"):
    st.subheader("Carlini-Wagner at growing confidence κ")
    st.caption("A larger margin over the runner-up class moves the image deeper into the target class, where its "
               "features look more like the target's training images.")
    st.markdown(md_records([{"κ": r["kappa"], "CNN success %": bars.ci_text(r["cnn_success"]),
                             "guarded success %": bars.ci_text(r["guarded_success"]),
                             "detected of fooled": f"{100 * r['detected_of_fooled']:.1f} %",
                             "mean L2 (fooled)": r["mean_l2_fooled"]} for r in ad["cw_confidence"]],
                           formats={"mean L2 (fooled)": "{:.3f}"}))
s = ad["sanity"]
st.subheader("Is the attack any good? (sanity checks)")
lines = [f"- unbounded {n} budget: guarded success {bars.ci_text(u['guarded_success'])} (should be near 100 %)"
         for n, u in s["unbounded"].items()]
lines += [f"- the loss falls ({n}): {v['first']:.2f} → {v['last']:.2f}" + ("" if v["ok"] else " — **it does not**")
          for n, v in s["loss_falls"].items()]
for n, rows in s["adaptive_beats_oblivious"].items():
    bad = [r["budget"] for r in rows if not r["ok"]]
    lines.append(f"- adaptive ≥ oblivious wherever the oblivious attack is caught ({n}): "
                 + ("yes, at every budget" if not bad else f"**no** at {bad}"))
st.markdown("\n".join(lines))
(st.success if s["all_ok"] else st.warning)("All checks pass." if s["all_ok"] else
                                            "Some checks fail: read the curves as a lower bound of the attacker.")
