"""Box-constrained L-BFGS, the paper's eq. (1), written here with SciPy's L-BFGS-B (ART has none).

SciPy is imported inside the solver, never at module level. See docs/design.md#attacks.
"""
from __future__ import annotations

import logging
import threading
from typing import ClassVar

import numpy as np
import torch

from core._util.lazy_import import import_locked
from core._util.threads import one_blas_thread

from .base import Attack, Param
from .utils import BATCH, logits, model_device, quantise

__all__ = ["LBFGS"]

log = logging.getLogger(__name__)

_BLOCK = 8  # images per block of a batched evaluation


class LBFGS(Attack):
    """Box-constrained L-BFGS, the paper's eq. (1) (Szegedy et al. 2014; Tabacof & Valle 2016).

    Per image, with a constant ``C > 0`` and the target class ``t``::

        minimise_η   ||η||₂ + C · CE(model(x + η), t)     subject to  0 <= x + η <= 1

    solved with ``scipy.optimize.minimize(method="L-BFGS-B", jac=True)`` on float64 copies of torch's
    gradients; the box is the solver's bound constraint. Each image is its own problem, with its own solver
    state and stopping rule, so its result does not depend on the other images of the batch; the images'
    objectives are evaluated together, one forward pass per solver step.

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
    modes = (True,)
    random = False
    spec = {
        "c_start": Param(3.0, "float", 1.0, 1000.0, "first C of the grid, in units of C₀ = 1/||∇CE(x)||"),
        "c_factor": Param(4.0, "float", 1.5, 100.0, "ratio between successive grid values of C"),
        "grid_steps": Param(4, "int", 1, 12, "grid values of C tried at most"),
        "binary_steps": Param(3, "int", 0, 20, "bisections of C (log scale) after the grid"),
        "max_iter": Param(20, "int", 1, 1000, "L-BFGS-B iterations per solve"),
    }
    _chunk: ClassVar[int] = 256  # images solved side by side at most (one thread each)

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
        """One L-BFGS-B run of eq. (1) per image, the images' objectives evaluated in shared forward passes.

        Each image has its own solver (state, line search, stopping rule), in its own thread; the threads meet
        at :class:`_Lockstep`, which evaluates the pending images in one batch.

        Parameters
        ----------
        x : ndarray of float32, shape (B, C, H, W)
        target : ndarray of int64, shape (B,)
        c : ndarray of float, shape (B,)
            Loss weight per image.

        Returns
        -------
        ndarray of float32, shape (B, C, H, W)
            ``x + η`` at each solver's final point, inside the box.
        """
        from concurrent.futures import ThreadPoolExecutor

        optimize = import_locked("scipy.optimize")  # lazily, as ART (two threads importing at once can fail)
        Bounds, minimize = optimize.Bounds, optimize.minimize

        shape = x.shape[1:]
        x64 = x.astype(np.float64).reshape(len(x), -1)
        opts = {"maxiter": self.params["max_iter"], "maxfun": 2 * self.params["max_iter"]}

        def evaluate(idx: np.ndarray, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """Objective and gradient of images ``idx`` at ``eta`` (k, D) -> (k,), (k, D), float64."""
            k = len(idx)
            pad = -k % _BLOCK  # whole blocks of images: an image's arithmetic is then the same whatever its mates
            rows = np.concatenate([idx, np.full(pad, idx[0])])
            e = np.concatenate([eta, np.zeros((pad, eta.shape[1]))]).reshape(k + pad, *shape).astype(np.float32)
            xt = torch.from_numpy(x[rows]).to(device)
            et = torch.from_numpy(e).to(device).requires_grad_(True)
            tt = torch.from_numpy(target[rows]).to(device)
            ct = torch.from_numpy(np.asarray(c, dtype=np.float32)[rows]).to(device)
            with torch.enable_grad():
                ce = torch.nn.functional.cross_entropy(model(xt + et), tt, reduction="none")
                norm = torch.sqrt(et.pow(2).flatten(1).sum(1) + 1e-12)  # ||η||₂, smoothed at η = 0
                obj = norm + ct * ce
                (grad,) = torch.autograd.grad(obj.sum(), et)  # per image: the terms are independent
            obj, grad = obj.detach()[:k], grad[:k]
            return obj.double().cpu().numpy(), grad.double().cpu().numpy().reshape(k, -1)

        step = _Lockstep(len(x), evaluate)

        def solve(i: int) -> np.ndarray:
            try:
                res = minimize(lambda eta: step.ask(i, eta), np.zeros_like(x64[i]), jac=True, method="L-BFGS-B",
                               bounds=Bounds(-x64[i], 1.0 - x64[i]), options=opts)
                return res.x
            finally:
                step.leave()

        with one_blas_thread(), ThreadPoolExecutor(max_workers=len(x), thread_name_prefix="lbfgs") as pool:
            futures = [pool.submit(solve, i) for i in range(len(x))]
            try:
                eta = np.stack([f.result() for f in futures])
            except BaseException:
                step.abort()
                raise
        return np.clip(x64 + eta, 0.0, 1.0).reshape(x.shape).astype(np.float32)


class _Lockstep:
    """Batch the objective evaluations of per-image solvers that run in threads.

    Each solver thread calls :meth:`ask` with its point and blocks; once every live solver is waiting, the
    last one to arrive evaluates all pending points in one call of ``evaluate`` and wakes the others. A solver
    that returns calls :meth:`leave`. An error in ``evaluate`` (or :meth:`abort`) is raised in every waiting
    thread.

    Parameters
    ----------
    n : int
        Number of solver threads.
    evaluate : callable
        ``evaluate(idx, points) -> (values, gradients)`` with ``idx`` int (k,), points float64 (k, D), values
        (k,) and gradients (k, D).
    """

    def __init__(self, n: int, evaluate) -> None:
        self._cv = threading.Condition()
        self._live = n
        self._pending: dict[int, np.ndarray] = {}
        self._done: dict[int, tuple[float, np.ndarray]] = {}
        self._evaluate = evaluate
        self._error: BaseException | None = None

    def ask(self, i: int, point: np.ndarray) -> tuple[float, np.ndarray]:
        """Value and gradient of solver ``i``'s objective at ``point``, shape (D,) -> (float, (D,))."""
        with self._cv:
            self._pending[i] = np.array(point, dtype=np.float64)
            self._flush_if_ready()
            while i not in self._done and self._error is None:
                self._cv.wait()
            if self._error is not None:
                raise RuntimeError("lbfgs: batched evaluation failed") from self._error
            return self._done.pop(i)

    def leave(self) -> None:
        """Solver finished: stop waiting for it."""
        with self._cv:
            self._live -= 1
            self._flush_if_ready()

    def abort(self) -> None:
        """Wake every waiting solver with an error."""
        with self._cv:
            self._error = self._error or RuntimeError("lbfgs: aborted")
            self._cv.notify_all()

    def _flush_if_ready(self) -> None:
        if not self._pending or len(self._pending) < self._live or self._error is not None:
            return
        idx = np.array(sorted(self._pending))
        try:
            values, grads = self._evaluate(idx, np.stack([self._pending[i] for i in idx]))
        except BaseException as e:
            self._error = e
        else:
            for j, i in enumerate(idx):
                self._done[int(i)] = (float(values[j]), grads[j])
        self._pending.clear()
        self._cv.notify_all()


