"""Layers: EER accuracy per layer and score function (paper Fig. 6), and the full table layer × processing ×
score × attack of the run's report (paper Tables 2 and 4)."""
import numpy as np
import pandas as pd
import streamlit as st

from app_pages import _common as ui

run = ui.current_run()
data = ui.rundata(run)
rep = ui.report(run)
layers = run.layers

st.title("Which layer detects best?")
ui.how_to_read("How to read this: EER accuracy is the detector's accuracy at the threshold where it wrongly "
               "rejects as many authentic images as it wrongly trusts adversarial ones; 50 % is chance, 100 % "
               "perfect. Higher is better.")


@st.cache_data(show_spinner="Scoring every layer from stored neighbours…")
def _rows(path: str, stamp: int, mode: str, k: int) -> list[dict]:
    from core.evaluation import detection_row
    from core.scoring import SCORE_FNS

    d = ui._rundata(path, stamp)
    return [detection_row(d, layer, mode, fn, k) for layer in d.layers for fn in SCORE_FNS]


def _value(row: dict, col: str) -> float:
    if col == "Aggr.":
        return row["aggr"]
    if col == "Errors":
        return row.get("errors", {}).get("eer_acc", np.nan)
    return row["attacks"].get(col, {}).get("eer_acc", np.nan)


rows = _rows(run.path, run.stamp, run.mode, run.k)
attacks = [a for a in ui.attack_sets(run) if any(a in r["attacks"] for r in rows)]
metric_options = ["Aggr."] + attacks + (["Errors"] if any("errors" in r for r in rows) else [])
metric = st.segmented_control("Negatives", metric_options, key="layers_metric", default="Aggr.",
                              persist_state="session", format_func=ui.md,
                              help="Aggr. = mean over the attacks weighted by their sizes; Errors = the CNN's "
                                   "natural misclassifications as negatives.") or "Aggr."
lines = []
styles = {"knn": ("#718096", "dot"), "wknn": ("#805ad5", "dash"), "dwknn": ("#2b6cb0", "solid")}
for fn, (color, dash) in styles.items():
    ys = [_value(next(r for r in rows if r["layer"] == la and r["fn"] == fn), metric) for la in layers]
    mine = fn == run.fn  # the sidebar's score function: thicker, with its values written
    lines.append(dict(type="scatter", x=[ui.plotly_text(la) for la in layers], y=[100 * y for y in ys],
                      mode="lines+markers+text" if mine else "lines+markers",
                      name=ui.FN_NAMES[fn] + (" (sidebar)" if mine else ""),
                      line=dict(color=color, dash=dash, width=4 if mine else 2), marker=dict(size=10 if mine else 7),
                      text=[f"{100 * y:.1f}" for y in ys], textposition="top center", textfont=dict(size=13),
                      hovertemplate="%{x}: %{y:.1f} %<extra>" + ui.FN_NAMES[fn] + "</extra>"))
st.plotly_chart(ui.figure(lines, title=f"EER accuracy per layer, {ui.plotly_text(metric)} (paper Fig. 6) — "
                                       f"{ui.MODE_NAMES[run.mode]}, k = {run.k}", ytitle="EER accuracy",
                          xtitle="layer (input → output)", height=420, yaxis=dict(ticksuffix=" %"),
                          xaxis=dict(categoryorder="array", categoryarray=[ui.plotly_text(la) for la in layers])),
                key="layers_fig6")
st.caption("Computed live from the stored neighbours at the sidebar's processing and k.")

st.subheader("Every setting (paper Tables 2 and 4)")
if rep is None:
    st.warning("This run has no report.json; rebuild it with:")
    st.code(ui.resume_command(run.manifest), language="bash")
    st.stop()
cols = list(rep["attacks"]) + ["Aggr.", "Errors"]
table = pd.DataFrame([{"layer": r["layer"], "processing": r["mode"], "score": ui.FN_NAMES[r["fn"]].split(" ")[0],
                       **{c: 100 * _value(r, c) for c in cols}} for r in rep["rows"]])
table = table.dropna(axis=1, how="all")
num = [c for c in cols if c in table]
st.caption(f"EER accuracy (%) from the run's report.json (k = {ui.md(rep['k'])}); click a column header to sort. The "
           "best cell of each column is highlighted.")
st.dataframe(table.style.format("{:.1f}", subset=num, na_rep="–")
             .highlight_max(subset=num, props="background-color:#c6f6d5;font-weight:700"),
             hide_index=True, key="layers_table", height=min(38 + 35 * len(table), 640))
