"""Threshold: the run's operating point (chosen on validation) and, at the slider's threshold, the test-split
figures with 95 % intervals; drag the threshold of one layer and watch the ROC point, the score densities (paper
Fig. 4) and the TPR/FPR curves (Figs. 3 and 5) move. Scores come from stored neighbours only."""
import streamlit as st

from app_ui import cache, navigation, selection
from app_ui import operating_point as operating
from app_ui.charts import bars, lines
from app_ui.text import md, md_table
from core.evaluation.setting_figures import operating_point

run = selection.current_run()
layers = run.layers
attacks = selection.attack_sets(run)
has_errors = "errors" in selection.ordered_sets(run)
strict = operating.strict(run)  # the trust rule of the run's protocol
rule = operating.trust_text(run)
#: The page's charts, one at a time.
CHARTS = {"densities": "Score densities (Fig. 4)", "shares": "Trusted share vs threshold (Figs. 3, 5)", "roc": "ROC"}
below = "score ≤ threshold" if strict else "score < threshold"

st.title("Threshold")
bars.how_to_read("How to read this: positives are authentic images the CNN gets right; negatives are adversarial "
                   "images (and, if ticked, the CNN's natural errors). Every image with a score "
                   f"{'above' if strict else 'at or above'} the threshold is trusted. A good layer puts the blue "
                   "curve (authentic) to the right of the others.")

rep = cache.report(run)
op = operating_point(rep)
st.session_state.setdefault("th_negatives", list(attacks))
st.session_state.setdefault("th_errors", not attacks)

c1, c2, c3 = st.columns([1, 3, 1], vertical_alignment="bottom")
layer = operating.layer_select(run, "th_layer", "Layer", where=c1, persist_state="session",
                               help="Shared by every page; the slider sets this layer's threshold.")
neg_sets = c2.multiselect("Adversarial sets counted as negatives", attacks, key="th_negatives",
                          format_func=lambda a: f"{a} ({run.summary['sets'][a]['n']})", persist_state="session")
use_errors = c3.checkbox("Authentic errors too", key="th_errors", disabled=not has_errors, persist_state="session",
                         help="Count the test images the CNN misclassifies as negatives (the paper's 'Errors').")
negs = list(neg_sets) + (["errors"] if use_errors and has_errors else [])
positives = " + ".join(cache.rundata(run).positive_sets)
st.caption(f"Settings from the sidebar: {run.settings_text}. Positives: {md(positives)} images.")

curves = cache.separation_curves(run, layer, negs, strict=strict)
sep = curves.sep
if not len(sep.all_negatives):
    st.warning("Choose at least one set of negatives (an attack, or authentic errors).")
    navigation.end_page()
r = sep.roc
eer_th = round(sep.eer_threshold, 3)
shared = operating.thresholds(run)[layer]  # the shared operating point's threshold of this layer
if st.session_state.get("th_threshold") != round(shared, 3):  # only then: a set value is sent to the browser
    st.session_state["th_threshold"] = round(shared, 3)


def _slide() -> None:
    operating.set_threshold(run, layer, st.session_state["th_threshold"])


def _jump(value: float) -> None:
    operating.set_threshold(run, layer, value)


def _use_operating_point() -> None:
    operating.reset()
    st.session_state.update({operating.LAYER: op["layer"], "det_mode": op["processing"], "det_fn": op["fn"],
                             "det_k": min(int(op["k"]), run.k_max)})


with st.container(key="th_op"):
    if op is not None and op.get("threshold") is not None:
        split = (rep or {}).get("split", {})
        label = ((rep or {}).get("processing_labels", {}).get(op["layer"], {}).get(op["processing"])
                 or selection.MODE_NAMES.get(op["processing"]) or op["processing"])
        target = op.get("target_tpr")
        st.markdown(f"**The run's operating point**, chosen on the validation split "
                    f"({md(split.get('validation', '?'))} source images): layer **{md(op['layer'])}**, {md(label)}, "
                    f"{selection.FN_NAMES.get(op['fn']) or md(op['fn'])}, k = {md(op['k'])}, threshold "
                    f"**{float(op['threshold']):.4f}** (trust {md(op.get('trust', 'score >= threshold'))}). "
                    f"On the test split ({md(split.get('test', '?'))} source images): TPR "
                    f"**{bars.ci_text(op.get('tpr_test'))}** %"
                    + (f" (target {100 * float(target):.0f} %)." if target is not None else "."))
        usable = op["layer"] in layers and op["processing"] in run.summary["modes"] and op["fn"] in selection.FN_NAMES
        st.button("Use the operating point", key="th_use_op", on_click=_use_operating_point, disabled=not usable,
                  help="Set the layer, the sidebar's settings and the threshold to the run's operating point.")
    else:
        st.info("This run's report predates the operating point (chosen on a validation split): rebuild the run to "
                "see it and the report's confidence intervals.", icon=":material/info:")
        st.code(selection.resume_command(run.manifest), language="bash")

