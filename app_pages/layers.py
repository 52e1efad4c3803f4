"""Layers: EER accuracy per layer and score function with 95 % intervals (paper Fig. 6), and the full table
layer × processing × score × attack of the run's report (paper Tables 2 and 4)."""
import numpy as np
import streamlit as st

from app_ui import cache, navigation, selection
from app_ui.charts import bars as charts
from app_ui.charts import lines as line_chart
from app_ui.text import md, md_table
from app_ui.widgets import layer_comparison
from core.evaluation.paper_figures import row_accuracy
from core.evaluation.setting_figures import operating_layer

run = selection.current_run()
rep = cache.report(run)
layers = run.layers

st.title("Which layer detects best?")
charts.how_to_read("How to read this: EER accuracy is the detector's accuracy at the threshold where it wrongly "
                   "rejects as many authentic images as it wrongly trusts adversarial ones; 50 % is chance, 100 % "
                   "perfect. Higher is better.")


#: Column labels of the aggregate and of the authentic errors (the others are attack sets).
COLUMNS = {"Aggr.": "aggr", "Errors": "errors"}


def _value(row: dict, col: str) -> float:
    return row_accuracy(row, COLUMNS.get(col, col))


layer_comparison.k_box(run)

lf = cache.live(run)
rows = [] if lf is not None else cache.detection_rows(run)  # every stored image: a run without a split
attacks = selection.attack_sets(run)
has_errors = "errors" in selection.ordered_sets(run)
metric_options = ["Aggr."] + attacks + (["Errors"] if has_errors else [])
metric = st.segmented_control("Negatives", metric_options, key="layers_metric", default="Aggr.",
                              persist_state="session", format_func=md,
                              help="Aggr. = mean over the attacks weighted by their sizes; Errors = the CNN's "
                                   "natural misclassifications as negatives.") or "Aggr."
column = COLUMNS.get(metric, metric)
# rows of the report measured on the test split with intervals (issue 12), at the sidebar's mode and the report's k
report_k = int((rep or {}).get("k", -1))
stored = {(r["layer"], r["fn"]): r for r in (rep or {}).get("rows", []) if "ci" in r and r["mode"] == run.mode}
fig_k = run.k
if len(stored) == len(layers) * 3 and lf is not None and run.k != report_k:
    # 15 bootstraps at a new k take seconds: on request; until then the report's figure at its own k
    if not st.toggle(f"Bootstrap this figure at the sidebar's k = {run.k} (a few seconds)", key="layers_live_k",
                     help=f"Off: the run's report at k = {report_k} (its intervals are precomputed)."):
        fig_k = report_k
if fig_k != report_k:
    stored = {}


def _interval(layer: str, fn: str) -> list:
    """``[v, lo, hi]`` (fractions; lo, hi None without an interval) of ``metric`` at ``layer`` and ``fn``."""
    if (layer, fn) in stored:
        r = stored[(layer, fn)]
        lo, hi = (r["ci"].get(column) or [None, None])
        return [_value(r, metric), lo, hi]
    if lf is not None:
        e = cache.live_eer(run, layer, fn)
        got = e["aggr"] if column == "aggr" else e["errors"] if column == "errors" else e["attacks"].get(column)
        return list(got or [None, None, None])
    return [_value(next(r for r in rows if r["layer"] == layer and r["fn"] == fn), metric), None, None]


def _pct(x) -> float:
    return float("nan") if x is None else 100 * x


lines = []
styles = {"knn": ("#718096", "dot"), "wknn": ("#805ad5", "dash"), "dwknn": ("#2b6cb0", "solid")}
with st.spinner("Bootstrapping every layer on the test split…"):
    cis = {fn: [_interval(la, fn) for la in layers] for fn in styles}
