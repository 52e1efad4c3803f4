"""Verdict words and colours, the page guide, and every chart of the app as a Vega-Lite spec for
:func:`show` (Streamlit's plotly element costs a new browser tab about 2 s of loading plotly.js on 2 cores, its
Vega-Lite element about 0.7 s: ``python -m benchmarks.first_page``).

Run text (layer, set and attack names, titles) goes into a spec as data or as a title and is drawn as text, never
as markup; no spec holds a URL, an image or an expression built from run text."""
from __future__ import annotations

import numpy as np
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
#: Line styles by name: Vega-Lite ``strokeDash`` arrays.
DASHES = {"solid": [1, 0], "dash": [6, 4], "dot": [2, 3], "dashdot": [6, 3, 2, 3]}


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


def legend_text(strict: bool | None = None, *, rejected_mark: str = "dashed outline") -> str:
    """The verdict legend in words, with the trust rule of :func:`rule_strict` (a chart's subtitle: colour is never
    the only mark); ``rejected_mark`` names how a rejected bar is drawn besides its colour."""
    ok, no = ("score > threshold", "score ≤ threshold") if rule_strict(strict) else ("score ≥ threshold",
                                                                                      "score < threshold")
    return f"{TRUSTED}: {ok} · {REJECTED}: {no} ({rejected_mark})"


def show(spec: dict, *, key: str, where=None) -> None:
    """Draw ``spec`` full width in a container keyed ``key`` (its page element carries the CSS class
    ``st-key-<key>``; the chart's own key is ``<key>_chart``)."""
    with (where or st).container(key=key):
        st.vega_lite_chart(spec, key=f"{key}_chart", width="stretch")


def _verdict_color() -> dict:
    return {"field": "verdict", "type": "nominal", "title": None,
            "scale": {"domain": [TRUSTED, REJECTED], "range": [TRUSTED_COLOR, REJECTED_COLOR]},
            "legend": {"orient": "top"}}


def _numbers(values) -> list[float | None]:
    return [_number(v) for v in values]


