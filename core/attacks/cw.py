"""Carlini & Wagner L2, written in torch (Carlini & Wagner 2017, as in foolbox 3).

Not ART's ``CarliniL2Method``; see docs/design.md#attacks.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .base import Attack, Param
from .utils import BATCH, logits, model_device

__all__ = ["CarliniL2"]

#: ``x`` enters tanh space as ``atanh((2x − 1) · _SHRINK)``: pixels at 0 or 1 stay movable within a short Adam run,
#: and the offset this adds (at most 0.0005) rounds back to the original uint8 value.
_SHRINK = 0.999


class CarliniL2(Attack):
    """Carlini & Wagner L2 attack, targeted by default.

    Per image, in ``tanh`` space (``x' = (tanh(w) + 1) / 2`` stays in the box; ``w`` starts at
    ``atanh(0.999 · (2x − 1))``, so pixels at 0 or 1 can move)::

        minimise_w   ||x' − x||₂² + c · max(max_{i≠t} Z(x')_i − Z(x')_t + confidence, 0)

    (untargeted: ``max(Z(x')_y − max_{i≠y} Z(x')_i + confidence, 0)`` with ``y`` the prediction on ``x``)

    with Adam (``learning_rate``) for ``max_iter`` steps, then a binary search over ``c`` per image
    (``binary_search_steps`` rounds, starting at ``initial_const``; ×10 while no success). Each iterate is
    scored rounded to uint8, as the base class scores it, and the smallest-L2 success is kept; where none
    succeeds the input image is returned. See docs/design.md#attacks.

    Parameters
    ----------
    confidence : float
        Logit margin required over the runner-up class.
    learning_rate : float
        Adam step size, in tanh space.
    max_iter : int
        Adam steps per binary-search round.
    binary_search_steps : int
        Rounds of the binary search over ``c``.
    initial_const : float
        First value of the trade-off constant ``c``.

    Examples
    --------
    >>> res = CarliniL2(max_iter=50)(model, x, target=t)             # doctest: +SKIP
    """

    name = "cw"
    title = "Carlini-Wagner L2"
    targeted = True
    random = False
    spec = {
        "confidence": Param(0.0, "float", 0.0, 50.0, "logit margin required over the runner-up class"),
        "learning_rate": Param(0.1, "float", 0.0001, 1.0, "Adam step size (in tanh space)"),
        "max_iter": Param(100, "int", 1, 1000, "Adam steps per binary-search round"),
        "binary_search_steps": Param(3, "int", 1, 20, "rounds of the binary search over c"),
        "initial_const": Param(1.0, "float", 0.001, 1000.0, "first value of the trade-off constant c (log scale)"),
    }

    def run(self, model, x, target, *, progress=False):
        from tqdm.auto import tqdm

        device = model_device(model)
        out = x.copy()
        p = self.params
        rounds = p["binary_search_steps"]
        label = target if self.targeted else logits(model, x, device).argmax(1).astype(np.int64)
        with tqdm(total=rounds * math.ceil(len(x) / BATCH), desc="C&W L2", disable=not progress) as bar:
            for s in range(0, len(x), BATCH):
                out[s : s + BATCH] = self._batch(model, x[s : s + BATCH], label[s : s + BATCH], device, bar)
        return out

    def _batch(self, model, x: np.ndarray, label: np.ndarray, device: torch.device, bar: Any) -> np.ndarray:
        """Attack one batch; shapes (B, C, H, W) and (B,) -> (B, C, H, W).

        ``label`` is the target class (targeted) or the class to leave (untargeted).
        """
        p = self.params
        n = len(x)
        xt = torch.from_numpy(x).to(device)
        tt = torch.from_numpy(label).to(device)
        sign = 1.0 if self.targeted else -1.0
        w0 = torch.atanh((2 * xt - 1) * _SHRINK)
        c = torch.full((n,), p["initial_const"], device=device)
        lo = torch.zeros(n, device=device)
        hi = torch.full((n,), math.inf, device=device)
        best = xt.clone()
        best_l2 = torch.full((n,), math.inf, device=device)

        def margin(z: torch.Tensor) -> torch.Tensor:
            """Targeted max_{i≠t} Z_i − Z_t, untargeted Z_y − max_{i≠y} Z_i; shape (B,)."""
            z_t = z.gather(1, tt[:, None])[:, 0]
            other = z.scatter(1, tt[:, None], -math.inf).amax(1)
            return sign * (other - z_t)

        for _ in range(p["binary_search_steps"]):
            w = w0.clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=p["learning_rate"])
            hit = torch.zeros(n, dtype=torch.bool, device=device)
            for _ in range(p["max_iter"]):
                with torch.enable_grad():
                    adv = (torch.tanh(w) + 1) / 2
                    l2 = (adv - xt).pow(2).flatten(1).sum(1)
                    f = (margin(model(adv)) + p["confidence"]).clamp(min=0)
                    loss = (l2 + c * f).sum()
                    opt.zero_grad()
                    loss.backward()
                with torch.no_grad():  # score the iterate as it will be stored: rounded to uint8
                    adv = adv.detach()
                    q = torch.round(adv * 255) / 255
                    logits_q = model(q)
                    ok = (margin(logits_q) + p["confidence"] <= 0) & ((logits_q.argmax(1) == tt) == self.targeted)
                    hit |= ok
                    better = ok & (l2.detach() < best_l2)
                    best[better] = adv[better]
                    best_l2[better] = l2.detach()[better]
                opt.step()
            with torch.no_grad():  # per-image binary search over c
                hi = torch.where(hit, torch.minimum(hi, c), hi)
                lo = torch.where(hit, lo, torch.maximum(lo, c))
                c = torch.where(torch.isinf(hi), c * 10, (lo + hi) / 2)
            bar.update()
        return best.cpu().numpy()
