"""Adaptive attacks: PGD that fools the CNN and the kNN detector at once (L∞ and L2).

Per image, with ``t`` the target class and ``Z`` the logits, each step descends::

    max(max_{i≠t} Z_i − Z_t, −kappa)  +  lam · mean over the aimed layers of −log(soft-kNN share of t)

(:class:`core.attacks.surrogate.KnnSurrogate`, candidates re-found every ``refresh`` steps), with a step size
that decays from ``step · eps / steps`` to 0 along a half cosine. ``lam = 0`` is the
oblivious attack with the same optimiser. Among the iterates of every restart that reach ``t``, the one with
the lowest objective is kept; where none does, the last iterate. See docs/design.md#adaptive-attacks.

>>> sur = KnnSurrogate.from_detector(det, layers=["conv3"], mode="l2")                    # doctest: +SKIP
>>> res = AdaptiveLinf(sur, eps=0.1, lam=1.0)(det.model, x, target=t)                     # doctest: +SKIP
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from .base import Attack, Param
from .surrogate import KnnSurrogate
from .utils import BATCH, model_device, quantise_within

__all__ = ["AdaptiveLinf", "AdaptiveL2"]

log = logging.getLogger(__name__)


def _spec(eps: Param) -> dict[str, Param]:
    return {
        "eps": eps,
        "steps": Param(40, "int", 1, 2000, "gradient steps per restart"),
        "step": Param(2.5, "float", 0.01, 100.0, "first step size as a multiple of eps / steps (cosine decay)"),
        "restarts": Param(1, "int", 1, 20, "random starts in the ball; the best iterate is kept"),
        "lam": Param(1.0, "float", 0.0, 1000.0, "weight of the detector term (0 = oblivious)"),
        "kappa": Param(5.0, "float", 0.0, 100.0, "logit margin past which the CNN term stops pulling"),
        "refresh": Param(10, "int", 1, 2000, "steps between re-finding the surrogate's neighbours"),
    }


class _Adaptive(Attack):
    """Shared PGD loop; subclasses give the norm's start, step and projection."""

    targeted = True
    modes = (True,)
    random = True

    def __init__(self, surrogate: KnnSurrogate | None = None, **params: Any) -> None:
        super().__init__(**params)
        if surrogate is None and self.params["lam"] > 0:
            raise ValueError(f"{self.name}: lam > 0 needs a KnnSurrogate (KnnSurrogate.from_detector(det))")
        self.surrogate = surrogate
        #: Mean objective per restart and step of the last call, float64 (restarts, steps).
        self.trace = np.zeros((0, 0))

    def __repr__(self) -> str:
        layers = self.surrogate.layers if self.surrogate is not None else []
        return f"{super().__repr__()[:-1]}, layers={layers!r})"

    def _start(self, shape: torch.Size, eps: float) -> torch.Tensor:
        raise NotImplementedError

    def _step(self, delta: torch.Tensor, grad: torch.Tensor, size: float, eps: float) -> torch.Tensor:
        raise NotImplementedError

    def run(self, model, x, target, *, progress=False):
        from core.features import FeatureExtractor

        device = model_device(model)
        layers = self.surrogate.layers if self.surrogate is not None and self.params["lam"] > 0 else []
        ext = FeatureExtractor(model, layers) if layers else None
        out = x.copy()
        traces = []
        for s in range(0, len(x), BATCH):
            out[s:s + BATCH], tr = self._batch(model, ext, x[s:s + BATCH], target[s:s + BATCH], device)
            traces.append(tr * min(BATCH, len(x) - s))
        self.trace = np.sum(traces, axis=0) / len(x)
        return out

    def _batch(self, model, ext, x: np.ndarray, target: np.ndarray,
               device: torch.device) -> tuple[np.ndarray, np.ndarray]:
        """One batch (B, C, H, W) -> adversarial (B, C, H, W) and its trace (restarts, steps)."""
        p = self.params
        eps, steps, lam = p["eps"], p["steps"], p["lam"]
        size = p["step"] * eps / steps
        xt = torch.from_numpy(x).to(device)
        tt = torch.from_numpy(target).to(device)
        n = len(x)
        best = xt.clone()
        best_obj = torch.full((n,), math.inf, device=device)
        reached = torch.zeros(n, dtype=torch.bool, device=device)
        trace = np.zeros((p["restarts"], steps))

        for r in range(p["restarts"]):
            delta = (torch.clamp(xt + self._start(xt.shape, eps), 0, 1) - xt).detach()
            for i in range(steps):
                delta.requires_grad_(True)
                with torch.enable_grad():
                    adv = xt + delta
                    if ext is None:
                        z, feats = model(adv), None
                    else:
                        z, feats = ext(adv)
                        if i % p["refresh"] == 0:
                            self.surrogate.refresh(feats, target)
                    z_t = z.gather(1, tt[:, None])[:, 0]
                    other = z.scatter(1, tt[:, None], -math.inf).amax(1)
                    obj = (other - z_t).clamp(min=-p["kappa"])
                    if feats is not None:
                        obj = obj + lam * self.surrogate.loss(feats)
                    grad, = torch.autograd.grad(obj.sum(), delta)
                with torch.no_grad():
                    trace[r, i] = float(obj.mean())
                    hit = z.argmax(1) == tt
                    better = torch.where(reached, hit & (obj < best_obj), hit | ~reached)
                    best = torch.where(better[:, None, None, None], adv.detach(), best)
                    best_obj = torch.where(better, obj.detach(), best_obj)
                    reached |= hit
                    delta = self._step(delta.detach(), grad, size * 0.5 * (1 + math.cos(math.pi * i / steps)), eps)
                    delta = torch.clamp(xt + delta, 0, 1) - xt
        return best.cpu().numpy(), trace


