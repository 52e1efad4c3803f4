"""Feature processing before the kNN search: none, L2 normalisation, PCA + whitening, or the authors' PCA.

Parameters are fitted on the training features only and stored as plain arrays (no pickle):

>>> params = fit(xb, "pca", dim=256)      # xb: float32 (N, D) training features   # doctest: +SKIP
>>> xq_p = apply(params, xq)              # (nq, d_out) float32, C-contiguous        # doctest: +SKIP
"""
from __future__ import annotations

import logging

import numpy as np

__all__ = ["MODES", "fit", "apply", "out_dim", "describe"]

log = logging.getLogger(__name__)

#: Processing modes, as named in configs and artefacts: ``pca`` = PCA + whitening; ``pca_nw`` = the authors'
#: index: nothing when the layer has at most ``dim`` dimensions, else PCA to ``dim`` without whitening.
MODES = ("none", "l2", "pca", "pca_nw")
_EPS = np.float32(1e-12)


def fit(xb: np.ndarray, mode: str, *, dim: int = 256, min_var_ratio: float = 1e-5, max_fit: int = 200_000,
        seed: int = 0) -> dict[str, np.ndarray]:
    """Fit the processing ``mode`` on training features.

    Parameters
    ----------
    xb : float32 ndarray (N, D)
        Training features of one layer.
    mode : {"none", "l2", "pca", "pca_nw"}
    dim : int, keyword-only
        PCA output dimension (capped at D and at the number of non-degenerate components).
    min_var_ratio : float
        PCA components whose variance is under ``min_var_ratio`` × the largest are dropped before whitening
        (dead ReLU units give near-zero eigenvalues that whitening would blow up).
    max_fit : int
        At most this many rows (a seeded random subset) are used to fit PCA.

    Returns
    -------
    params : dict of ndarrays
        ``mode`` (0-d str) and, for PCA, ``mean`` (D,), ``components`` (d_out, D), ``scale`` (d_out,)
        where ``apply`` computes ``(x - mean) @ components.T / scale`` (``scale`` is all ones for ``pca_nw``).
        ``pca_nw`` on features with at most ``dim`` dimensions stores no PCA and ``apply`` returns ``x``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown processing mode {mode!r}; use one of {MODES}")
    xb = np.asarray(xb, dtype=np.float32)
    if xb.ndim != 2 or len(xb) == 0:
        raise ValueError(f"expected features (N, D) with N > 0, got shape {xb.shape}")
    params: dict[str, np.ndarray] = {"mode": np.array(mode)}
    if mode not in ("pca", "pca_nw") or (mode == "pca_nw" and xb.shape[1] <= dim):
        return params
    from sklearn.decomposition import PCA

    if len(xb) > max_fit:
        xb = xb[np.sort(np.random.default_rng(seed).choice(len(xb), max_fit, replace=False))]
    n_comp = min(dim, xb.shape[1], len(xb))
    pca = PCA(n_components=n_comp, svd_solver="full", random_state=seed).fit(xb.astype(np.float64))
    var = pca.explained_variance_
    keep = var > min_var_ratio * var.max() if mode == "pca" else np.ones(len(var), bool)
    if not keep.all():
        log.info("PCA: dropped %d near-zero-variance components of %d", int((~keep).sum()), n_comp)
    params.update(mean=pca.mean_.astype(np.float32), components=pca.components_[keep].astype(np.float32),
                  scale=(np.sqrt(var[keep]) if mode == "pca" else np.ones(int(keep.sum()))).astype(np.float32))
    return params


def apply(params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Apply fitted processing to features ``x`` (n, D) -> float32 C-contiguous (n, d_out)."""
    mode = str(params["mode"])
    x = np.asarray(x, dtype=np.float32)
    if mode == "none" or (mode == "pca_nw" and "mean" not in params):
        return np.ascontiguousarray(x)
    if mode == "l2":
        return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS))
    if mode in ("pca", "pca_nw"):
        if x.shape[1] != params["mean"].shape[0]:
            raise ValueError(f"features have {x.shape[1]} dims, PCA was fitted on {params['mean'].shape[0]}")
        return np.ascontiguousarray(((x - params["mean"]) @ params["components"].T) / params["scale"])
    raise ValueError(f"unknown processing mode {mode!r} in params; use one of {MODES}")


def out_dim(params: dict[str, np.ndarray], d_in: int) -> int:
    """Output dimension of ``apply`` for ``d_in``-dimensional features."""
    return int(params["components"].shape[0]) if "components" in params else d_in


def describe(params: dict[str, np.ndarray], d_in: int) -> str:
    """What the fitted processing does to ``d_in``-dimensional features, in words.

    Examples
    --------
    >>> describe({"mode": np.array("none")}, 64)
    'none (raw features)'
    """
    mode = str(params["mode"])
    if mode == "l2":
        return "L2-normalised"
    if "components" not in params:
        return "none (raw features)" if mode != "pca_nw" else f"none ({d_in} dims, no PCA at or below that)"
    d_out = out_dim(params, d_in)
    if mode == "pca_nw":
        return f"PCA-{d_out} (no whitening)"
    return "whitening (full rank)" if d_out == d_in else f"PCA-{d_out} + whitening"
