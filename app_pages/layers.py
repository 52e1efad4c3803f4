"""Layers: EER accuracy per layer and score function (paper Fig. 6), and the full table layer × processing ×
score × attack of the run's report (paper Tables 2 and 4)."""
import pandas as pd
import streamlit as st

from app_pages import charts, loaders, state
from app_pages._text import md, plotly_text
from core.evaluation import row_accuracy

run = state.current_run()
rep = loaders.report(run)
layers = run.layers

st.title("Which layer detects best?")
charts.how_to_read("How to read this: EER accuracy is the detector's accuracy at the threshold where it wrongly "
                   "rejects as many authentic images as it wrongly trusts adversarial ones; 50 % is chance, 100 % "
                   "perfect. Higher is better.")


#: Column labels of the aggregate and of the authentic errors (the others are attack sets).
COLUMNS = {"Aggr.": "aggr", "Errors": "errors"}


def _value(row: dict, col: str) -> float:
    return row_accuracy(row, COLUMNS.get(col, col))


rows = loaders.detection_rows(run)
attacks = [a for a in state.attack_sets(run) if any(a in r["attacks"] for r in rows)]
metric_options = ["Aggr."] + attacks + (["Errors"] if any("errors" in r for r in rows) else [])
metric = st.segmented_control("Negatives", metric_options, key="layers_metric", default="Aggr.",
                              persist_state="session", format_func=md,
                              help="Aggr. = mean over the attacks weighted by their sizes; Errors = the CNN's "
                                   "natural misclassifications as negatives.") or "Aggr."
lines = []
styles = {"knn": ("#718096", "dot"), "wknn": ("#805ad5", "dash"), "dwknn": ("#2b6cb0", "solid")}
for fn, (color, dash) in styles.items():
    ys = [_value(next(r for r in rows if r["layer"] == la and r["fn"] == fn), metric) for la in layers]
    mine = fn == run.fn  # the sidebar's score function: thicker, with its values written
    lines.append(dict(type="scatter", x=[plotly_text(la) for la in layers], y=[100 * y for y in ys],
                      mode="lines+markers+text" if mine else "lines+markers",
                      name=state.FN_NAMES[fn] + (" (sidebar)" if mine else ""),
                      line=dict(color=color, dash=dash, width=4 if mine else 2), marker=dict(size=10 if mine else 7),
                      text=[f"{100 * y:.1f}" for y in ys], textposition="top center", textfont=dict(size=13),
                      hovertemplate="%{x}: %{y:.1f} %<extra>" + state.FN_NAMES[fn] + "</extra>"))
st.plotly_chart(charts.figure(lines, title=f"EER accuracy per layer, {plotly_text(metric)} (paper Fig. 6) — "
                                       f"{state.MODE_NAMES[run.mode]}, k = {run.k}", ytitle="EER accuracy",
                          xtitle="layer (input → output)", height=420, yaxis=dict(ticksuffix=" %"),
                          xaxis=dict(categoryorder="array", categoryarray=[plotly_text(la) for la in layers])),
                key="layers_fig6")
st.caption("Computed live from the stored neighbours at the sidebar's processing and k.")

st.subheader("Every setting (paper Tables 2 and 4)")
if rep is None:
    st.warning("This run has no report.json; rebuild it with:")
    st.code(state.resume_command(run.manifest), language="bash")
    st.stop()
cols = list(rep["attacks"]) + ["Aggr.", "Errors"]
table = pd.DataFrame([{"layer": r["layer"], "processing": r["mode"], "score": state.FN_NAMES[r["fn"]].split(" ")[0],
                       **{c: 100 * _value(r, c) for c in cols}} for r in rep["rows"]])
table = table.dropna(axis=1, how="all")
num = [c for c in cols if c in table]
st.caption(f"EER accuracy (%) from the run's report.json (k = {md(rep['k'])}); click a column header to sort. The "
           "best cell of each column is highlighted.")
st.dataframe(table.style.format("{:.1f}", subset=num, na_rep="–")
             .highlight_max(subset=num, props="background-color:#c6f6d5;font-weight:700"),
             hide_index=True, key="layers_table", height=min(38 + 35 * len(table), 640))
