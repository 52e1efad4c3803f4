"""Comparison at a glance (Layers page): ROC curves of several layers, processings, score functions or k values
overlaid, or one per attack; and the k number box with the report's values as quick picks."""
from __future__ import annotations

import streamlit as st

from app_ui import cache
from app_ui import selection as state
from app_ui.charts import bars
from app_ui.charts import lines as line_chart
from app_ui.selection import Run
from core.evaluation import paper_figures
from core.evaluation.rundata import RunData

#: The report's k values, offered as quick picks (those up to the run's K_max).
K_PICKS = (10, 50, 100, 500, 1000)
#: What the overlaid curves vary.
VARY = {"layer": "Layers", "mode": "Processings", "fn": "Score functions", "k": "k values", "attack": "Attacks"}


@st.cache_data(show_spinner=False, max_entries=64)
def _rocs(path: str, stamp: int, settings: tuple, negatives: tuple, _data: RunData) -> list:
    return paper_figures.compared_rocs(_data, settings, negatives)


@st.cache_data(show_spinner=False, max_entries=64)
def _attack_rocs(path: str, stamp: int, setting: tuple, attacks: tuple, _data: RunData) -> dict:
    return paper_figures.attack_rocs(_data, setting, attacks)


def _set_k(key: str) -> None:
    value = st.session_state.get(key)
    if value is not None:
        st.session_state["det_k"] = int(value)


def k_box(run: Run) -> None:
    """A number box for the sidebar's k (session key ``det_k``) with the report's values as quick picks."""
    picks = [k for k in K_PICKS if k <= run.k_max]
    st.session_state["layers_k"] = run.k  # follows the sidebar's slider
    st.session_state["layers_k_pick"] = run.k if run.k in picks else None
    c1, c2 = st.columns([1, 3], vertical_alignment="bottom")
    c1.number_input(f"k (1–{run.k_max}, as the sidebar's slider)", 1, run.k_max, step=1, key="layers_k",
                    on_change=_set_k, args=("layers_k",))
    if picks:
        c2.pills("Quick picks (the report's k values)", picks, key="layers_k_pick", on_change=_set_k,
                 args=("layers_k_pick",))


def _spec(curves: list[tuple[str, paper_figures.metrics.Roc]], title: str) -> dict:
    from core.evaluation.metrics import roc_corners

    lines = []
    for i, (name, r) in enumerate(curves):
        x, y = roc_corners(r)  # the same polyline, a quarter of the points to send and draw
        lines.append(dict(name=f"{name} (AUC {r.auc:.3f}, EER acc. {100 * r.eer_accuracy:.1f} %)", x=x, y=y,
                          color=bars.PALETTE[i % len(bars.PALETTE)]))
    lines.append(dict(name="chance", x=[0, 1], y=[0, 1], color=bars.ink(), dash="dot", width=1))
    return line_chart.lines_spec(lines, title=title, ytitle="TPR: share of authentic trusted",
                             xtitle="FPR: share of negatives trusted", height=460, legend="bottom-right",
                             x_domain=(-0.02, 1.02), y_domain=(-0.02, 1.02))


def roc_overlay(run: Run, attacks: list[str], default_layer: str) -> None:
    """The overlay: choose what varies, the values to compare, the rest from the sidebar (and a layer)."""
    fns = list(state.FN_NAMES)
    vary = st.segmented_control("Compare", list(VARY), format_func=VARY.get, key="cmp_vary", default="layer") \
        or "layer"
    c1, c2 = st.columns([1, 3])
    layer = default_layer
    if vary != "layer":
        st.session_state.setdefault("cmp_layer", default_layer)
        layer = c1.selectbox("Layer", run.layers, key="cmp_layer")
    base = (layer, run.mode, run.fn, run.k)
    if vary == "attack":
        rocs = _attack_rocs(run.path, run.stamp, base, tuple(attacks), cache.rundata(run))
        curves = [(a, rocs[a]) for a in attacks if a in rocs]
        title = f"ROC per attack at {layer}"
    else:
        options = {"layer": run.layers, "mode": list(run.summary["modes"]), "fn": fns,
                   "k": sorted({k for k in K_PICKS if k <= run.k_max} | {run.k})}[vary]
        names = {"mode": lambda m: state.MODE_NAMES.get(m) or m, "fn": state.FN_NAMES.get,
                 "k": lambda k: f"k = {k}"}.get(vary, str)
        chosen = c2.multiselect(VARY[vary], options, default=options, key=f"cmp_{vary}", format_func=names)
        idx = {"layer": 0, "mode": 1, "fn": 2, "k": 3}[vary]
        settings = [tuple(v if j == idx else b for j, b in enumerate(base)) for v in chosen]
        rocs = _rocs(run.path, run.stamp, tuple(settings), tuple(attacks), cache.rundata(run))
        curves = [(str(names(v)), r) for v, r in zip(chosen, rocs)]
        title = f"ROC per {VARY[vary].lower()[:-1]}, every attack pooled"
    if not curves:
        st.info("Choose at least one curve.")
        return
    bars.show(_spec(curves, title), key="cmp_roc")
    st.caption(f"Every stored image (validation and test); positives: {' + '.join(cache.rundata(run).positive_sets)}"
               f"; negatives: {'each attack alone' if vary == 'attack' else 'every attack pooled'}; the settings not "
               f"compared come from the sidebar ({run.settings_text}).")
