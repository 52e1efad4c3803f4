"""A differentiable stand-in for the kNN score: the soft-kNN share of a class among nearby training features.

For a query ``q`` (the processed features of an image at one tapped layer) and a candidate set of training
features ``x_j`` (its ``k`` nearest, found with the run's index, plus the ``k_class`` nearest of the class aimed
at), the share of class ``c`` is ``sum_{j: y_j = c} exp(-d_j² / τ) / sum_j exp(-d_j² / τ)``, with ``τ`` a
multiple ``tau`` of the median candidate distance of that query (so one value fits every layer and processing).
Candidates are re-found by :meth:`KnnSurrogate.refresh`; between refreshes they are constants.

>>> sur = KnnSurrogate.from_detector(det, layers=["conv3"], mode="l2", k=200)     # doctest: +SKIP
>>> sur.refresh(feats, target); loss = sur.loss(feats, target)                    # (B,)  # doctest: +SKIP
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from core import index as knn_index
from core import processing

__all__ = ["KnnSurrogate", "torch_processing"]

log = logging.getLogger(__name__)

_FLOOR = 1e-4  # added to the share inside the log: a share of 0 keeps a finite loss


def torch_processing(params: Mapping[str, np.ndarray], x: torch.Tensor) -> torch.Tensor:
    """:func:`core.processing.apply` in torch (differentiable): (B, D) -> (B, d_out)."""
    mode = str(params["mode"])
    if mode == "none" or (mode == "pca_nw" and "mean" not in params):
        return x
    if mode == "l2":
        return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
    if mode in ("pca", "pca_nw"):
        mean = torch.as_tensor(np.asarray(params["mean"]), device=x.device)
        comp = torch.as_tensor(np.asarray(params["components"]), device=x.device)
        scale = torch.as_tensor(np.asarray(params["scale"]), device=x.device)
        return (x - mean) @ comp.T / scale
    raise ValueError(f"unknown processing mode {mode!r}; use one of {processing.MODES}")


class KnnSurrogate:
    """Soft-kNN shares at one or several layers, in the run's processed feature space.

    Parameters
    ----------
    layers : sequence of str
        Layers aimed at.
    params : mapping of layer -> processing params
        As :func:`core.processing.fit` returns them.
    indexes : mapping of layer -> faiss index
        Over the processed training features (the run's ``index/<layer>-<mode>.faiss``).
    train_features : mapping of layer -> ndarray (N, D)
        Raw training features (may be memory-mapped); rows are processed when gathered.
    train_labels : int ndarray (N,)
    k : int
        Nearest training features per query (k').
    k_class : int
        Nearest training features of the aimed class added to the candidates.
    tau : float
        Temperature, as a multiple of the median candidate squared distance of each query.
    """

    def __init__(self, layers: Sequence[str], params: Mapping[str, Mapping[str, np.ndarray]],
                 indexes: Mapping[str, Any], train_features: Mapping[str, np.ndarray], train_labels: np.ndarray, *,
                 k: int = 200, k_class: int = 32, tau: float = 0.5):
        if not layers:
            raise ValueError("aim at one layer at least")
        if k < 1 or k_class < 1 or not tau > 0:
            raise ValueError(f"need k >= 1, k_class >= 1 and tau > 0, got {k}, {k_class}, {tau}")
        self.layers = list(layers)
        self.params = {la: params[la] for la in self.layers}
        self.indexes = {la: indexes[la] for la in self.layers}
        self.train_features = {la: train_features[la] for la in self.layers}
        self.train_labels = np.asarray(train_labels, dtype=np.int64)
        self.k, self.k_class, self.tau = int(min(k, len(self.train_labels))), int(k_class), float(tau)
        self._class_rows: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        self._cand: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_detector(cls, det: Any, *, layers: Sequence[str] | None = None, mode: str | None = None,
                      **kw: Any) -> KnnSurrogate:
        """The surrogate of a loaded :class:`core.detector.Detector` (its processing ``mode``, default the run's)."""
        layers = list(layers or det.layers)
        mode = mode or det.defaults["mode"]
        parts = {la: det._get(la, mode) for la in layers}
        feats = {la: det.run.load_npy(f"features/{la}.npy", mmap=True, verify=False) for la in layers}
        return cls(layers, {la: p[0] for la, p in parts.items()}, {la: p[1] for la, p in parts.items()}, feats,
                   det.train_labels, **kw)

    def _rows(self, layer: str, ids: np.ndarray) -> np.ndarray:
        """Processed training features of ``ids`` (any shape S) -> float32 (*S, d)."""
        flat = ids.ravel()
        order = np.argsort(flat, kind="stable")
        rows = np.empty((len(flat), 0), np.float32)
        if len(flat):
            got = processing.apply(self.params[layer], np.asarray(self.train_features[layer][flat[order]]))
            rows = np.empty_like(got)
            rows[order] = got
        return rows.reshape(*ids.shape, -1)

    def _class_bank(self, layer: str, c: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, processed features) of the training items of class ``c``, cached."""
        key = (layer, int(c))
        if key not in self._class_rows:
            ids = np.flatnonzero(self.train_labels == c)
            self._class_rows[key] = (ids, self._rows(layer, ids))
        return self._class_rows[key]

    def refresh(self, feats: Mapping[str, torch.Tensor], target: np.ndarray | torch.Tensor) -> None:
        """Re-find the candidates of each query: its ``k`` nearest and the ``k_class`` nearest of ``target``.

        Parameters
        ----------
        feats : mapping of layer -> tensor (B, D)
            Raw (GAP-ed) features of the current images.
        target : int array (B,)
            Class aimed at per image.
        """
        target = np.asarray(torch.as_tensor(target).cpu(), dtype=np.int64)
        for la in self.layers:
            f = feats[la]
            q = processing.apply(self.params[la], f.detach().float().cpu().numpy())
            _, I = knn_index.search(self.indexes[la], q, self.k)
            I = np.where(I < 0, 0, I)
            banks = {int(c): self._class_bank(la, int(c)) for c in np.unique(target)}
            kc = min([self.k_class, *(len(b[0]) for b in banks.values())])
            extra = np.zeros((len(q), kc), np.int64)
            for c, (ids, bank) in banks.items():
                if kc == 0:
                    break
                m = target == c
                d2 = (q[m] ** 2).sum(1)[:, None] - 2 * q[m] @ bank.T + (bank ** 2).sum(1)[None]
                extra[m] = ids[np.argpartition(d2, kc - 1, axis=1)[:, :kc]]
            cand = np.concatenate([I.astype(np.int64), extra], axis=1) if extra.shape[1] else I.astype(np.int64)
            xs = torch.from_numpy(self._rows(la, cand)).to(f.device)
            same = torch.from_numpy(self.train_labels[cand] == target[:, None]).to(f.device)
            with torch.no_grad():
                d2 = (xs - torch.from_numpy(q).to(f.device)[:, None]).pow(2).sum(-1)
                tau = (self.tau * d2.median(dim=1).values).clamp(min=1e-12)
            self._cand[la] = (xs, same, tau)

    def share(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Soft-kNN share of the aimed class per image and layer, (B, n_layers), differentiable in ``feats``.

        Raises
        ------
        RuntimeError
            Before the first :meth:`refresh`.
        """
        if set(self._cand) != set(self.layers):
            raise RuntimeError("call refresh() before share()")
        out = []
        for la in self.layers:
            xs, same, tau = self._cand[la]
            q = torch_processing(self.params[la], feats[la].float())
            d2 = (xs - q[:, None]).pow(2).sum(-1)
            w = torch.softmax(-d2 / tau[:, None], dim=1)
            out.append((w * same).sum(1))
        return torch.stack(out, dim=1)

    def loss(self, feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``-log(share + 1e-4)`` averaged over the layers, (B,): lower when the aimed class dominates nearby."""
        return -torch.log(self.share(feats) + _FLOOR).mean(1)
