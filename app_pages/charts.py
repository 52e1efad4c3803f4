"""Verdict words and colours, the page guide, plotly figures built from plain trace dicts, and the first page's
chart as a Vega-Lite spec (Streamlit's plotly element costs a new browser tab about 2 s of loading plotly.js on
2 cores, its Vega-Lite element about 0.7 s: ``python -m benchmarks.first_page``)."""
from __future__ import annotations

from typing import Any

import streamlit as st

from app_pages._text import plotly_text

#: Verdict colours (colour-blind safe: blue / orange) and words; never colour alone.
TRUSTED_COLOR = "#2b6cb0"
REJECTED_COLOR = "#dd6b20"
TRUSTED = "✓ trusted"
REJECTED = "✗ rejected"


#: Neutral ink (threshold ticks, lines, curves) per Streamlit theme; the unknown theme gets a grey that reads on both.
INK = {"light": "#222222", "dark": "#e2e8f0", None: "#808080"}


def note_theme() -> None:
    """Record the app's theme for this script run (call once per run, before any chart; :func:`theme` reads it).

    The browser's (``st.context.theme``) except on a session's first run, where Streamlit may report it wrong: then
    the configured ``theme.base`` (unknown when the theme follows the browser).
    """
    if "_theme" not in st.session_state:
        t = st.get_option("theme.base")
    else:
        try:
            t = st.context.theme.type
        except AttributeError:
            t = None
    st.session_state["_theme"] = t if t in ("light", "dark") else None


def theme() -> str | None:
    """The app's theme as :func:`note_theme` recorded it this run: ``"light"``, ``"dark"`` or None (unknown)."""
    return st.session_state.get("_theme")


def ink() -> str:
    """The neutral colour of lines and ticks for the current theme (:data:`INK`)."""
    return INK[theme()]


def rule_strict(strict: bool | None = None) -> bool:
    """``strict`` if given, else the trust rule of the current run's protocol (:func:`core.verdict.is_strict`):
    True for ``score > threshold``."""
    if strict is not None:
        return bool(strict)
    from app_pages import operating, state

    return operating.strict(state.current_run())


def trusted(score: float, threshold: float, strict: bool | None = None) -> bool:
    """Whether ``score`` is trusted at ``threshold`` by the rule of :func:`rule_strict` (NaN counts as 0)."""
    from core.verdict import trusts

    return trusts(score, threshold, rule_strict(strict))


def verdict(score: float, threshold: float, strict: bool | None = None) -> str:
    """:data:`TRUSTED` when :func:`trusted`, else :data:`REJECTED`."""
    return TRUSTED if trusted(score, threshold, strict) else REJECTED


def how_to_read(text: str) -> None:
    """The page's one-line guide for a student."""
    st.info(text, icon=":material/school:")


def legend(strict: bool | None = None, *, rejected_mark: str = "hatched") -> None:
    """The score colour legend, in colour and in words, with the trust rule of :func:`rule_strict`;
    ``rejected_mark`` names how a rejected bar is drawn besides its colour."""
    ok, no = ("score > threshold", "score ≤ threshold") if rule_strict(strict) else ("score ≥ threshold",
                                                                                      "score < threshold")
    chip = ("<span style='background:{c};color:white;padding:1px 8px;border-radius:4px;font-weight:600'>{w}"
            "</span>")
    st.markdown(chip.format(c=TRUSTED_COLOR, w=TRUSTED) + f" {ok} &nbsp;·&nbsp; "
                + chip.format(c=REJECTED_COLOR, w=REJECTED) + f" {no} ({rejected_mark}) &nbsp;·&nbsp; "
                "<b>▬</b> the layer's threshold", unsafe_allow_html=True)


def figure(data: list[dict], *, title: str, ytitle: str, xtitle: str = "", height: int = 360,
           legend_below: bool = False, xaxis: dict | None = None, yaxis: dict | None = None, validate: bool = True,
           **layout: Any):
    """A plotly figure from plain trace dicts, built and validated once (cheaper per rerun than adding traces
    one by one); ``validate=False`` skips plotly's validation (same JSON for valid dicts, about half the time)."""
    import plotly.graph_objects as go

    legend = (dict(orientation="h", yanchor="top", y=-0.2, xanchor="left", x=0) if legend_below else
              dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0))
    lay = dict(title=dict(text=title, font=dict(size=15)), height=height, legend=legend,
               margin=dict(l=10, r=10, t=50, b=10),
               xaxis=dict(title=dict(text=xtitle), **(xaxis or {})),
               yaxis=dict(title=dict(text=ytitle), **(yaxis or {})), **layout)
    return go.Figure(dict(data=data, layout=lay), _validate=validate)


def vline(x: float, *, label: str | None = None) -> tuple[list[dict], list[dict]]:
    """(shapes, annotations) of a vertical line across the plot at ``x``."""
    shapes = [dict(type="line", x0=x, x1=x, y0=0, y1=1, yref="paper", line=dict(color=ink(), width=2))]
    notes = ([dict(x=x, y=1, yref="paper", text=label, showarrow=False, xanchor="left", yanchor="bottom")]
             if label else [])
    return shapes, notes


def vband(x0: float, x1: float, color: str, label: str, *, left: bool) -> tuple[list[dict], list[dict]]:
    """(shapes, annotations) of a light vertical band from ``x0`` to ``x1``, labelled in its top corner."""
    shapes = [dict(type="rect", x0=x0, x1=x1, y0=0, y1=1, yref="paper", fillcolor=color, opacity=0.08, line_width=0,
                   layer="below")]
    notes = [dict(x=x0 if left else x1, y=1, yref="paper", text=label, showarrow=False,
                  xanchor="left" if left else "right", yanchor="top", font=dict(color=color))]
    return shapes, notes


