"""Load plotly.js in the browser tab while it is idle after its first page, so that the first page with a plotly
chart opened later in that tab does not wait for it.

Streamlit loads its plotly element (one 4.7 MB script, plotly.js inside) the first time a page of the tab shows a
plotly chart; on 2 cores that took about 2 s of every new tab (``python -m benchmarks.first_page``,
2026-11-29: a one-heading page 1.32 s, the same with one small plotly chart 3.35 s). The first page draws its chart with
Vega-Lite; this imports Streamlit's own plotly module when the browser next has nothing to do, from the same
address its frontend uses, so that the later import is the same, already evaluated, module.

The script is a constant of this module (nothing of a run reaches it); it finds the module's file name in the
installed Streamlit's static folder and does nothing when that is not found.
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import streamlit as st

__all__ = ["plotly_module", "warm_script", "preload_plotly"]

#: Session key: the tab was asked to load plotly.js (once per session).
ASKED = "_plotly_preload"
_NAME = re.compile(r"^PlotlyChart\.[A-Za-z0-9_-]+\.js$")


@functools.lru_cache(maxsize=1)
def plotly_module() -> str | None:
    """File name of Streamlit's plotly element module in its static folder (e.g. ``PlotlyChart.D9Z0_fxz.js``),
    or None when there is not exactly one."""
    folder = Path(st.__file__).resolve().parent / "static" / "static" / "js"
    names = [p.name for p in folder.glob("PlotlyChart.*.js") if _NAME.match(p.name)]
    return names[0] if len(names) == 1 else None


def warm_script(module: str) -> str:
    """The ``<script>`` that imports ``module`` (a :func:`plotly_module` name) next to the frontend's own entry
    script, once per tab, when the browser is idle (at the latest 2 s after the page is drawn)."""
    if not _NAME.match(module):
        raise ValueError(f"not a module name: {module!r}")
    name = json.dumps(module)
    return ("<script>(() => {"
            "if (window.__knnguardPlotly) return; window.__knnguardPlotly = true;"
            "const entry = document.querySelector('script[type=module][src*=\"/static/js/index.\"]');"
            "if (!entry) return;"
            f"const url = new URL({name}, entry.src).href;"
            "const load = () => import(url).catch(() => { window.__knnguardPlotly = false; });"
            "(window.requestIdleCallback || ((f) => setTimeout(f, 500)))(load, {timeout: 2000});"
            "})();</script>")


def preload_plotly() -> None:
    """Ask the browser tab to load plotly.js when idle (the first script run of a session only; call at the end
    of the page)."""
    if st.session_state.get(ASKED):
        return
    module = plotly_module()
    if module is None:
        return
    st.session_state[ASKED] = True
    with st.sidebar:
        st.html(warm_script(module), unsafe_allow_javascript=True, width="content")