def lines_spec(series: list[dict], *, title: str, xtitle: str, ytitle: str, height: int = 360,
               x_domain: tuple[float, float] | None = None, y_domain: tuple[float, float] | None = None,
               x_order: list[str] | None = None, y_percent: bool = False, legend: str = "top",
               rules: list[dict] = (), bands: list[dict] = (), points: list[dict] = ()) -> dict:
    """A Vega-Lite spec of lines, with optional marked points, vertical rules and shaded vertical bands.

    Parameters
    ----------
    series : list of dict
        One line each: ``name``, ``x`` and ``y`` (sequences of one length n), ``color``; optional ``dash`` (a key of
        :data:`DASHES`), ``width`` (px, default 2), ``step`` (drawn as steps centred on x), ``fill`` (shaded to
        y = 0), ``markers`` (a dot per point), ``labels`` (n texts written above the points), ``lo`` / ``hi`` (n
        error-bar ends, None for none), ``band_lo`` / ``band_hi`` (n ends of a shaded band), ``hover`` (n texts
        for the tooltip). Names go in the legend.
    x_order : list of str, optional
        Categories of a nominal x axis in order (the x values are then those names); default: a number axis.
    y_percent : bool
        Tick labels with " %".
    legend : {"top", "below", "bottom-right"}
        Where the legend goes: above the plot (in a row), below it (one entry per line; the chart grows by a line
        per entry) or inside, in the plot's lower right corner (ROC curves leave it empty).
    rules : list of dict
        Vertical lines: ``x``, optional ``label`` (written at the top, right of the line).
    bands : list of dict
        Shaded spans: ``x0``, ``x1``, ``color``, ``label`` (written in the top corner: left when ``left``).
    points : list of dict
        Single marked points: ``name`` (in the legend), ``x``, ``y``, ``color``, optional ``shape`` (Vega-Lite
        shape name, default circle), ``filled``, ``label`` (written below right), ``in_legend`` (default True;
        False: drawn in ``color`` without a legend entry).

    A line of 64 points or more on a number axis, without per-point values and not stepped, is drawn through the
    fewest of its points that keep every other within :data:`SIMPLIFY` of it (:func:`core.polyline.simplify`).

    Returns
    -------
    dict
        The spec; every layer holds its rows inline (``layer[i].data.values``): a line layer holds the rows of
        every series drawn alike (``series, x, y``, and ``labels``, ``hover``, ``lo``, ``hi`` when given), in the
        order of ``series``.
    """
    shown = [p for p in points if p.get("in_legend", True)]
    names = [str(s["name"]) for s in series] + [str(p["name"]) for p in shown]
    colors = [s["color"] for s in series] + [p["color"] for p in shown]
    dashes = [DASHES[s.get("dash", "solid")] for s in series] + [DASHES["solid"]] * len(shown)
    if legend not in ("top", "below", "bottom-right"):
        raise ValueError(f"legend: {legend!r}")
    where = {"orient": "bottom", "direction": "vertical"} if legend == "below" else (
        {"orient": "bottom-right", "direction": "vertical", "fillColor": "rgba(128,128,128,0.08)", "padding": 6}
        if legend == "bottom-right" else {"orient": "top"})
    where.update(labelLimit=0, title=None, symbolType="stroke", symbolStrokeWidth=2.5, symbolOpacity=1)
    if legend == "below":
        height += 22 * len(names)  # Streamlit fits the whole chart, legend included, into the height
    color = {"field": "series", "type": "nominal", "scale": {"domain": names, "range": colors}, "legend": where}
    dash = {"field": "series", "type": "nominal", "scale": {"domain": names, "range": dashes}, "legend": where}
    if x_order is not None:
        x = {"field": "x", "type": "nominal", "sort": [str(v) for v in x_order], "title": xtitle,
             "axis": {"labelAngle": 0}}
    else:
        x = {"field": "x", "type": "quantitative", "title": xtitle, "axis": {"tickCount": 6},
             "scale": {"domain": list(x_domain), "nice": False} if x_domain else {"zero": False}}
    y = {"field": "y", "type": "quantitative", "title": ytitle, "axis": {"tickCount": 6},
         "scale": {"domain": list(y_domain), "nice": False} if y_domain else {"zero": False}}
    if y_percent:
        y["axis"]["labelExpr"] = "datum.label + ' %'"  # a constant expression: no run text
    xv = (lambda v: str(v)) if x_order is not None else _number
    # One layer per kind of mark over every series that has it (Vega pays per layer: a dataset, marks, scales).
    rows_of, any_hover = [], any(s.get("hover") is not None for s in series)
    for s in series:
        s = _simplified(s, x_domain, y_domain) if x_order is None else s
        n = len(s["x"])
        rows = [{"series": str(s["name"]), "x": xv(a), "y": b} for a, b in zip(s["x"], _numbers(s["y"]))]
        for field in _PER_POINT:
            if s.get(field) is not None:
                vals = list(s[field])
                if len(vals) != n:
                    raise ValueError(f"series {s['name']!r}: {field} has {len(vals)} values for {n} points")
                for r, v in zip(rows, vals):
                    r[field] = str(v) if field in ("labels", "hover") else _number(v)
        if any_hover:
            for r in rows:
                r.setdefault("hover", "–" if r["y"] is None else f"{r['y']:.3g}")
        rows_of.append((s, rows))

    def pooled(test) -> list[dict]:
        return [r for s, rows in rows_of if test(s) for r in rows]

    widths = {"field": "series", "type": "nominal", "legend": None,
              "scale": {"domain": names, "range": [float(s.get("width", 2)) for s in series] + [2.0] * len(shown)}}
    tip = [{"field": "series", "type": "nominal", "title": "line"},
           {"field": "x", "type": x["type"], **({} if x_order is not None else {"format": ".3~g"})},
           ({"field": "hover", "type": "nominal", "title": "value"} if any_hover else
            {"field": "y", "type": "quantitative", "format": ".3~g"})]
    layers = []
    if band := pooled(lambda s: s.get("band_lo") is not None):
        layers.append({"data": {"values": band}, "mark": {"type": "area", "opacity": 0.15},
                       "encoding": {"x": x, "y": {"field": "band_lo", "type": "quantitative", "scale": y["scale"],
                                                  "title": ytitle},
                                    "y2": {"field": "band_hi"}, "color": color}})
    for step in (False, True):
        if fill := pooled(lambda s: bool(s.get("fill")) and bool(s.get("step")) == step):
            layers.append({"data": {"values": fill},
                           "mark": {"type": "area", "opacity": 0.15, **({"interpolate": "step"} if step else {})},
                           "encoding": {"x": x, "y": y, "color": color}})
    for step in (False, True):
        for markers in (False, True):
            group = pooled(lambda s: bool(s.get("step")) == step and bool(s.get("markers")) == markers)
            if not group:
                continue
            mark = {"type": "line", "clip": True, **({"interpolate": "step"} if step else {}),
                    **({"point": {"filled": True, "size": 70}} if markers else {})}
            layers.append({"data": {"values": group}, "mark": mark,
                           "encoding": {"x": x, "y": y, "color": color, "strokeDash": dash, "strokeWidth": widths,
                                        "tooltip": tip}})
    if bars := pooled(lambda s: s.get("lo") is not None):
        layers.append({"data": {"values": bars}, "mark": {"type": "rule", "strokeWidth": 1.5},
                       "encoding": {"x": x, "y": {"field": "lo", "type": "quantitative"}, "y2": {"field": "hi"},
                                    "color": color}})
    if texts := pooled(lambda s: s.get("labels") is not None):
        layers.append({"data": {"values": texts},
                       "mark": {"type": "text", "dy": -12, "fontSize": 13, "color": ink()},
                       "encoding": {"x": x, "y": y, "text": {"field": "labels", "type": "nominal"}}})
    for b in bands:
        layers.append({"data": {"values": [{"x": _number(b["x0"]), "x2": _number(b["x1"])}]},
                       "mark": {"type": "rect", "opacity": 0.08, "color": b["color"]},
                       "encoding": {"x": {**x, "field": "x"}, "x2": {"field": "x2"}}})
        left = bool(b.get("left"))
        layers.append({"data": {"values": [{"x": _number(b["x0"] if left else b["x1"]), "text": str(b["label"])}]},
                       "mark": {"type": "text", "color": b["color"], "align": "left" if left else "right",
                                "baseline": "top", "dx": 4 if left else -4, "y": 4, "fontWeight": "bold"},
                       "encoding": {"x": {**x, "field": "x"}, "text": {"field": "text", "type": "nominal"}}})
    for r in rules:
        layers.append({"data": {"values": [{"x": _number(r["x"])}]},
                       "mark": {"type": "rule", "color": ink(), "strokeWidth": 2},
                       "encoding": {"x": {**x, "field": "x"}}})
        if r.get("label") is not None:
            layers.append({"data": {"values": [{"x": _number(r["x"]), "text": str(r["label"])}]},
                           "mark": {"type": "text", "color": ink(), "align": "left", "baseline": "bottom", "dx": 4,
                                    "y": 0, "dy": -2},
                           "encoding": {"x": {**x, "field": "x"}, "text": {"field": "text", "type": "nominal"}}})
    for p in points:
        row = {"series": str(p["name"]), "x": _number(p["x"]), "y": _number(p["y"]), "text": str(p.get("label") or "")}
        layers.append({"data": {"values": [row]},
                       "mark": {"type": "point", "shape": p.get("shape", "circle"), "filled": bool(p.get("filled")),
                                "size": 160, "strokeWidth": 2.5,
                                **({} if p.get("in_legend", True) else {"color": p["color"]})},
                       "encoding": {"x": x, "y": y, **({"color": color} if p.get("in_legend", True) else {}),
                                    "tooltip": [{"field": "series", "type": "nominal", "title": "point"},
                                                {"field": "x", "type": "quantitative", "format": ".3f"},
                                                {"field": "y", "type": "quantitative", "format": ".3f"}]}})
        if p.get("label"):
            layers.append({"data": {"values": [row]},
                           "mark": {"type": "text", "align": "left", "baseline": "top", "dx": 8, "dy": 6,
                                    "color": p["color"]},
                           "encoding": {"x": x, "y": y, "text": {"field": "text", "type": "nominal"}}})
    return {"title": {"text": str(title), "fontSize": 15}, "height": int(height), "layer": layers}