class AdaptiveLinf(_Adaptive):
    """Adaptive PGD in the L∞ ball of radius ``eps``, signed steps; results on the uint8 grid inside the ball.

    Parameters
    ----------
    surrogate : KnnSurrogate, optional
        The detector's surrogate (required when ``lam > 0``).
    eps, steps, step, restarts, lam, kappa, refresh
        See :func:`core.attacks.param_spec`-style ``spec``.
    """

    name = "adaptive_linf"
    title = "Adaptive PGD (L∞), detector-aware"
    spec = _spec(Param(0.1, "float", 0.0, 1.0, "L∞ budget per pixel"))

    def _start(self, shape, eps):
        return (torch.rand(shape) * 2 - 1) * eps

    def _step(self, delta, grad, size, eps):
        return torch.clamp(delta - size * grad.sign(), -eps, eps)

    def snap(self, x: np.ndarray, x_adv: np.ndarray) -> np.ndarray:
        """Round to the uint8 grid without leaving the ball."""
        return quantise_within(x_adv, x, self.params["eps"])


class AdaptiveL2(_Adaptive):
    """Adaptive PGD in the L2 ball of radius ``eps``, normalised-gradient steps (not rounded: the base class
    scores the uint8 rounding, which may add about 0.03 to the norm at 28×28).

    Parameters
    ----------
    surrogate : KnnSurrogate, optional
        The detector's surrogate (required when ``lam > 0``).
    eps, steps, step, restarts, lam, kappa, refresh
        As :class:`AdaptiveLinf`, ``eps`` an L2 radius.
    """

    name = "adaptive_l2"
    title = "Adaptive PGD (L2), detector-aware"
    spec = _spec(Param(2.0, "float", 0.0, 100.0, "L2 budget of the whole perturbation"))

    def _start(self, shape, eps):
        d = torch.randn(shape)
        norm = d.flatten(1).norm(dim=1).clamp(min=1e-12)
        radius = eps * torch.rand(shape[0]) ** (1.0 / d[0].numel())
        return d * (radius / norm)[:, None, None, None]

    def _step(self, delta, grad, size, eps):
        g = grad.flatten(1).norm(dim=1).clamp(min=1e-12)
        delta = delta - size * grad / g[:, None, None, None]
        n = delta.flatten(1).norm(dim=1)
        return delta * torch.clamp(eps / n.clamp(min=1e-12), max=1.0)[:, None, None, None]
