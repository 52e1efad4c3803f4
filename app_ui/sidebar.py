"""The sidebar: the run picker and the detector settings every page uses; it stops the page on a missing,
unreadable or unfinished run."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from app_ui.selection import (
    BUILD_COMMAND,
    FN_NAMES,
    MODE_NAMES,
    default_k,
    list_runs,
    manifest,
    resume_command,
    runs_root,
    stamp,
    unfinished_stages,
)
from app_ui.text import md


def _run_label(path: str) -> str:
    try:
        m = manifest(path, stamp(path))
    except (OSError, ValueError, RuntimeError):
        return f"{Path(path).name} (unreadable manifest)"
    from core.models.entrypoints import needs_entry

    todo = unfinished_stages(m)
    model = m.get("summary", {}).get("model") or m.get("config", {}).get("model", {}).get("name", "?")
    return (f"{Path(path).name} · {model}" + (" · unfinished" if todo else "")
            + (" · custom model: needs its entry point" if needs_entry(m) else ""))


def _reset_run_state() -> None:
    """A new run invalidates every other setting (layers, k range, current image...)."""
    for key in list(st.session_state):
        if key != "run":
            del st.session_state[key]


def sidebar() -> None:
    """Render the run picker and the detector settings; stop the page on a missing or unfinished run.

    Sets ``st.session_state["run"]`` (the run folder), ``det_mode``, ``det_fn`` and ``det_k``.
    """
    from app_ui.charts.bars import note_theme

    note_theme()  # chart colours follow the theme
    root = runs_root()
    runs = [str(p) for p in list_runs(root)]
    with st.sidebar:
        if not runs:
            st.error(f"No run found in {md(root)}.")
            st.markdown("Build the default run (a few minutes on a laptop CPU), then reload this page:")
            st.code(BUILD_COMMAND, language="bash")
            st.stop()
        if st.session_state.get("run") not in runs:
            st.session_state["run"] = runs[0]
        st.selectbox("Run", runs, key="run", format_func=_run_label, on_change=_reset_run_state,
                     persist_state="session",
                     help=f"Precomputed runs found in {md(root)} (set KNNGUARD_RUNS_DIR to look elsewhere).")
        path = st.session_state["run"]
        try:
            m = manifest(path, stamp(path))
        except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: core.runs.folder.ArtefactError
            m, err = {}, str(e)
        else:
            err = ""
    todo = [] if err else unfinished_stages(m)
    if todo or err:  # in the main area: the sidebar would cut the command
        st.error(f"Run {md(Path(path).name)} cannot be read: {md(err)}" if err else
                 f"Run {md(Path(path).name)} is not finished (missing: {md(', '.join(todo))}).")
        st.markdown("Rebuild it with:" if err else "Build or resume it with:")
        st.code(resume_command(m), language="bash", wrap_lines=True)
        st.stop()
    with st.sidebar:
        from core.models.entrypoints import needs_entry

        why = needs_entry(m, where=f"Run {Path(path).name}")
        if why:  # a run never supplies code: list it, do not open it
            st.warning(md(why), icon=":material/block:")
            st.stop()
        from app_ui import url_state

        pending = url_state.restore(m)
        s = m["summary"]
        d = s["defaults"]
        st.session_state.setdefault("det_mode", d["mode"])
        st.session_state.setdefault("det_fn", d["fn"])
        st.session_state.setdefault("det_k", default_k(s))
        st.markdown("**Detector settings** (all pages)")
        st.selectbox("Processing of the features", s["modes"], key="det_mode", format_func=MODE_NAMES.get,
                     persist_state="session",
                     help="How hidden-layer features are transformed before the kNN search.")
        st.selectbox("Score function", list(FN_NAMES), key="det_fn", format_func=FN_NAMES.get, persist_state="session",
                     help="How the k neighbours vote for the predicted class (paper Table 1).")
        st.slider("k (neighbours that vote)", 1, int(s["k_max"]), key="det_k", persist_state="session",
                  help=f"Up to the {int(s['k_max'])} neighbours stored per evaluation image. The paper uses k = 1000.")
        from core.evaluation.verdict import is_strict

        st.caption("A prediction is **trusted** when the kNN score of its class is "
                   + ("above the threshold (score > threshold, the authors' protocol)." if is_strict(m.get("config", {}))
                      else "at least the threshold (score ≥ threshold)."))
    url_state.restore_run(pending)
