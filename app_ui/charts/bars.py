"""Verdict words and colours, the page guide, and the app's bar charts as Vega-Lite specs for :func:`show`
(its line charts: :mod:`app_ui.charts.lines`) (Streamlit's plotly element costs a new browser tab about 2 s of loading plotly.js on 2 cores, its
Vega-Lite element about 0.7 s: ``python -m benchmarks.first_page``).

Run text (layer, set and attack names, titles) goes into a spec as data or as a title and is drawn as text, never
as markup; no spec holds a URL, an image or an expression built from run text."""
from __future__ import annotations

import streamlit as st

#: Verdict colours (colour-blind safe: blue / orange) and words; never colour alone.
TRUSTED_COLOR = "#2b6cb0"
REJECTED_COLOR = "#dd6b20"
TRUSTED = "✓ trusted"
REJECTED = "✗ rejected"
#: Names of the two bars per layer of :func:`before_after_spec`.
BEFORE, AFTER = "before attack", "after attack"
#: Colours of compared curves, in order.
PALETTE = ["#2b6cb0", "#dd6b20", "#2f855a", "#805ad5", "#c53030", "#d69e2e", "#00a3c4", "#b83280", "#718096"]


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
    """``strict`` if given, else the trust rule of the current run's protocol (:func:`core.evaluation.verdict.is_strict`):
    True for ``score > threshold``."""
    if strict is not None:
        return bool(strict)
    from app_ui import selection
    from core.evaluation.verdict import is_strict

    return is_strict(selection.current_run().manifest.get("config", {}))


def trusted(score: float, threshold: float, strict: bool | None = None) -> bool:
    """Whether ``score`` is trusted at ``threshold`` by the rule of :func:`rule_strict` (NaN counts as 0)."""
    from core.evaluation.verdict import trusts

    return trusts(score, threshold, rule_strict(strict))


def verdict(score: float, threshold: float, strict: bool | None = None) -> str:
    """:data:`TRUSTED` when :func:`trusted`, else :data:`REJECTED`."""
    return TRUSTED if trusted(score, threshold, strict) else REJECTED


def how_to_read(text: str) -> None:
    """The page's one-line guide for a student."""
    st.info(text, icon=":material/school:")


def legend_text(strict: bool | None = None, *, rejected_mark: str = "dashed outline") -> str:
    """The verdict legend in words, with the trust rule of :func:`rule_strict` (a chart's subtitle: colour is never
    the only mark); ``rejected_mark`` names how a rejected bar is drawn besides its colour."""
    ok, no = ("score > threshold", "score ≤ threshold") if rule_strict(strict) else ("score ≥ threshold",
                                                                                      "score < threshold")
    return f"{TRUSTED}: {ok} · {REJECTED}: {no} ({rejected_mark})"


def inline_data(spec: dict) -> dict:
    """``spec`` with its top-level ``data.values`` moved into each layer that has no data of its own (a copy).

    Streamlit turns top-level data into a pandas frame and then Arrow (0.1 s of the first page's script run for
    its two small bar charts, py-spy 2026-11-29); data inside the layers travels with the spec as JSON."""
    data = spec.get("data")
    if "layer" not in spec or not isinstance(data, dict) or set(data) != {"values"}:
        return spec
    out = {k: v for k, v in spec.items() if k != "data"}
    out["layer"] = [layer if "data" in layer else {**layer, "data": data} for layer in spec["layer"]]
    return out


def show(spec: dict, *, key: str, where=None) -> None:
    """Draw ``spec`` full width in a container keyed ``key`` (its page element carries the CSS class
    ``st-key-<key>``; the chart's own key is ``<key>_chart``), its data inline (:func:`inline_data`)."""
    with (where or st).container(key=key):
        st.vega_lite_chart(inline_data(spec), key=f"{key}_chart", width="stretch")


def _verdict_color() -> dict:
    return {"field": "verdict", "type": "nominal", "title": None,
            "scale": {"domain": [TRUSTED, REJECTED], "range": [TRUSTED_COLOR, REJECTED_COLOR]},
            "legend": {"orient": "top"}}


def number(v: float) -> float | None:
    """A finite float, or None (JSON null: Vega-Lite leaves the mark out) for NaN and infinities."""
    v = float(v)
    return v if v == v and abs(v) != float("inf") else None


