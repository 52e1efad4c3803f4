"""Box-constrained L-BFGS, the paper's eq. (1), written here with SciPy's L-BFGS-B (ART has none).

SciPy is imported inside the solver, never at module level. See docs/design.md#attacks.
"""
from __future__ import annotations

import contextlib
import logging
from typing import ClassVar

import numpy as np
import torch

from .base import Attack, Param
from .utils import BATCH, logits, model_device, quantise

__all__ = ["LBFGS"]

log = logging.getLogger(__name__)


class LBFGS(Attack):
    """Box-constrained L-BFGS, the paper's eq. (1) (Szegedy et al. 2014; Tabacof & Valle 2016).

    Per image, with a constant ``C > 0`` and the target class ``t``::

        minimise_η   ||η||₂ + C · CE(model(x + η), t)     subject to  0 <= x + η <= 1

    solved with ``scipy.optimize.minimize(method="L-BFGS-B", jac=True)`` on float64 copies of torch's
    gradients; the box is the solver's bound constraint. The images of a batch are solved jointly (the
    objective is a sum of independent per-image terms, each with its own ``C``).

    ``C`` is chosen per image, first on the grid ``C₀ · c_start · c_factor^k`` for ``k < grid_steps``, raised
    until the attack succeeds, then by ``binary_steps`` bisections (in log C) between the largest failing and
    the smallest succeeding value; every solve starts from ``η = 0``. ``C₀ = 1 / ||∇ₓ CE(model(x), t)||₂`` is
    the value below which ``η = 0`` is a stationary point, so the grid is scale-free. Success is judged on the
    image rounded to uint8; the smallest-norm success is kept, and an image that never succeeds returns its
    try at the largest ``C``. See docs/design.md#attacks.

    Parameters
    ----------
    c_start : float
        First ``C`` of the grid, in units of ``C₀``.
    c_factor : float
        Ratio between successive grid values of ``C``.
    grid_steps : int
        Grid values of ``C`` tried at most.
    binary_steps : int
        Bisections of ``C`` (log scale) after the grid.
    max_iter : int
        L-BFGS-B iterations per solve.

    Examples
    --------
    >>> res = LBFGS(grid_steps=6)(model, x, target=t)                # doctest: +SKIP
    """

    name = "lbfgs"
    title = "L-BFGS (box-constrained)"
    targeted = True
    random = False
    spec = {
        "c_start": Param(3.0, "float", 1.0, 1000.0, "first C of the grid, in units of C₀ = 1/||∇CE(x)||"),
        "c_factor": Param(4.0, "float", 1.5, 100.0, "ratio between successive grid values of C"),
        "grid_steps": Param(4, "int", 1, 12, "grid values of C tried at most"),
        "binary_steps": Param(3, "int", 0, 20, "bisections of C (log scale) after the grid"),
        "max_iter": Param(20, "int", 1, 1000, "L-BFGS-B iterations per solve"),
    }
    _chunk: ClassVar[int] = 256  # images solved jointly at most

    def run(self, model, x, target, *, progress=False):
        from tqdm.auto import tqdm

        p = self.params
        n = len(x)
        device = model_device(model)
        best = x.copy()  # smallest-norm success so far
        best_norm = np.full(n, np.inf)
        last = x.copy()  # latest try (returned where nothing succeeded)
        c0 = self._c0(model, x, target, device)
        lo = c0.copy()  # largest C known to fail (C₀: η = 0 is stationary)
        hi = np.full(n, np.inf)  # smallest C known to succeed
        c = c0 * p["c_start"]

        def attempt(idx: np.ndarray, c_idx: np.ndarray) -> np.ndarray:
            """Solve images ``idx`` with constants ``c_idx``; update best/last; return success, shape (len(idx),)."""
            ok = np.zeros(len(idx), dtype=bool)
            for s in range(0, len(idx), self._chunk):
                sl = slice(s, s + self._chunk)
                i = idx[sl]
                adv = self._solve(model, x[i], target[i], c_idx[sl], device)
                ok[sl] = logits(model, quantise(adv), device).argmax(1) == target[i]
                norms = np.sqrt(((adv - x[i]) ** 2).reshape(len(adv), -1).sum(1))
                last[i] = adv
                better = ok[sl] & (norms < best_norm[i])
                best[i[better]] = adv[better]
                best_norm[i[better]] = norms[better]
            return ok

        with tqdm(total=p["grid_steps"] + p["binary_steps"], desc="L-BFGS", disable=not progress) as bar:
            for _ in range(p["grid_steps"]):  # coarse grid: raise C until each image succeeds
                idx = np.flatnonzero(np.isinf(hi))
                if idx.size:
                    ok = attempt(idx, c[idx])
                    hi[idx[ok]] = c[idx[ok]]
                    lo[idx[~ok]] = c[idx[~ok]]
                    c[idx[~ok]] *= p["c_factor"]
                bar.update()
                bar.set_postfix(success=int(np.isfinite(hi).sum()))
            for _ in range(p["binary_steps"]):  # bisection in log C for the smallest succeeding C
                idx = np.flatnonzero(np.isfinite(hi))
                if idx.size:
                    mid = np.sqrt(lo[idx] * hi[idx])
                    ok = attempt(idx, mid)
                    hi[idx[ok]] = mid[ok]
                    lo[idx[~ok]] = mid[~ok]
                bar.update()
        found = np.isfinite(best_norm)
        if found.any():
            log.debug("lbfgs: %d/%d found; median C/C₀ %.3g", found.sum(), n, np.median((hi / c0)[found]))
        return np.where(found[:, None, None, None], best, last)

    @staticmethod
    def _c0(model: torch.nn.Module, x: np.ndarray, target: np.ndarray, device: torch.device) -> np.ndarray:
        """``C₀ = 1 / ||∇ₓ CE(model(x), t)||₂`` per image, shape (N,), float64, capped at 1e12."""
        norms = []
        for s in range(0, len(x), BATCH):
            xt = torch.from_numpy(x[s : s + BATCH]).to(device).requires_grad_(True)
            with torch.enable_grad():
                ce = torch.nn.functional.cross_entropy(
                    model(xt), torch.from_numpy(target[s : s + BATCH]).to(device), reduction="sum"
                )
                (g,) = torch.autograd.grad(ce, xt)
            norms.append(g.flatten(1).norm(dim=1).double().cpu().numpy())
        with np.errstate(divide="ignore"):
            c0 = 1.0 / np.concatenate(norms)
        return np.minimum(c0, 1e12)  # a vanishing gradient: start huge, the grid will fail honestly

    def _solve(
        self,
        model: torch.nn.Module,
        x: np.ndarray,
        target: np.ndarray,
        c: np.ndarray,
        device: torch.device,
    ) -> np.ndarray:
        """One L-BFGS-B run of eq. (1) for a batch of images solved jointly.

        Parameters
        ----------
        x : ndarray of float32, shape (B, C, H, W)
        target : ndarray of int64, shape (B,)
        c : ndarray of float, shape (B,)
            Loss weight per image.

        Returns
        -------
        ndarray of float32, shape (B, C, H, W)
            ``x + η`` at the solver's final point, inside the box.
        """
        from scipy.optimize import Bounds, minimize

        xt = torch.from_numpy(x).to(device)
        tt = torch.from_numpy(target).to(device)
        ct = torch.from_numpy(np.asarray(c, dtype=np.float32)).to(device)
        shape = x.shape
        x64 = x.astype(np.float64).ravel()

        def fun(eta: np.ndarray) -> tuple[float, np.ndarray]:
            e = torch.from_numpy(eta.reshape(shape).astype(np.float32)).to(device).requires_grad_(True)
            with torch.enable_grad():
                ce = torch.nn.functional.cross_entropy(model(xt + e), tt, reduction="none")
                norm = torch.sqrt(e.pow(2).flatten(1).sum(1) + 1e-12)  # ||η||₂, smoothed at η = 0
                obj = (norm + ct * ce).sum()
                (grad,) = torch.autograd.grad(obj, e)
            return float(obj.detach()), grad.double().cpu().numpy().ravel()

        with _one_blas_thread():
            res = minimize(
                fun, np.zeros_like(x64), jac=True, method="L-BFGS-B", bounds=Bounds(-x64, 1.0 - x64),
                options={"maxiter": self.params["max_iter"], "maxfun": 2 * self.params["max_iter"]},
            )
        return np.clip(x64 + res.x, 0.0, 1.0).reshape(shape).astype(np.float32)


def _one_blas_thread() -> contextlib.AbstractContextManager:
    """Limit BLAS to one thread around L-BFGS-B (its vectors are too small to gain from threads).

    ``threadpoolctl`` comes with scikit-learn; without it this is a no-op. See docs/design.md#attacks.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")