s1, s2, s3 = st.columns([4, 1.3, 1.3], vertical_alignment="bottom")
s1.slider(f"Threshold of {md(layer)} (every page uses it): trust a prediction when {rule}", 0.0, 1.0, step=0.001,
          format="%.3f", key="th_threshold", on_change=_slide)
s2.button(f"Jump to EER ({eer_th:.3f})", key="th_jump_eer", on_click=_jump, args=(eer_th,), width="stretch",
          help="Set the threshold to the equal error rate point: the share of authentic images rejected equals "
               "the share of negatives trusted.")
chosen_on_validation = operating.validation(run)[1]
s3.button("Reset to validation-chosen", key="th_reset", on_click=operating.reset, width="stretch",
          disabled=not chosen_on_validation,
          help="Every layer's threshold back to the one chosen on the validation split by the run's protocol "
               "(the run's operating point for its own setting).")
if operating.overridden(run, layer):
    st.caption(f"{md(layer)}'s threshold is set here; Inspect, Attack and Failure cases use it.")
elif chosen_on_validation:
    st.caption(f"{md(layer)}'s threshold {shared:.4f} was chosen on the validation split (at these settings, by the "
               "run's protocol); Inspect, Attack and Failure cases use it.")
th = exact = shared
at_op = (op is not None and op.get("threshold") is not None and (layer, run.mode, run.fn, run.k)
         == (op["layer"], op["processing"], op["fn"], int(op["k"])) and float(op["threshold"]) == exact)

at = sep.at(th, strict=strict)
with st.container(key="th_operating"):
    st.markdown(f"**All stored images** at threshold **{th:.3f}**: {at['tpr']:.1%} of authentic images trusted "
                f"(TPR), {at['fpr']:.1%} of negatives trusted, i.e. missed (FPR); "
                f"{1 - at['fpr']:.1%} of negatives caught.")
    # One Markdown table, not five st.metric (one element, and no metric module to load on the page's first opening
    # in a tab: that opening took about 1 s after a click, the chart 0.3 s of it).
    st.markdown(md_table(["AUC", f"EER accuracy (at {r.eer_threshold:.3f})", "accuracy at this threshold",
                          "TPR (authentic trusted)", "FPR (negatives missed)"],
                         [[f"{r.auc:.4f}", f"{r.eer_accuracy:.1%}", f"{at['accuracy']:.1%}", f"{at['tpr']:.1%}",
                           f"{at['fpr']:.1%}"]], align="rrrrr"))

st.subheader("At this threshold, on the test split (95 % confidence intervals)")
live = cache.live(run)
fig = cache.live_at(run, layer, exact)
if fig is None:
    st.info("This run has no validation / test split: rebuild the run to see confidence intervals.",
            icon=":material/info:")
else:
    where = (f"the operating point's exact threshold {exact:.4f}" if at_op else f"threshold {exact:.3f}")
    st.caption(f"Layer {md(layer)}, {run.settings_text}, at {where} (trust {md(live.trust_rule)}), on the "
               f"{len(live.split.test)} test source images (validation share {live.config.validation_share:g}, "
               f"seed {live.split.seed}); positives: {md(' + '.join(live.positive_sets))}; every attack counted. "
               f"Intervals: {live.config.n_boot} bootstrap resamples of source images.")
    with st.container(key="th_live"):
        st.markdown(f"**TPR on test** (positives trusted, of {fig['n_positives']}): "
                    f"**{bars.ci_text(fig['tpr'])} %**"
                    + (f" · **detection rate, all attacks** (adversarials rejected, every attack pooled, weighted "
                       f"by test sizes as the report's): **{bars.ci_text(fig['detection_rate'])} %**"
                       if fig["attacks"] else ""))
        st.markdown(md_table(["attack", "test images", "detection rate % (rejected)",
                              "guarded success % (fools the CNN and trusted)"],
                             [[a, v["n_test"], bars.ci_text(v["detection_rate"]), bars.ci_text(v["guarded_success"])]
                              for a, v in fig["attacks"].items()], align="lrrr"))
        st.caption("Guarded success: share of attack attempts on test images that both fool the CNN and are "
                   "trusted by the detector (the attack's success against the guarded model).")
    st.caption("The counts and the chart below use every stored image (validation and test) and the negatives "
               "chosen above.")

