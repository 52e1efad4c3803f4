"""Fewer points for a drawn curve: the Ramer-Douglas-Peucker simplification of a polyline, on coordinates scaled
to the plot's ranges, so that every point left out lies within a set fraction of the plot of the line drawn.

A chart in the browser pays per point (Streamlit's Vega runs each row through an expression interpreter: the
Layers page's ROC overlay sent 6,490 rows); a curve a few hundred pixels wide needs far fewer.
"""
from __future__ import annotations

import numpy as np

__all__ = ["simplify", "deviation"]


def _scaled(x: np.ndarray, y: np.ndarray, x_range: tuple[float, float] | None,
            y_range: tuple[float, float] | None) -> np.ndarray:
    def span(v: np.ndarray, r: tuple[float, float] | None) -> tuple[float, float]:
        lo, hi = (float(np.min(v)), float(np.max(v))) if r is None else (float(r[0]), float(r[1]))
        return lo, (hi - lo) if hi > lo else 1.0

    (x0, dx), (y0, dy) = span(x, x_range), span(y, y_range)
    return np.column_stack([(x - x0) / dx, (y - y0) / dy])


def _distances(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of each row of ``p`` (m, 2) to the segment from ``a`` to ``b``."""
    ab = b - a
    n = float(ab @ ab)
    t = np.zeros(len(p)) if n == 0 else np.clip((p - a) @ ab / n, 0.0, 1.0)
    return np.linalg.norm(p - (a + t[:, None] * ab), axis=1)


def simplify(x, y, tolerance: float = 0.002, *, x_range: tuple[float, float] | None = None,
             y_range: tuple[float, float] | None = None) -> np.ndarray:
    """Indices of the points to keep so that the polyline through them stays within ``tolerance`` of every point.

    Parameters
    ----------
    x, y : array_like (n,)
        The curve's points in drawing order; finite.
    tolerance : float
        The largest distance of a left-out point from the simplified line, as a fraction of the plot: the
        coordinates are scaled by ``x_range`` and ``y_range`` (default: the data's own ranges) to [0, 1].
    x_range, y_range : (float, float), optional
        The axes' ranges.

    Returns
    -------
    int64 ndarray (m,)
        Increasing indices into ``x``; the first and last points always kept (m = n when n < 3).
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-d of one length, not {x.shape} and {y.shape}")
    n = len(x)
    if n < 3:
        return np.arange(n, dtype=np.int64)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("simplify needs finite points")
    p = _scaled(x, y, x_range, y_range)
    keep = np.zeros(n, dtype=bool)
    keep[[0, n - 1]] = True
    stack = [(0, n - 1)]
    while stack:
        i, j = stack.pop()
        if j - i < 2:
            continue
        d = _distances(p[i + 1:j], p[i], p[j])
        k = int(np.argmax(d))
        if d[k] > tolerance:
            m = i + 1 + k
            keep[m] = True
            stack += [(i, m), (m, j)]
    return np.flatnonzero(keep).astype(np.int64)


def deviation(x, y, kept: np.ndarray, *, x_range: tuple[float, float] | None = None,
              y_range: tuple[float, float] | None = None) -> float:
    """The largest distance (fraction of the plot, scaled as :func:`simplify` does) of any point of the curve from
    the polyline through the points ``kept`` (increasing indices including both ends)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    p = _scaled(x, y, x_range, y_range)
    worst = 0.0
    for i, j in zip(kept[:-1], kept[1:]):
        if j - i > 1:
            worst = max(worst, float(_distances(p[i + 1:j], p[i], p[j]).max()))
    return worst
