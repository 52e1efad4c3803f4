"""A differentiable stand-in for the kNN score: the soft-kNN share of a class among nearby training features.

For a query ``q`` (the processed features of an image at one tapped layer) and a candidate set of training
features ``x_j`` (its ``k`` nearest plus the ``k_class`` nearest of the class aimed at, found by an exact search
over the processed training features held in memory), the share of class ``c`` is
``sum_{j: y_j = c} exp(-d_j² / τ) / sum_j exp(-d_j² / τ)``, with ``τ`` a multiple ``tau`` of the median
candidate distance of that query (so one value fits every layer and processing). Candidates are re-found by
:meth:`KnnSurrogate.refresh`; between refreshes they are constants. See docs/design.md#adaptive-attacks.

>>> sur = KnnSurrogate.from_detector(det, layers=["conv3"], mode="l2", k=200)     # doctest: +SKIP
>>> sur.refresh(feats, target); loss = sur.loss(feats)                            # (B,)  # doctest: +SKIP
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from core.knn import processing

__all__ = ["KnnSurrogate", "torch_processing"]

log = logging.getLogger(__name__)

_FLOOR = 1e-4  # added to the share inside the log: a share of 0 keeps a finite loss


def torch_processing(params: Mapping[str, np.ndarray], x: torch.Tensor) -> torch.Tensor:
    """:func:`core.knn.processing.apply` in torch (differentiable): (B, D) -> (B, d_out)."""
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
        As :func:`core.knn.processing.fit` returns them.
    train_features : mapping of layer -> ndarray (N, D)
        Raw training features (may be memory-mapped); processed and held in memory on first use.
    train_labels : int ndarray (N,)
    k : int
        Nearest training features per query (k').
    k_class : int
        Nearest training features of the aimed class added to the candidates.
    tau : float
        Temperature, as a multiple of the median candidate squared distance of each query.
    """

    def __init__(self, layers: Sequence[str], params: Mapping[str, Mapping[str, np.ndarray]],
                 train_features: Mapping[str, np.ndarray], train_labels: np.ndarray, *,
                 k: int = 200, k_class: int = 32, tau: float = 0.5):
        if not layers:
            raise ValueError("aim at one layer at least")
        if k < 1 or k_class < 1 or not tau > 0:
            raise ValueError(f"need k >= 1, k_class >= 1 and tau > 0, got {k}, {k_class}, {tau}")
        self.layers = list(layers)
        self.params = {la: params[la] for la in self.layers}
        self.train_features = {la: train_features[la] for la in self.layers}
        self.train_labels = np.asarray(train_labels, dtype=np.int64)
        self.k, self.k_class, self.tau = int(min(k, len(self.train_labels))), int(k_class), float(tau)
        self._bank: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._cand: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_detector(cls, det: Any, *, layers: Sequence[str] | None = None, mode: str | None = None,
                      **kw: Any) -> KnnSurrogate:
        """The surrogate of a loaded :class:`core.detector.Detector` (its processing ``mode``, default the run's)."""
        layers = list(layers or det.layers)
        mode = mode or det.defaults["mode"]
        params = {la: det.processing_and_index(la, mode)[0] for la in layers}
        # Checked as the detector checks its own files (a signed run's features were read unchecked).
        feats = {la: det.run.load_npy(f"features/{la}.npy", mmap=True, verify=det._verify) for la in layers}
        return cls(layers, params, feats, det.train_labels, **kw)

    def _bank_of(self, layer: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Processed training features of ``layer`` sorted by class (N, d), their squared norms (N,) and labels
        (N,), built once."""
        if layer not in self._bank:
            order = np.argsort(self.train_labels, kind="stable")
            x = processing.apply(self.params[layer], np.asarray(self.train_features[layer], dtype=np.float32)[order])
            xb = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            self._bank[layer] = (xb, xb.pow(2).sum(1), torch.from_numpy(self.train_labels[order]))
        return tuple(t.to(device) for t in self._bank[layer])  # type: ignore[return-value]

    @torch.no_grad()
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
        bounds = np.searchsorted(self.train_labels[np.argsort(self.train_labels, kind="stable")],
                                 np.arange(int(target.max(initial=0)) + 2))
        kc = min([self.k_class, *(int(bounds[c + 1] - bounds[c]) for c in np.unique(target))])
        for la in self.layers:
            f = feats[la].detach().float()
            xb, n2, labels = self._bank_of(la, f.device)
            q = torch_processing(self.params[la], f)
            d2 = (n2[None] - 2 * q @ xb.T + q.pow(2).sum(1, keepdim=True)).clamp(min=0)  # (B, N)
            near = d2.topk(self.k, dim=1, largest=False).indices
            if kc > 0:
                own = torch.empty((len(q), kc), dtype=torch.int64, device=f.device)
                for c in np.unique(target):
                    m = torch.from_numpy(target == c).to(f.device)
                    lo, hi = int(bounds[c]), int(bounds[c + 1])
                    own[m] = d2[m, lo:hi].topk(kc, dim=1, largest=False).indices + lo
                near = torch.cat([near, own], dim=1)
            tt = torch.from_numpy(target).to(f.device)
            xs, same = xb[near], labels[near] == tt[:, None]
            tau = (self.tau * d2.gather(1, near).median(dim=1).values).clamp(min=1e-12)
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