def layer_scores_spec(layers: list[str], scores: dict[str, float], thresholds: dict[str, float], *, title: str,
                      strict: bool | None = None) -> dict:
    """A Vega-Lite spec for :func:`show` of the kNN score per layer: one bar per layer, coloured, labelled (✓ / ✗)
    and, when rejected, outlined with a dashed line by verdict (the rule of :func:`rule_strict`, in words in the
    subtitle: :func:`legend_text`), each layer's threshold as a tick in the theme's ink (:func:`ink`).

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
        rows.append({"layer": str(la), "score": number(scores[la]), "threshold": number(thresholds[la]),
                     "verdict": word, "label": f"{float(scores[la]):.2f} {word[0]}", "rejected": not ok})
    x = {"field": "layer", "type": "nominal", "sort": [str(la) for la in layers], "title": "layer (input → output)",
         "axis": {"labelAngle": 0}}
    y = {"field": "score", "type": "quantitative", "scale": {"domain": [0, 1.15]},
         "title": "kNN score of the predicted class"}
    tip = [{"field": "layer", "type": "nominal"}, {"field": "score", "type": "quantitative", "format": ".3f"},
           {"field": "threshold", "type": "quantitative", "format": ".3f"}, {"field": "verdict", "type": "nominal"}]
    return {"title": {"text": str(title), "fontSize": 15, "subtitle": [legend_text(strict), "▬ the layer's threshold"]},
            "height": 360,
            "data": {"values": rows},
            "layer": [
                {"mark": {"type": "bar", "strokeWidth": 2, "strokeDash": [5, 3]},
                 "encoding": {"x": x, "y": y, "tooltip": tip,
                              "color": _verdict_color(),
                              "stroke": {"condition": {"test": "datum.rejected", "value": ink()}, "value": None}}},
                {"mark": {"type": "text", "dy": -10, "fontSize": 14, "color": ink()},
                 "encoding": {"x": x, "y": y, "text": {"field": "label", "type": "nominal"}}},
                {"mark": {"type": "tick", "thickness": 3, "size": 48, "color": ink()},
                 "encoding": {"x": x, "y": {"field": "threshold", "type": "quantitative"}, "tooltip": tip}},
            ]}


def top_classes_spec(classes: list[str], probabilities: list[float]) -> dict:
    """A Vega-Lite spec of the CNN's top classes: one horizontal bar per class (softmax probability, in the given
    order), labelled with its percentage.

    Returns
    -------
    dict
        The spec; ``data.values`` has one row per class: ``class, probability, label``.
    """
    rows = [{"class": str(c), "probability": number(p), "label": f"{100 * float(p):.1f} %"}
            for c, p in zip(classes, probabilities)]
    y = {"field": "class", "type": "nominal", "sort": [r["class"] for r in rows], "title": None,
         "axis": {"labelLimit": 120}}
    x = {"field": "probability", "type": "quantitative", "scale": {"domain": [0, 1.3]}, "axis": None}
    return {"height": {"step": 26}, "data": {"values": rows},
            "layer": [{"mark": {"type": "bar", "color": "#a0aec0"},
                       "encoding": {"y": y, "x": x,
                                    "tooltip": [{"field": "class", "type": "nominal"},
                                                {"field": "probability", "type": "quantitative", "format": ".2%"}]}},
                      {"mark": {"type": "text", "align": "left", "dx": 4, "color": ink()},
                       "encoding": {"y": y, "x": x, "text": {"field": "label", "type": "nominal"}}}]}


def before_after_spec(layers: list[str], before: dict[str, float], after: dict[str, float],
                      thresholds: dict[str, float], *, title: str, strict: bool | None = None) -> dict:
    """A Vega-Lite spec of grouped bars per layer: the score before (faded, left) and after (right) the attack,
    coloured, labelled (✓ / ✗) and, when rejected, outlined with a dashed line by verdict (the rule of
    :func:`rule_strict`), each layer's threshold as a tick across both bars.

    Returns
    -------
    dict
        The spec; its first layer's ``data.values`` has two rows per layer (``when`` = :data:`BEFORE` or
        :data:`AFTER`): ``layer, when, score, threshold, verdict, label, rejected``.
    """
    strict = rule_strict(strict)
    rows = []
    for when, sc in ((BEFORE, before), (AFTER, after)):
        for la in layers:
            ok = trusted(sc[la], thresholds[la], strict)
            word = TRUSTED if ok else REJECTED
            rows.append({"layer": str(la), "when": when, "score": number(sc[la]),
                         "threshold": number(thresholds[la]), "verdict": word,
                         "label": f"{float(sc[la]):.2f}{word[0]}", "rejected": not ok})
    x = {"field": "layer", "type": "nominal", "sort": [str(la) for la in layers], "title": "layer (input → output)",
         "axis": {"labelAngle": 0}}
    off = {"field": "when", "type": "nominal", "sort": [BEFORE, AFTER]}
    y = {"field": "score", "type": "quantitative", "scale": {"domain": [0, 1.15]},
         "title": "kNN score of the predicted class"}
    tip = [{"field": "layer", "type": "nominal"}, {"field": "when", "type": "nominal"},
           {"field": "score", "type": "quantitative", "format": ".3f"},
           {"field": "threshold", "type": "quantitative", "format": ".3f"}, {"field": "verdict", "type": "nominal"}]
    ticks = [{"layer": str(la), "threshold": number(thresholds[la])} for la in layers]
    return {"title": {"text": str(title), "fontSize": 15,
                      "subtitle": [legend_text(strict),
                                   "▬ the layer's threshold · left bar: before the attack (faded), right bar: after"]},
            "height": 380,
            "layer": [
                {"data": {"values": rows},
                 "mark": {"type": "bar", "strokeWidth": 2, "strokeDash": [5, 3]},
                 "encoding": {"x": x, "xOffset": off, "y": y, "tooltip": tip,
                              "color": _verdict_color(),
                              "opacity": {"field": "when", "type": "nominal", "legend": None,
                                          "scale": {"domain": [BEFORE, AFTER], "range": [0.5, 1.0]}},
                              "stroke": {"condition": {"test": "datum.rejected", "value": ink()}, "value": None}}},
                {"data": {"values": rows},
                 "mark": {"type": "text", "dy": -10, "fontSize": 12, "color": ink()},
                 "encoding": {"x": x, "xOffset": off, "y": y, "text": {"field": "label", "type": "nominal"}}},
                {"data": {"values": ticks},
                 "mark": {"type": "tick", "thickness": 3, "color": ink(), "bandSize": 0.9},
                 "encoding": {"x": x, "y": {"field": "threshold", "type": "quantitative"},
                              "tooltip": [{"field": "layer", "type": "nominal"},
                                          {"field": "threshold", "type": "quantitative", "format": ".3f"}]}},
            ]}


def ci_text(interval) -> str:
    """``[v, lo, hi]`` (fractions) as ``"84.2 [82.9, 85.4]"`` (percent); "–" where undefined."""
    if not interval or interval[0] is None:
        return "–"
    v, lo, hi = interval
    return f"{100 * v:.1f}" + ("" if lo is None or hi is None else f" [{100 * lo:.1f}, {100 * hi:.1f}]")
