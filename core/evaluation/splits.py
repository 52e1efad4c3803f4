"""Validation / test split of a run's evaluation sets by source image.

Every item of an evaluation set carries ``source``, the index of the test image it derives from. Splitting the
source ids (not the items) puts an authentic image, its noisy copy and each of its adversarials on the same side,
so nothing chosen on validation has seen a test image in any form.

>>> split = split_sources({"authentic": src_a, "fgsm": src_f}, validation_share=0.5, seed=0)  # doctest: +SKIP
>>> test_sets = apply_split(sets, split, "test")                                            # doctest: +SKIP
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["SourceSplit", "split_sources", "apply_split", "SIDES"]

log = logging.getLogger(__name__)

SIDES = ("validation", "test")


@dataclass(frozen=True)
class SourceSplit:
    """A split of source image ids.

    Attributes
    ----------
    validation, test : int64 ndarray (n_val,), (n_test,)
        Sorted, disjoint source ids.
    seed : int
    validation_share : float
        The share that was asked for.
    """

    validation: np.ndarray
    test: np.ndarray
    seed: int
    validation_share: float

    def ids(self, side: str) -> np.ndarray:
        """Sorted source ids of ``side`` ("validation" or "test")."""
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        return self.validation if side == "validation" else self.test

    def mask(self, source: ArrayLike, side: str) -> np.ndarray:
        """Boolean mask (n,) of the items of ``source`` (n,) whose source lies on ``side``.

        Raises
        ------
        ValueError
            If a source id is on neither side (the split was made from other sets).
        """
        source = np.asarray(source, dtype=np.int64).ravel()
        in_val = np.isin(source, self.validation)
        in_test = np.isin(source, self.test)
        if not (in_val | in_test).all():
            missing = np.unique(source[~(in_val | in_test)])[:5]
            raise ValueError(f"source ids {missing.tolist()} are not in the split; split the same sets")
        return in_val if side == "validation" else in_test

    def to_dict(self) -> dict:
        """``{"validation": n_val_sources, "test": n_test_sources, "seed": seed}`` (the report's ``split``)."""
        return {"validation": int(len(self.validation)), "test": int(len(self.test)), "seed": int(self.seed)}


def split_sources(sources: Mapping[str, ArrayLike] | ArrayLike, validation_share: float = 0.5,
                  seed: int = 0) -> SourceSplit:
    """Split source image ids into validation and test.

    Parameters
    ----------
    sources : mapping of set name -> int ndarray (n_set,), or int ndarray (n,)
        Source ids of every item. Given per set, sources are stratified by the sets they appear in, so that
        each set (and the whole) is split close to ``validation_share`` (within one source per stratum). The
        split does not depend on the mapping's order.
    validation_share : float
        Share of source ids on the validation side, in [0, 1].
    seed : int

    Returns
    -------
    SourceSplit
    """
    if not 0.0 <= validation_share <= 1.0:
        raise ValueError(f"validation_share must be in [0, 1], got {validation_share}")
    # Sets in name order: the split is a function of the sets, not of the mapping's order (a manifest read back
    # sorts its keys, RunData.set_names follows the config; both must give the same split).
    per_set = {k: np.asarray(sources[k], dtype=np.int64).ravel() for k in sorted(sources)} \
        if isinstance(sources, Mapping) else {"": np.asarray(sources, dtype=np.int64).ravel()}
    ids = np.unique(np.concatenate(list(per_set.values()))) if per_set else np.empty(0, np.int64)
    # stratum of a source: the sets it appears in
    member = np.stack([np.isin(ids, arr) for arr in per_set.values()], axis=1) if per_set else \
        np.zeros((len(ids), 1), bool)
    stratum = np.unique(member, axis=0, return_inverse=True)[1].ravel()
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(ids)), stratum))
    # systematic sampling along strata: exact overall share, within one source per stratum
    pos = np.arange(len(ids) + 1) * validation_share + rng.random()
    take = np.floor(pos[1:]) > np.floor(pos[:-1])
    val = np.zeros(len(ids), dtype=bool)
    val[order[take]] = True
    log.debug("split %d sources: %d validation, %d test (seed %d)", len(ids), val.sum(), (~val).sum(), seed)
    return SourceSplit(ids[val], ids[~val], int(seed), float(validation_share))


def apply_split(sets: Mapping[str, Mapping[str, np.ndarray]], split: SourceSplit, side: str, *,
                key: str = "source") -> dict[str, dict[str, np.ndarray]]:
    """Keep, in every set, the items whose source lies on ``side``.

    Parameters
    ----------
    sets : mapping of set name -> mapping of array name -> ndarray (n_set, ...)
        Per-item arrays of each set, all of length ``n_set`` along axis 0, including ``key``.
    split : SourceSplit
    side : {"validation", "test"}
    key : str
        Name of the source id array.

    Returns
    -------
    dict
        Same structure, each array indexed by the side's mask; 0-d arrays (e.g. ``attempted``) are kept as they are.
    """
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, arrays in sets.items():
        m = split.mask(arrays[key], side)
        out[name] = {a: (v if np.ndim(v) == 0 else np.asarray(v)[m]) for a, v in arrays.items()}
    return out