for fn, (color, dash) in styles.items():
    ys = [_pct(v) for v, _, _ in cis[fn]]
    mine = fn == run.fn  # the sidebar's score function: thicker, with its values written
    bars = {}
    if any(lo is not None for _, lo, _ in cis[fn]):
        bars = dict(lo=[None if lo is None else _pct(lo) for _, lo, _ in cis[fn]],
                    hi=[None if hi is None else _pct(hi) for _, _, hi in cis[fn]])
    lines.append(dict(name=selection.FN_NAMES[fn] + (" (sidebar)" if mine else ""), x=layers, y=ys, color=color,
                      dash=dash, width=4 if mine else 2, markers=True,
                      labels=[f"{y:.1f}" for y in ys] if mine else None,
                      hover=[charts.ci_text(c) + " %" for c in cis[fn]], **bars))
split_text = ("the test split" if lf is None else
              f"the test split ({len(lf.split.test)} source images, validation share {lf.config.validation_share:g})")
charts.show(line_chart.lines_spec(lines, title=f"EER accuracy per layer, {metric} (paper Fig. 6) — "
                                           f"{selection.MODE_NAMES.get(run.mode, run.mode)}, k = {fig_k}",
                              ytitle="EER accuracy", xtitle="layer (input → output)", height=420, y_percent=True,
                              x_order=layers), key="layers_fig6")
if lf is None:
    st.caption("Computed live from every stored image at the sidebar's processing and k. This run has no "
               "validation / test split: rebuild the run to see confidence intervals.")
else:
    src = ("from the run's report" if len(stored) == len(layers) * len(styles) else
           "computed live" if not stored else "from the run's report where it has the sidebar's settings, else live")
    at_k = ("the sidebar's k" if fig_k == run.k else
            f"the report's k = {fig_k} (the sidebar's k = {run.k} sets the ROC comparison below)")
    st.caption(f"The paper's metric (each attack's own oracle threshold) on {split_text}, at the sidebar's "
               f"processing and {at_k}; error bars: 95 % confidence intervals, {lf.config.n_boot} bootstrap resamples of "
               f"source images ({src}).")

st.markdown("**Why the Threshold page's EER differs from Aggr. here.** The Threshold page pools every chosen attack "
            "into one set of negatives and draws one ROC, so its EER has one threshold for all attacks. Aggr. is the "
            "paper's metric: each attack gets its own ROC and its own (oracle) EER threshold, and the EER "
            "accuracies are averaged weighted by the attacks' set sizes. An attack that is easy at one threshold and "
            "another easy at a different one both score well in Aggr., but not when pooled, so the two differ "
            "(usually by a point or less); Aggr. is also on the test split here, the pooled ROC on every stored "
            "image.")

st.subheader("ROC curves side by side")
layer_comparison.roc_overlay(run, attacks, operating_layer(rep, layers))

st.subheader("Every setting (paper Tables 2 and 4)")
if rep is None:
    st.warning("This run has no report.json; rebuild it with:")
    st.code(selection.resume_command(run.manifest), language="bash")
    navigation.end_page()
cols = list(rep.get("attack_sets") or rep["attacks"]) + ["Aggr.", "Errors"]
def _percent(v) -> float | None:
    """An accuracy as percent; None for a missing, non-finite or non-numeric value (a run's file is untrusted)."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return 100 * v if np.isfinite(v) else None


values = [[_percent(_value(r, c)) for c in cols] for r in rep["rows"]]
shown = [j for j in range(len(cols)) if any(v[j] is not None for v in values)]  # columns with a value
best = {j: max(v[j] for v in values if v[j] is not None) for j in shown}
where = "on the test split, " if "split" in rep else "on every stored image, "
st.caption(f"EER accuracy (%) from the run's report.json ({where}k = {md(rep['k'])}); the best cell of each column "
           "in bold.")
# A Markdown table, not a data grid: the grid's code (about 1.2 MB) made the first click to this page take over a
# second on 2 cores (python -m benchmarks.first_page).
st.markdown(md_table(["layer", "processing", "score", *(cols[j] for j in shown)],
                     [[r["layer"], r["mode"], selection.FN_NAMES[r["fn"]].split(" ")[0],
                       *("–" if v[j] is None else f"{v[j]:.1f}" for j in shown)] for r, v in zip(rep["rows"], values)],
                     align="lll" + "r" * len(shown),
                     strong={(i, 3 + n) for i, v in enumerate(values) for n, j in enumerate(shown)
                             if v[j] is not None and round(v[j], 1) == round(best[j], 1)}))
