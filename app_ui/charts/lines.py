"""Line charts as Vega-Lite specs for :func:`app_ui.charts.bars.show`: ROC curves, densities, trusted shares, the
per-layer EER accuracy with error bars, curves with bands; marked points, vertical rules and shaded spans.

Streamlit runs Vega with its expression interpreter, so every data row costs the browser: a long line is drawn
through the fewest of its points that keep every other within :data:`SIMPLIFY` of the plot
(:func:`core.evaluation.polyline.simplify`), and the series drawn alike share one layer."""
from __future__ import annotations

import numpy as np
import streamlit as st

from app_ui.charts.bars import ink, number

#: Line styles by name: Vega-Lite ``strokeDash`` arrays.
DASHES = {"solid": [1, 0], "dash": [6, 4], "dot": [2, 3], "dashdot": [6, 3, 2, 3]}
#: Largest distance of a point left out of a drawn line, as a fraction of the plot (core.evaluation.polyline.simplify):
#: 0.1 % is under a pixel of these charts.
SIMPLIFY = 0.001
_PER_POINT = ("labels", "hover", "lo", "hi", "band_lo", "band_hi")


def _simplified(s: dict, x_domain, y_domain) -> dict:
    """``s`` with the points of its line that the plot cannot show left out (:data:`SIMPLIFY`); as given for a
    stepped line, one with per-point values, short or non-finite ones."""
    if s.get("step") or len(s["x"]) < 64 or any(s.get(f) is not None for f in _PER_POINT):
        return s
    x, y = np.asarray(s["x"], dtype=np.float64), np.asarray(s["y"], dtype=np.float64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        return s
    keep = _kept(x, y, None if x_domain is None else tuple(x_domain), None if y_domain is None else tuple(y_domain))
    return {**s, "x": x[keep], "y": y[keep]}


@st.cache_data(show_spinner=False, max_entries=256)
def _kept(x: np.ndarray, y: np.ndarray, x_domain: tuple | None, y_domain: tuple | None) -> np.ndarray:
    """:func:`core.evaluation.polyline.simplify` at :data:`SIMPLIFY`, once per curve and axes (a page redrawn as a slider moves
    draws the same curves: 50 ms of each Threshold script run)."""
    from core.evaluation.polyline import simplify

    return simplify(x, y, SIMPLIFY, x_range=x_domain, y_range=y_domain)


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
    fewest of its points that keep every other within :data:`SIMPLIFY` of it (:func:`core.evaluation.polyline.simplify`).

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
    rows_of, any_hover = _rows(series, x_order, x_domain, y_domain)
    layers = _mark_layers(rows_of, series, names, shown, x, y, color, dash, x_order, any_hover, ytitle)
    layers += _annotation_layers(x, y, color, bands, rules, points)
    return {"title": {"text": str(title), "fontSize": 15}, "height": int(height), "layer": layers}


def _rows(series: list[dict], x_order: list[str] | None, x_domain, y_domain) -> tuple[list[tuple[dict, list]], bool]:
    """Each series with its inline rows (simplified on a number axis), and whether any series has hover texts."""
    xv = (lambda v: str(v)) if x_order is not None else number
    rows_of, any_hover = [], any(s.get("hover") is not None for s in series)
    for s in series:
        s = _simplified(s, x_domain, y_domain) if x_order is None else s
        n = len(s["x"])
        rows = [{"series": str(s["name"]), "x": xv(a), "y": b} for a, b in zip(s["x"], map(number, s["y"]))]
        for field in _PER_POINT:
            if s.get(field) is not None:
                vals = list(s[field])
                if len(vals) != n:
                    raise ValueError(f"series {s['name']!r}: {field} has {len(vals)} values for {n} points")
                for r, v in zip(rows, vals):
                    r[field] = str(v) if field in ("labels", "hover") else number(v)
        if any_hover:
            for r in rows:
                r.setdefault("hover", "–" if r["y"] is None else f"{r['y']:.3g}")
        rows_of.append((s, rows))

    return rows_of, any_hover


def _mark_layers(rows_of: list[tuple[dict, list[dict]]], series: list[dict], names: list[str], shown: list[dict],
                 x: dict, y: dict, color: dict, dash: dict, x_order: list[str] | None, any_hover: bool,
                 ytitle: str) -> list[dict]:
    """The series' layers, one per kind of mark over every series that has it (Vega pays per layer: a dataset,
    marks, scales): bands, fills, lines (stepped or not, with or without markers), error bars, point labels."""
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
    return layers


def _annotation_layers(x: dict, y: dict, color: dict, bands: list[dict], rules: list[dict],
                       points: list[dict]) -> list[dict]:
    """Shaded vertical bands with their labels, vertical rules with theirs, and single marked points."""
    layers = []
    for b in bands:
        layers.append({"data": {"values": [{"x": number(b["x0"]), "x2": number(b["x1"])}]},
                       "mark": {"type": "rect", "opacity": 0.08, "color": b["color"]},
                       "encoding": {"x": {**x, "field": "x"}, "x2": {"field": "x2"}}})
        left = bool(b.get("left"))
        layers.append({"data": {"values": [{"x": number(b["x0"] if left else b["x1"]), "text": str(b["label"])}]},
                       "mark": {"type": "text", "color": b["color"], "align": "left" if left else "right",
                                "baseline": "top", "dx": 4 if left else -4, "y": 4, "fontWeight": "bold"},
                       "encoding": {"x": {**x, "field": "x"}, "text": {"field": "text", "type": "nominal"}}})
    for r in rules:
        layers.append({"data": {"values": [{"x": number(r["x"])}]},
                       "mark": {"type": "rule", "color": ink(), "strokeWidth": 2},
                       "encoding": {"x": {**x, "field": "x"}}})
        if r.get("label") is not None:
            layers.append({"data": {"values": [{"x": number(r["x"]), "text": str(r["label"])}]},
                           "mark": {"type": "text", "color": ink(), "align": "left", "baseline": "bottom", "dx": 4,
                                    "y": 0, "dy": -2},
                           "encoding": {"x": {**x, "field": "x"}, "text": {"field": "text", "type": "nominal"}}})
    for p in points:
        row = {"series": str(p["name"]), "x": number(p["x"]), "y": number(p["y"]), "text": str(p.get("label") or "")}
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
    return layers