#: Largest distance of a point left out of a drawn line, as a fraction of the plot (core.polyline.simplify):
#: 0.1 % is under a pixel of these charts.
SIMPLIFY = 0.001
_PER_POINT = ("labels", "hover", "lo", "hi", "band_lo", "band_hi")


def _simplified(s: dict, x_domain, y_domain) -> dict:
    """``s`` with the points of its line that the plot cannot show left out (:data:`SIMPLIFY`); as given for a
    stepped line, one with per-point values, short or non-finite ones."""
    from core.polyline import simplify

    if s.get("step") or len(s["x"]) < 64 or any(s.get(f) is not None for f in _PER_POINT):
        return s
    x, y = np.asarray(s["x"], dtype=np.float64), np.asarray(s["y"], dtype=np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return s
    keep = simplify(x, y, SIMPLIFY, x_range=x_domain, y_range=y_domain)
    return {**s, "x": x[keep], "y": y[keep]}


def _number(v: float) -> float | None:
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
        rows.append({"layer": str(la), "score": _number(scores[la]), "threshold": _number(thresholds[la]),
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
    rows = [{"class": str(c), "probability": _number(p), "label": f"{100 * float(p):.1f} %"}
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
            rows.append({"layer": str(la), "when": when, "score": _number(sc[la]),
                         "threshold": _number(thresholds[la]), "verdict": word,
                         "label": f"{float(sc[la]):.2f}{word[0]}", "rejected": not ok})
    x = {"field": "layer", "type": "nominal", "sort": [str(la) for la in layers], "title": "layer (input → output)",
         "axis": {"labelAngle": 0}}
    off = {"field": "when", "type": "nominal", "sort": [BEFORE, AFTER]}
    y = {"field": "score", "type": "quantitative", "scale": {"domain": [0, 1.15]},
         "title": "kNN score of the predicted class"}
    tip = [{"field": "layer", "type": "nominal"}, {"field": "when", "type": "nominal"},
           {"field": "score", "type": "quantitative", "format": ".3f"},
           {"field": "threshold", "type": "quantitative", "format": ".3f"}, {"field": "verdict", "type": "nominal"}]
    ticks = [{"layer": str(la), "threshold": _number(thresholds[la])} for la in layers]
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
