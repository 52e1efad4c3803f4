"""The view in the URL: image, layer, processing, score function, k, threshold and verdict combination as query
parameters, so a reload, a bookmark or a pasted link reopen the same view (the page is the URL's path).

The URL is read once per session: a rerun's query string can be older than the last write.
Query parameters are untrusted: each is checked against the run's own names and ranges; anything else is
ignored (the default stays). Nothing from the URL ever reaches a path or Markdown unchecked.

    /threshold?img=authentic:12&layer=conv3&mode=l2&fn=wknn&k=500&th=0.25&verdict=any
"""
from __future__ import annotations

import re

import streamlit as st

from app_ui import navigation, selection
from core.evaluation.verdict import COMBINATIONS

#: Session key of the parameters last written (present once the session has read its URL).
WRITTEN = "url_written"
_INT = re.compile(r"\d{1,7}")
_FLOAT = re.compile(r"(0|1)(\.\d{1,8})?|\.\d{1,8}")
_IMG = re.compile(r"([A-Za-z0-9_\-]{1,64}):(\d{1,7})")
#: Hidden aliases of the pages' URL paths (paths are case-sensitive in Streamlit): path -> PAGES key.
ALIASES = {"inspect": "inspect", "Inspect": "inspect", "home": "inspect", "Attack": "attack", "Threshold": "threshold",
           "Layers": "layers", "Failures": "failures", "Run": "run"}


def alias_pages() -> list:
    """Hidden pages serving :data:`ALIASES` (``/inspect`` opened directly, ``/Threshold``...)."""
    return [st.Page(navigation.PAGES[key], title=key.capitalize(), url_path=path, visibility="hidden")
            for path, key in ALIASES.items() if key in navigation.PAGES]


def parse(params: dict[str, str], manifest: dict) -> dict:
    """The valid parameters of ``params`` for the run of ``manifest``.

    Returns
    -------
    dict
        A subset of ``img`` (``("upload",)`` or ``(set, index)``), ``layer``, ``mode``, ``fn``, ``k`` (int),
        ``th`` (float in [0, 1]) and ``verdict``.
    """
    s = manifest.get("summary", {})
    out: dict = {}
    get = {k: str(v) for k, v in params.items() if isinstance(v, str) and len(v) <= 80}
    if get.get("layer") in s.get("layers", []):
        out["layer"] = get["layer"]
    if get.get("mode") in s.get("modes", []):
        out["mode"] = get["mode"]
    if get.get("fn") in selection.FN_NAMES:
        out["fn"] = get["fn"]
    if _INT.fullmatch(get.get("k", "")) and 1 <= int(get["k"]) <= int(s.get("k_max", 0)):
        out["k"] = int(get["k"])
    if _FLOAT.fullmatch(get.get("th", "")) and 0.0 <= float(get["th"]) <= 1.0:
        out["th"] = float(get["th"])
    if get.get("verdict") in COMBINATIONS:
        out["verdict"] = get["verdict"]
    img = get.get("img", "")
    m = _IMG.fullmatch(img)
    sets = s.get("sets", {})
    if img == "upload":
        out["img"] = ("upload",)
    elif m and m.group(1) in sets and int(m.group(2)) < int(sets[m.group(1)].get("n", 0)):
        out["img"] = (m.group(1), int(m.group(2)))
    return out


def restore(manifest: dict) -> dict:
    """Apply the URL's valid parameters to a new session (a reload, a pasted link, a bookmark); call before the
    sidebar's widgets. Returns the parameters still to apply once the run is
    loaded (:func:`restore_run`)."""
    qp = st.query_params.to_dict()
    if WRITTEN in st.session_state:  # once per session: a rerun may carry a query string older than the last write
        return {}
    st.session_state[WRITTEN] = qp
    p = parse(qp, manifest)
    for key, name in (("mode", "det_mode"), ("fn", "det_fn"), ("k", "det_k")):
        if key in p:
            st.session_state[name] = p[key]
    if "layer" in p:
        st.session_state["op_layer"] = p["layer"]
    if "verdict" in p:
        st.session_state["op_combine"] = p["verdict"]
    return p


def restore_run(p: dict) -> None:
    """The parameters of :func:`restore` that need the run: the threshold and the image."""
    if not p:
        return
    from app_ui import current_image, operating_point

    run = selection.current_run()
    if "th" in p:
        operating_point.set_threshold(run, p.get("layer") or operating_point.layer(run), p["th"])
    img = p.get("img")
    if img == ("upload",):
        st.session_state["inspect_source"] = "Upload"
    elif img:
        current_image.set_current_from_set(run, img[0], img[1])
        st.session_state.update(inspect_source="Evaluation set", inspect_set=img[0], inspect_index=img[1])


def write(page: str = "") -> None:
    """Put the session's view in the URL when it or the page (``page``, its url path) changed.

    The browser drops the query string on a navigation while the server may keep the old one, so a new page
    writes it again even when the server's copy already matches."""
    ss = st.session_state
    if "det_mode" not in ss:
        return
    want = {"mode": str(ss["det_mode"]), "fn": str(ss["det_fn"]), "k": str(int(ss["det_k"]))}
    cur = ss.get("current")
    if cur is not None and cur.get("set") is not None:
        want["img"] = f"{cur['set']}:{int(cur['index'])}"
    elif cur is not None and str(cur.get("source", "")).startswith("your upload"):
        want["img"] = "upload"
    layer = ss.get("op_layer")
    if layer is not None:
        want["layer"] = str(layer)
        th = ss.get("op_overrides", {}).get((layer, ss["det_mode"], ss["det_fn"], int(ss["det_k"])))
        if th is not None:
            want["th"] = f"{float(th):.6g}"
    if ss.get("op_combine", "validation") != "validation":
        want["verdict"] = str(ss["op_combine"])
    if st.query_params.to_dict() != want or ss.get(WRITTEN) != (page, want):
        st.query_params.from_dict(want)
    ss[WRITTEN] = (page, want)
