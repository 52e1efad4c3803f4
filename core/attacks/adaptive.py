"""Adaptive attacks: PGD that fools the CNN and the kNN detector at once (L∞ and L2).

Per image, with ``t`` the target class and ``Z`` the logits, each step descends::

    max(max_{i≠t} Z_i − Z_t, −kappa)  +  lam · mean over the aimed layers of −log(soft-kNN share of t)

(:class:`core.attacks.surrogate.KnnSurrogate`, candidates re-found every ``refresh`` steps), with a step size
that decays from ``step · eps / steps`` to 0 along a half cosine. ``lam = 0`` is the
oblivious attack with the same optimiser. With a ``stop`` test (e.g. "fools the CNN and the detector trusts it"),
an image stops at the first checked iterate that passes; otherwise, among the iterates of every restart that
reach ``t``, the one with the lowest objective is kept; where none does, the last iterate. See docs/design.md#adaptive-attacks.

>>> sur = KnnSurrogate.from_detector(det, layers=["conv3"], mode="l2")                    # doctest: +SKIP
>>> res = AdaptiveLinf(sur, eps=0.1, lam=1.0)(det.model, x, target=t)                     # doctest: +SKIP
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from core.errors import AttackCancelled

from .base import Attack, Param
from .surrogate import KnnSurrogate
from .utils import model_device, quantise, quantise_within

__all__ = ["AdaptiveLinf", "AdaptiveL2", "Stop"]

log = logging.getLogger(__name__)

#: ``stop(x_adv (B, C, H, W) snapped, rows (B,)) -> bool (B,)``: whether each iterate is good enough to keep.
Stop = Callable[[np.ndarray, np.ndarray], np.ndarray]
CHUNK = 512  # images attacked together


def quantise_t(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """The uint8-grid version of float images (B, C, H, W) as a tensor on ``device``."""
    return torch.from_numpy(quantise(x)).to(device)


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
    """Shared PGD loop; subclasses give the norm's start, step and projection.

    Parameters
    ----------
    surrogate : KnnSurrogate, optional
        The detector's surrogate (required when ``lam > 0``).
    stop : callable, optional
        ``stop(x_adv, rows) -> bool (B,)`` on snapped iterates (B, C, H, W) of the images ``rows`` (indices into
        the attacked batch) that reach the target: an image it passes is kept and no longer attacked. Checked
        every ``refresh`` steps and after the last.
    random_start : bool, default True
        Start in a random point of the ball; False starts at the image.
    cancel : threading.Event, optional
        Checked before every step: once set, the attack raises :class:`core.errors.AttackCancelled` (a live attack
        past its deadline frees its thread instead of running on).
    **params
        See ``spec``.
    """

    targeted = True
    modes = (True,)
    random = True

    def __init__(self, surrogate: KnnSurrogate | None = None, *, stop: Stop | None = None, random_start: bool = True,
                 cancel: Any = None, **params: Any) -> None:
        super().__init__(**params)
        #: Start each restart at a random point of the ball (else at the image itself: with ``stop``, the
        #: first successful iterate's norm then bounds the image's minimal perturbation).
        self.random_start = bool(random_start)
        if surrogate is None and self.params["lam"] > 0:
            raise ValueError(f"{self.name}: lam > 0 needs a KnnSurrogate (KnnSurrogate.from_detector(det))")
        self.surrogate = surrogate
        self.stop = stop
        self.cancel = cancel
        #: Mean objective per restart and step of the last call, float64 (restarts, steps); a stopped image
        #: keeps the value it stopped at.
        self.trace = np.zeros((0, 0))
        #: Whether ``stop`` passed each image of the last call, bool (N,).
        self.stopped = np.zeros(0, dtype=bool)

    def __repr__(self) -> str:
        layers = self.surrogate.layers if self.surrogate is not None else []
        return f"{super().__repr__()[:-1]}, layers={layers!r})"

    def _start(self, shape: torch.Size, eps: float) -> torch.Tensor:
        raise NotImplementedError

    def _step(self, delta: torch.Tensor, grad: torch.Tensor, size: float, eps: float) -> torch.Tensor:
        raise NotImplementedError

    def run(self, model, x, target, *, progress=False):
        from core.models.features import FeatureExtractor

        device = model_device(model)
        layers = self.surrogate.layers if self.surrogate is not None and self.params["lam"] > 0 else []
        ext = FeatureExtractor(model, layers) if layers else None
        out = x.copy()
        self.stopped = np.zeros(len(x), dtype=bool)
        traces = []
        for s in range(0, len(x), CHUNK):
            e = min(s + CHUNK, len(x))
            out[s:e], tr, self.stopped[s:e] = self._batch(model, ext, x, target, np.arange(s, e), device)
            traces.append(tr * (e - s))
        self.trace = np.sum(traces, axis=0) / max(len(x), 1)
        return out

    def _batch(self, model, ext, x_all: np.ndarray, target_all: np.ndarray, rows: np.ndarray,
               device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Images ``rows`` of the batch -> adversarial (B, C, H, W), trace (restarts, steps), stopped (B,)."""
        p = self.params
        eps, steps, lam, every = p["eps"], p["steps"], p["lam"], p["refresh"]
        size = p["step"] * eps / steps
        x, target = x_all[rows], target_all[rows]
        xt = torch.from_numpy(x).to(device)
        tt = torch.from_numpy(target).to(device)
        n = len(x)
        best = xt.clone()
        best_obj = torch.full((n,), math.inf, device=device)
        last_obj = torch.zeros(n, dtype=torch.float64, device=device)
        reached = torch.zeros(n, dtype=torch.bool, device=device)
        done = torch.zeros(n, dtype=torch.bool, device=device)
        trace = np.zeros((p["restarts"], steps))

        for r in range(p["restarts"]):
            act = torch.nonzero(~done)[:, 0]
            if not len(act):
                trace[r:] = trace[r - 1, -1] if r else 0.0
                break
            delta = torch.zeros_like(xt)
            if self.random_start:
                delta[act] = (torch.clamp(xt[act] + self._start(xt[act].shape, eps), 0, 1) - xt[act]).detach()
            for i in range(steps + 1):
                if self.cancel is not None and self.cancel.is_set():
                    raise AttackCancelled(f"{self.name}: cancelled at step {i} of restart {r + 1}")
                if self.stop is not None and len(act) and (i == steps or (i > 0 and i % every == 0)):
                    act = self._check(xt, delta, tt, act, rows, model, best, done)
                if i == steps or not len(act):
                    trace[r, i:] = float(last_obj.mean())
                    break
                xa, ta, da = xt[act], tt[act], delta[act].requires_grad_(True)
                with torch.enable_grad():
                    adv = xa + da
                    if ext is None:
                        z, feats = model(adv), None
                    else:
                        z, feats = ext(adv)
                        if i % every == 0:
                            self.surrogate.refresh(feats, target[act.cpu().numpy()])
                    z_t = z.gather(1, ta[:, None])[:, 0]
                    other = z.scatter(1, ta[:, None], -math.inf).amax(1)
                    obj = (other - z_t).clamp(min=-p["kappa"])
                    if feats is not None:
                        obj = obj + lam * self.surrogate.loss(feats)
                    grad, = torch.autograd.grad(obj.sum(), da)
                with torch.no_grad():
                    last_obj[act] = obj.detach().double()
                    trace[r, i] = float(last_obj.mean())
                    hit = z.argmax(1) == ta
                    ra, bo = reached[act], best_obj[act]
                    better = torch.where(ra, hit & (obj < bo), hit | ~ra)
                    best[act] = torch.where(better[:, None, None, None], adv.detach(), best[act])
                    best_obj[act] = torch.where(better, obj.detach(), bo)
                    reached[act] = ra | hit
                    da = self._step(da.detach(), grad, size * 0.5 * (1 + math.cos(math.pi * i / steps)), eps)
                    delta[act] = torch.clamp(xa + da, 0, 1) - xa
        return best.cpu().numpy(), trace, done.cpu().numpy()

    @torch.no_grad()
    def _check(self, xt, delta, tt, act, rows, model, best, done) -> torch.Tensor:
        """Apply ``stop`` to the active images that reach the target; freeze those it passes; the rest of ``act``."""
        adv = xt[act] + delta[act]
        x0 = xt[act].cpu().numpy()
        snapped = np.asarray(self.snap(x0, np.clip(adv.cpu().numpy(), 0, 1)), dtype=np.float32)
        hit = (model(quantise_t(snapped, adv.device)).argmax(1) == tt[act]).cpu().numpy()
        ok = np.zeros(len(act), dtype=bool)
        if hit.any():
            ok[hit] = np.asarray(self.stop(snapped[hit], rows[act.cpu().numpy()[hit]]), dtype=bool)
        okt = torch.from_numpy(ok).to(act.device)
        best[act[okt]] = torch.from_numpy(snapped[ok]).to(best.device)
        done[act[okt]] = True
        return act[~okt]


class AdaptiveLinf(_Adaptive):
    """Adaptive PGD in the L∞ ball of radius ``eps``, signed steps; results on the uint8 grid inside the ball.

    Parameters as the shared loop (``_Adaptive``): ``surrogate``, ``stop`` and the ``spec``'s parameters
    (``eps``, ``steps``, ``step``, ``restarts``, ``lam``, ``kappa``, ``refresh``).
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

    Parameters as :class:`AdaptiveLinf`, ``eps`` an L2 radius.
    """

    name = "adaptive_l2"
    title = "Adaptive PGD (L2), detector-aware"
    spec = _spec(Param(2.0, "float", 0.0, 1e4,
                       "L2 budget of the whole perturbation (the unbounded check uses the image box's diameter)"))

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