def _threshold_trace(layers: list[str], thresholds: dict[str, float]) -> dict:
    return dict(type="scatter", x=[plotly_text(la) for la in layers], y=[thresholds[la] for la in layers],
                mode="markers", name="threshold",
                marker=dict(symbol="line-ew-open", size=60, color=ink(), line=dict(width=3, color=ink())),
                hovertemplate="%{x}: threshold %{y:.3f}<extra></extra>")


def _number(v: float) -> float | None:
    """A finite float, or None (JSON null: Vega-Lite leaves the mark out) for NaN and infinities."""
    v = float(v)
    return v if v == v and abs(v) != float("inf") else None


def layer_scores_spec(layers: list[str], scores: dict[str, float], thresholds: dict[str, float], *, title: str,
                      strict: bool | None = None) -> dict:
    """A Vega-Lite spec for ``st.vega_lite_chart`` of the kNN score per layer: one bar per layer, coloured,
    labelled (✓ / ✗) and, when rejected, outlined with a dashed line by verdict (the rule of :func:`rule_strict`),
    each layer's threshold as a tick in the theme's ink (:func:`ink`).

    Run text (layer names, ``title``) goes in as data and is drawn as text: no escaping is needed or done.

    Returns
    -------
    dict
        The spec; ``data.values`` has one row per layer: ``layer, score, threshold, verdict, label, rejected``.
    """
    strict = rule_strict(strict)
    rows = []
    for la in layers:
        ok = trusted(scores[la], thresholds[la], strict)
        word = TRUSTED if ok else REJECTED
        rows.append({"layer": str(la), "score": _number(scores[la]), "threshold": _number(thresholds[la]),
                     "verdict": word, "label": f"{float(scores[la]):.2f} {word[0]}", "rejected": not ok})
    x = {"field": "layer", "type": "nominal", "sort": [str(la) for la in layers], "title": "layer (input → output)",
         "axis": {"labelAngle": 0}}
    y = {"field": "score", "type": "quantitative", "scale": {"domain": [0, 1.15]},
         "title": "kNN score of the predicted class"}
    tip = [{"field": "layer", "type": "nominal"}, {"field": "score", "type": "quantitative", "format": ".3f"},
           {"field": "threshold", "type": "quantitative", "format": ".3f"}, {"field": "verdict", "type": "nominal"}]
    return {"title": {"text": str(title), "fontSize": 15}, "height": 360, "data": {"values": rows},
            "layer": [
                {"mark": {"type": "bar", "strokeWidth": 2, "strokeDash": [5, 3]},
                 "encoding": {"x": x, "y": y, "tooltip": tip,
                              "color": {"field": "verdict", "type": "nominal", "title": None,
                                        "scale": {"domain": [TRUSTED, REJECTED],
                                                  "range": [TRUSTED_COLOR, REJECTED_COLOR]},
                                        "legend": {"orient": "top"}},
                              "stroke": {"condition": {"test": "datum.rejected", "value": ink()}, "value": None}}},
                {"mark": {"type": "text", "dy": -10, "fontSize": 14, "color": ink()},
                 "encoding": {"x": x, "y": y, "text": {"field": "label", "type": "nominal"}}},
                {"mark": {"type": "tick", "thickness": 3, "size": 48, "color": ink()},
                 "encoding": {"x": x, "y": {"field": "threshold", "type": "quantitative"}, "tooltip": tip}},
            ]}


def before_after_figure(layers: list[str], before: dict[str, float], after: dict[str, float],
                        thresholds: dict[str, float], *, title: str, strict: bool | None = None):
    """Grouped bars per layer: score before and after the attack, coloured by verdict (the rule of
    :func:`rule_strict`), with thresholds."""
    strict = rule_strict(strict)
    data = []
    for name, sc, opacity in (("before attack (left bar)", before, 0.55), ("after attack (right bar)", after, 1.0)):
        ok = [trusted(sc[la], thresholds[la], strict) for la in layers]
        data.append(dict(type="bar", x=[plotly_text(la) for la in layers], y=[sc[la] for la in layers], name=name,
                         marker=dict(color=[TRUSTED_COLOR if o else REJECTED_COLOR for o in ok], opacity=opacity,
                                     pattern=dict(shape=["" if o else "/" for o in ok])),
                         text=[f"{sc[la]:.2f}{'✓' if o else '✗'}" for la, o in zip(layers, ok)],
                         textposition="outside", textfont=dict(size=13), cliponaxis=False,
                         hovertemplate="%{x}: %{y:.3f}<extra>" + name + "</extra>"))
    data.append(_threshold_trace(layers, thresholds))
    return figure(data, title=title, ytitle="kNN score of the predicted class", xtitle="layer (input → output)",
                  xaxis=dict(categoryorder="array", categoryarray=[plotly_text(la) for la in layers]),
                  yaxis=dict(range=[0, 1.15]), barmode="group", showlegend=False)


def ci_text(interval) -> str:
    """``[v, lo, hi]`` (fractions) as ``"84.2 [82.9, 85.4]"`` (percent); "–" where undefined."""
    if not interval or interval[0] is None:
        return "–"
    v, lo, hi = interval
    return f"{100 * v:.1f}" + ("" if lo is None or hi is None else f" [{100 * lo:.1f}, {100 * hi:.1f}]")
