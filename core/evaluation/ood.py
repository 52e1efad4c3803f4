"""Out of distribution: is an image unlike anything in training?

An image's squared distance to its k-th nearest training image at a layer is compared with the same distance
for held-out authentic images (the validation side of the run's split, from the stored neighbours). Beyond a
set percentile of that reference the image is flagged: the kNN score alone does not catch such images, because
far neighbours can still agree on a class. :func:`references` checks every layer, each at the percentile
``100 - (100 - p) / n_layers`` (Bonferroni), so that about ``100 - p`` % of held-out images are flagged in all.

>>> refs = references(data, ["conv3", "fc1"], "l2", 500)         # doctest: +SKIP
>>> assess(refs, {"conv3": 0.4, "fc1": 0.1}).flagged             # doctest: +SKIP
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from core.evaluation.rundata import RunData
from core.evaluation.setting_figures import EvaluationConfig
from core.evaluation.splits import split_sources

__all__ = ["DEFAULT_PERCENTILE", "REFERENCE_SET", "OODReference", "Assessment", "kth_distance", "reference",
           "references_to_json", "references_from_json",
           "references", "assess"]

log = logging.getLogger(__name__)

#: Images beyond this percentile of the held-out authentic distances are flagged.
DEFAULT_PERCENTILE = 99.0
#: The set whose validation side is the reference.
REFERENCE_SET = "authentic"


def kth_distance(D: ArrayLike, k: int) -> np.ndarray:
    """Squared distance (n,) to the k-th neighbour from neighbour distances ``D`` (n, K), sorted ascending.

    Raises
    ------
    ValueError
        If ``k`` is not in 1..K.
    """
    D = np.atleast_2d(np.asarray(D, dtype=np.float64))
    if not 1 <= int(k) <= D.shape[1]:
        raise ValueError(f"k = {k} is not in 1..{D.shape[1]}")
    return D[:, int(k) - 1]


@dataclass(frozen=True)
class OODReference:
    """The reference distribution of k-th neighbour distances.

    Attributes
    ----------
    layer, mode : str
    k : int
    distances : ndarray (n,)
        Sorted k-th neighbour squared distances of the held-out authentic images.
    limit_percentile : float
    limit : float
        The distance at ``limit_percentile``; an image beyond it is flagged.
    """

    layer: str
    mode: str
    k: int
    distances: np.ndarray
    limit_percentile: float
    limit: float

    def percentile(self, d2: ArrayLike) -> np.ndarray:
        """Percentile (n,) of each distance (n,) among the reference: the share (0-100) of it below."""
        d2 = np.atleast_1d(np.asarray(d2, dtype=np.float64))
        if not len(self.distances):
            return np.full(len(d2), np.nan)
        return 100.0 * np.searchsorted(self.distances, d2, side="left") / len(self.distances)

    def flags(self, d2: ArrayLike) -> np.ndarray:
        """Bool (n,): distances (n,) beyond the limit (never with an empty reference)."""
        return np.atleast_1d(np.asarray(d2, dtype=np.float64)) > self.limit


def reference(data: RunData, layer: str, mode: str, k: int, *, limit_percentile: float = DEFAULT_PERCENTILE,
              side: str = "validation") -> OODReference:
    """The k-th neighbour distances of the held-out authentic images at ``layer`` and ``mode``.

    Parameters
    ----------
    data : RunData
    layer, mode : str
    k : int
        1..the run's stored neighbours per image.
    limit_percentile : float
        In (0, 100].
    side : {"validation", "test"}
        Which side of the run's split (:class:`core.evaluation.setting_figures.EvaluationConfig`) holds the reference images.

    Returns
    -------
    OODReference
        ``limit`` is +inf with no reference image.

    Raises
    ------
    ValueError
        On a percentile out of range, a ``k`` beyond the stored neighbours or a run without source ids.
    """
    if not 0.0 < limit_percentile <= 100.0:
        raise ValueError(f"limit_percentile must be in (0, 100], got {limit_percentile}")
    c = EvaluationConfig.from_config(data.config)
    sets = data.set_names
    if any("source" not in data.evalset(s) for s in sets):
        raise ValueError("the run's sets have no source ids; rebuild the run")
    split = split_sources({s: data.evalset(s)["source"] for s in sets}, c.validation_share, c.seed)
    if REFERENCE_SET not in sets:
        d = np.zeros(0)
    else:
        m = split.mask(data.evalset(REFERENCE_SET)["source"], side)
        d = np.sort(kth_distance(data.neighbours(REFERENCE_SET, layer, mode).D, k)[m])
    limit = float(np.quantile(d, limit_percentile / 100.0, method="inverted_cdf")) if len(d) else float("inf")
    log.debug("OOD reference %s/%s/k=%d: %d images, limit %.4g", layer, mode, k, len(d), limit)
    return OODReference(layer, mode, int(k), d, float(limit_percentile), limit)


def references(data: RunData, layers: list[str], mode: str, k: int, *,
               percentile: float = DEFAULT_PERCENTILE, side: str = "validation") -> dict[str, OODReference]:
    """:func:`reference` of each layer at the Bonferroni-corrected percentile ``100 - (100 - percentile) / n``."""
    if not layers:
        raise ValueError("no layer to check")
    per = 100.0 - (100.0 - float(percentile)) / len(layers)
    return {la: reference(data, la, mode, k, limit_percentile=per, side=side) for la in layers}


def references_to_json(refs: dict[str, OODReference]) -> dict:
    """``refs`` (layer -> :class:`OODReference`) as plain JSON values (for :mod:`core._util.disk_cache`)."""
    return {la: {"layer": r.layer, "mode": r.mode, "k": int(r.k), "dtype": str(r.distances.dtype),
                 "distances": [float(x) for x in r.distances], "limit_percentile": float(r.limit_percentile),
                 "limit": float(r.limit)} for la, r in refs.items()}


def references_from_json(value: Any, layers: Sequence[str], mode: str, k: int) -> dict[str, OODReference] | None:
    """:func:`references_to_json`'s value back as references of exactly ``layers`` at ``mode`` and ``k``; None when
    it is not that (a cache entry of another shape is a miss, never an error)."""
    if not isinstance(value, dict) or sorted(value) != sorted(layers):
        return None
    out = {}
    for la in layers:
        v = value[la]
        try:
            if (not isinstance(v, dict) or v["layer"] != la or v["mode"] != mode or v["k"] != int(k)
                    or v["dtype"] not in ("float32", "float64")
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v["distances"])):
                return None
            d = np.asarray(v["distances"], dtype=v["dtype"])
            out[la] = OODReference(la, mode, int(k), d, float(v["limit_percentile"]), float(v["limit"]))
        except (KeyError, TypeError, ValueError):
            return None
    return out


@dataclass(frozen=True)
class Assessment:
    """An image against the references of every layer.

    Attributes
    ----------
    flagged : bool
        Beyond the limit at some layer.
    layer : str
        The layer where the image lies furthest out (highest percentile; ties: furthest beyond its limit).
    distance, percentile : float
        At ``layer``.
    flagged_layers : list of str
    """

    flagged: bool
    layer: str
    distance: float
    percentile: float
    flagged_layers: list[str]


def assess(refs: dict[str, OODReference], d2: dict[str, float]) -> Assessment:
    """Compare one image's k-th neighbour squared distances (per layer) with the references of :func:`references`.

    Raises
    ------
    KeyError
        If a layer of ``refs`` has no distance in ``d2``.
    """
    flagged = [la for la, r in refs.items() if r.flags(d2[la])[0]]
    pct = {la: float(r.percentile(d2[la])[0]) for la, r in refs.items()}
    ratio = {la: float(d2[la]) / r.limit if np.isfinite(r.limit) and r.limit > 0 else 0.0 for la, r in refs.items()}
    worst = max(refs, key=lambda la: (pct[la], ratio[la]))
    return Assessment(bool(flagged), worst, float(d2[worst]), pct[worst], flagged)