palette = ["#c53030", "#805ad5", "#d69e2e", "#2f855a", "#b83280", "#4a5568", "#00a3c4"]
groups = [(f"{positives} (positives)", bars.TRUSTED_COLOR)]
groups += [(f"{s} (adversarial)" if s != "errors" else "errors (misclassified)", palette[i % len(palette)])
           for i, s in enumerate(negs)]
left, right = st.columns([1, 1.6])
with left:
    st.markdown("**Confusion counts at this threshold**")
    st.markdown(md_table(["", f"trusted ({rule})", f"rejected ({below})"],
                         [[f"authentic ({len(sep.positives)})", at["tp"], at["fn"]],
                          [f"negatives ({len(sep.all_negatives)}: {', '.join(negs)})", at["fp"], at["tn"]]],
                         align="lrr"))
with right:
    view = st.segmented_control("Chart", list(CHARTS), key="th_view", required=True, default="densities",
                                format_func=CHARTS.get, persist_state="session", label_visibility="collapsed",
                                help="One chart at a time, redrawn as the threshold moves (two or three on the page "
                                     "made a click to this page take over a second here).")
    if view == "roc":
        roc = [dict(name=f"ROC (AUC {r.auc:.3f})", x=curves.roc_xy[0], y=curves.roc_xy[1], color=bars.ink()),
               dict(name="chance", x=[0, 1], y=[0, 1], color="#aaaaaa", dash="dot", width=1)]
        marks = [dict(name=f"EER point ({r.eer_accuracy:.1%})", x=r.eer, y=1 - r.eer, color=bars.ink()),
                 dict(name="operating point", x=at["fpr"], y=at["tpr"], color="#c53030", shape="cross", filled=True,
                      label=f"threshold {th:.3f}")]
        bars.show(lines.lines_spec(roc, title=f"ROC at {layer}", ytitle="TPR: share of authentic trusted",
                                          xtitle="FPR: share of negatives trusted", height=420,
                                          x_domain=(-0.02, 1.02), y_domain=(-0.02, 1.02), points=marks,
                                          legend="bottom-right"), key="th_roc")
    elif view == "shares":
        grid, shares = curves.grid, curves.shares
        rates = [dict(name="TPR: authentic trusted", x=grid, y=shares[0], color=bars.TRUSTED_COLOR, width=3)]
        rates += [dict(name=f"FPR: {name.split(' ')[0]} trusted", x=grid, y=share, color=color, dash="dash")
                  for (name, color), share in zip(groups[1:], shares[1:])]
        bars.show(lines.lines_spec(rates, title="Trusted share vs threshold (paper Figs. 3, 5)",
                                          ytitle="share trusted", xtitle="threshold", height=420, legend="below",
                                          x_domain=(0, 1), rules=[dict(x=th, label=f"{th:.3f}")]), key="th_rates")
    else:
        centres, densities = curves.centres, curves.densities
        dens = [dict(name=f"{name}, n={len(sc)}", x=centres, y=d, color=color, step=True, fill=i == 0)  # positives
                for i, ((name, color), sc, d) in enumerate(zip(groups, sep.groups, densities))]
        bands = [dict(x0=0, x1=th, color=bars.REJECTED_COLOR, label=bars.REJECTED, left=True),
                 dict(x0=th, x1=1, color=bars.TRUSTED_COLOR, label=bars.TRUSTED, left=False)]
        bars.show(lines.lines_spec(dens, title="Score densities (paper Fig. 4)", ytitle="density",
                                          xtitle="kNN score of the predicted class", height=420, legend="below",
                                          x_domain=(0, 1), bands=bands, rules=[dict(x=th)]), key="th_density")

# ------------------------------------------------------------------------ downloads (the page's data as files)
from app_ui.widgets import downloads  # noqa: E402

# Drawn when opened: three download buttons were a module more for the page's first opening in a tab.
downloads_box = st.expander("Downloads: scores per image, confusion counts, ROC points (CSV)", key="th_downloads",
                            on_change="rerun", icon=":material/download:")


shared_all = operating.thresholds(run)  # read now: the download is built later, outside this script run


def _table() -> tuple[dict, dict, dict]:
    """The stored sets of this page, their scores at every layer and each layer's threshold of the shared
    operating point (on download)."""
    data = cache.rundata(run)
    names = [x for x in (*data.positive_sets, *negs) if x in data.set_names]
    scores = {x: {la: cache.set_scores(run, x, la) for la in layers} for x in names}
    return {x: data.evalset(x) for x in names}, scores, shared_all


if downloads_box.open:
    with downloads_box:
        downloads.threshold_downloads(run, layer, th, sep, at, _table, cache.classes(run), strict=strict)
