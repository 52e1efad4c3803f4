"""The one operating point every page uses: per-layer thresholds (chosen on validation unless set on the Threshold
page), the layer shown, the trust rule of the run's protocol and the overall verdict (session state only)."""
from __future__ import annotations

import numpy as np
import streamlit as st

from app_ui import cache
from app_ui.selection import Run
from app_ui.text import md
from core.evaluation import verdict
from core.evaluation.setting_figures import operating_layer, operating_point

#: Session keys: thresholds set by hand {(layer, mode, fn, k): threshold}, the layer shown, the combination.
OVERRIDES, LAYER, COMBINE = "op_overrides", "op_layer", "op_combine"


def strict(run: Run) -> bool:
    """Whether the run's protocol trusts ``score > threshold`` (the authors') rather than ``>=``."""
    return verdict.is_strict(run.manifest.get("config", {}))


def trust_text(run: Run) -> str:
    """``"score > threshold"`` or ``"score ≥ threshold"``."""
    return verdict.trust_text(strict(run))


def trusts(run: Run, score: float, threshold: float) -> bool:
    return verdict.trusts(score, threshold, strict(run))


def op_layer(run: Run) -> str:
    """The layer of the configuration chosen on validation (the last layer without one)."""
    return operating_layer(cache.report(run), run.layers)


def validation(run: Run) -> tuple[dict[str, float], bool]:
    """Each layer's threshold chosen on validation at the sidebar's settings, and True; for a run without a
    validation split, each layer's EER threshold and False."""
    th = cache.validation_thresholds(run)
    if th is None:
        return cache.eer_thresholds(run), False
    th = dict(th)
    op = operating_point(cache.report(run))
    if op and op.get("threshold") is not None and (op["layer"], op["processing"], op["fn"], int(op["k"])) == \
            (op["layer"], run.mode, run.fn, run.k) and op["layer"] in th:
        th[op["layer"]] = float(op["threshold"])  # the report's value to the last digit
    return th, True


def _setting(run: Run, layer: str) -> tuple[str, str, str, int]:
    return (layer, run.mode, run.fn, int(run.k))


def thresholds(run: Run) -> dict[str, float]:
    """Per-layer thresholds of the shared operating point at the sidebar's settings."""
    th, _ = validation(run)
    over = st.session_state.get(OVERRIDES, {})
    return {la: float(over.get(_setting(run, la), th[la])) for la in run.layers}


def overridden(run: Run, layer: str) -> bool:
    return _setting(run, layer) in st.session_state.get(OVERRIDES, {})


def set_threshold(run: Run, layer: str, value: float) -> None:
    """Set ``layer``'s threshold at the sidebar's settings (every page follows)."""
    over = dict(st.session_state.get(OVERRIDES, {}))
    over[_setting(run, layer)] = float(value)
    st.session_state[OVERRIDES] = over


def reset() -> None:
    """Back to the thresholds chosen on validation, for every layer and setting."""
    st.session_state[OVERRIDES] = {}


def layer(run: Run) -> str:
    """The layer shown by every page (default: the operating layer)."""
    la = st.session_state.get(LAYER)
    if la not in run.layers:
        la = st.session_state[LAYER] = op_layer(run)
    return la


def layer_select(run: Run, key: str, label: str, where=st, **kw) -> str:
    """A layer selectbox bound to the shared layer: it opens at it and writes it back."""
    if st.session_state.get(key) != layer(run):
        st.session_state[key] = layer(run)

    def _write() -> None:
        st.session_state[LAYER] = st.session_state[key]

    return where.selectbox(label, run.layers, key=key, on_change=_write, **kw)


def overall_box(run: Run, scores: dict[str, float], *, key: str) -> verdict.Overall:
    """The overall verdict, once at the top of a page, with the choice of how the layers combine."""
    st.session_state.setdefault(COMBINE, "validation")
    if st.session_state[COMBINE] not in verdict.COMBINATIONS:
        st.session_state[COMBINE] = "validation"
    if st.session_state.get(key) != st.session_state[COMBINE]:
        st.session_state[key] = st.session_state[COMBINE]

    def _write() -> None:
        st.session_state[COMBINE] = st.session_state[key]

    th = thresholds(run)
    best = op_layer(run)
    c1, c2 = st.columns([1.3, 3], vertical_alignment="center")
    how = c1.radio("Overall verdict from", list(verdict.COMBINATIONS), key=key, on_change=_write,
                   format_func=verdict.COMBINATIONS.get,
                   help="The configuration chosen on validation uses its own layer; the others combine every "
                        "layer at its threshold of the shared operating point (set on the Threshold page).")
    v = verdict.overall_verdict(scores, th, how=how, operating_layer=best, strict=strict(run))
    rule = trust_text(run)
    if how == "validation":
        detail = (f"layer {md(best)}: score {scores[best]:.3f} {'≥' if not strict(run) else '>'} threshold "
                  f"{th[best]:.3f}" if v.trusted else
                  f"layer {md(best)}: score {scores[best]:.3f} {'<' if not strict(run) else '≤'} threshold "
                  f"{th[best]:.3f}")
    else:
        detail = (f"{len(v.rejecting)} of {len(v.layers)} layers reject"
                  + (f" ({md(', '.join(v.rejecting))})" if v.rejecting else ""))
    msg = (f"**Overall: {'✓ trusted' if v.trusted else '✗ rejected'}** — {detail}. Trust rule: {rule}; "
           f"{run.settings_text}.")
    with c2:
        (st.success if v.trusted else st.error)(msg, icon=":material/check_circle:" if v.trusted
                                                else ":material/cancel:")
    return v


def ood_box(run: Run, inspection, *, what: str = "this image") -> bool | None:
    """The out-of-distribution check of one :class:`~core.results.Inspection` (k-th neighbour distance of every
    layer against held-out authentic images); returns whether it is flagged (None: the run cannot tell)."""
    from core.evaluation import ood

    refs = cache.ood_references(run)
    if refs is None:
        return None
    k = int(run.k)
    d2 = {}
    for la in refs:
        dist = np.asarray(inspection.neighbours[la].distances)
        if len(dist) < k:
            return None
        d2[la] = float(dist[k - 1])
    a = ood.assess(refs, d2)
    ref = refs[a.layer]
    text = (f"distance to its {k}-th nearest training image at {md(a.layer)}: d² = {a.distance:.3g}, beyond "
            f"{a.percentile:.1f} % of held-out authentic images (flagged beyond the "
            f"{ref.limit_percentile:.2f}th percentile, d² > {ref.limit:.3g}, at any layer).")
    if a.flagged:
        st.warning(f"**Unlike anything in training** ({what}): out of distribution, {text} The kNN score alone "
                   "does not catch this: far neighbours can still agree on a class, so do not read the verdict "
                   "above as a sign that this image is like the training images.", icon=":material/help:")
    else:
        st.caption(f"In distribution: {text}")
    return a.flagged
