"""Attacks that wrap ART (Adversarial Robustness Toolbox): PGD, iterative FGSM, FGSM and DeepFool.

ART is imported inside :meth:`run`, never at module level (``import art`` takes seconds), and through
:func:`core._util.lazy_import.import_locked` (two threads importing ART at once fail).
"""
from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import numpy as np
import torch

from core._util.lazy_import import import_locked

from .base import Attack, Param
from .utils import BATCH, model_device, quantise_within

__all__ = ["DeepFool", "FGSM", "IFGSM", "PGD"]


def _art_classifier(model: torch.nn.Module, x: np.ndarray) -> Any:
    """Wrap ``model`` in ART's ``PyTorchClassifier`` (box [0, 1], cross-entropy, on the model's device)."""
    PyTorchClassifier = import_locked("art.estimators.classification").PyTorchClassifier

    device = model_device(model)
    with torch.no_grad():
        n_classes = int(model(torch.from_numpy(x[:1]).to(device)).shape[1])
    return PyTorchClassifier(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=n_classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if device.type == "cuda" else "cpu",
    )


def _cuda_context(model: torch.nn.Module) -> contextlib.AbstractContextManager:
    """ART puts tensors on the *current* CUDA device: make that the model's one."""
    device = model_device(model)
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _one_hot(target: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes, dtype=np.float32)[target]


class PGD(Attack):
    """L-inf projected gradient descent with random start (Madry et al.; ART), targeted by default.

    ``steps`` steps of size ``step`` down the cross-entropy of the target class (untargeted: up the
    cross-entropy of the prediction on ``x``), by the sign of the gradient, each followed by projection onto
    the ``eps`` ball around ``x`` and the box ``[0, 1]``, starting from a uniform random point of the ball
    (drawn from numpy's global RNG, seeded by the base class). With ``random_starts > 1`` it restarts and
    keeps, per image, the last successful run. The result is rounded to the uint8 grid inside the ball.

    Parameters
    ----------
    eps, step : float
        L-inf budget and step size, in ``[0, 1]`` pixel units.
    steps, random_starts : int
        Iterations per start; random starts (0: start at ``x``).

    Attributes
    ----------
    fixed : dict
        Schedule values a subclass fixes instead of taking them as parameters; a schedule without ``step``
        takes ``step = eps``.
    """

    name = "pgd"
    title = "PGD (L-inf)"
    targeted = True
    spec = {
        "eps": Param(0.1, "float", 0.001, 1.0, "L-inf budget: max |x_adv - x| per pixel (in [0, 1] units)"),
        "step": Param(0.01, "float", 0.0001, 1.0, "step size per iteration (in [0, 1] units)"),
        "steps": Param(40, "int", 1, 200, "number of iterations per start"),
        "random_starts": Param(1, "int", 0, 10, "random starts in the eps ball (0: start at x, i.e. IFGSM)"),
    }
    fixed: ClassVar[dict[str, float | int]] = {}

    def _schedule(self) -> dict[str, float | int]:
        """``eps``, ``step``, ``steps`` and ``random_starts`` handed to ART's PGD."""
        p = {**self.params, **self.fixed}
        p.setdefault("step", p["eps"])
        return p

    def draws_random(self) -> bool:
        return self._schedule()["random_starts"] > 0

    def snap(self, x: np.ndarray, x_adv: np.ndarray) -> np.ndarray:
        return quantise_within(x_adv, x, self.params["eps"])

    def run(self, model, x, target, *, progress=False):
        ProjectedGradientDescent = import_locked("art.attacks.evasion").ProjectedGradientDescent

        clf = _art_classifier(model, x)
        p = self._schedule()
        with _cuda_context(model):
            attack = ProjectedGradientDescent(
                clf, norm=np.inf, eps=p["eps"], eps_step=p["step"], max_iter=p["steps"], targeted=self.targeted,
                num_random_init=p["random_starts"], batch_size=BATCH, verbose=progress,
            )
            return attack.generate(x, y=None if target is None else _one_hot(target, clf.nb_classes))


class IFGSM(PGD):
    """Iterative FGSM (BIM; targeted by default, the paper's *iter_target_class*): :class:`PGD` started at ``x``.

    The paper used 20 steps of 1/255 clipped to ±16/255 on ImageNet; the defaults are sized for 28×28
    Fashion-MNIST. See docs/design.md#attacks.

    Parameters
    ----------
    eps, step : float
        L-inf budget and step size, in ``[0, 1]`` pixel units.
    steps : int
        Iterations.
    """

    name = "ifgsm"
    title = "Iterative targeted FGSM"
    targeted = True
    spec = {
        "eps": PGD.spec["eps"],
        "step": PGD.spec["step"],
        "steps": Param(20, "int", 1, 200, "number of iterations"),
    }
    fixed = {"random_starts": 0}


class FGSM(IFGSM):
    """Fast gradient sign: one step of :class:`IFGSM` of size ``eps``, untargeted by default (as Goodfellow et al.).

    Untargeted: ``x_adv = clip(x + eps * sign(grad_x CE(model(x), y)), 0, 1)`` with ``y`` the prediction on
    ``x``; targeted: ``clip(x - eps * sign(grad_x CE(model(x), target)), 0, 1)``, which reaches the target
    only some of the time. Failures are flagged in ``success``.

    Parameters
    ----------
    eps : float
        L-inf budget and step size, in ``[0, 1]`` pixel units.
    """

    name = "fgsm"
    title = "FGSM"
    targeted = False
    spec = {"eps": PGD.spec["eps"]}
    fixed = {"steps": 1, "random_starts": 0}


class DeepFool(Attack):
    """Untargeted DeepFool (Moosavi-Dezfooli et al.; ART ``DeepFool``); ``target`` is ignored.

    Linearises the classifier and steps to the nearest decision boundary among the ``candidates`` most
    likely classes, repeatedly; the final perturbation is scaled by ``1 + overshoot``. The default overshoot
    (0.05, not the usual 0.02) leaves room for rounding to uint8; see docs/design.md#attacks.

    Parameters
    ----------
    max_iter : int
        Maximum linearisation steps.
    overshoot : float
        Relative overshoot past the boundary.
    candidates : int
        Most likely classes considered (capped at the class count).
    """

    name = "deepfool"
    title = "DeepFool"
    targeted = False
    modes = (False,)
    random = False
    spec = {
        "max_iter": Param(50, "int", 1, 500, "maximum linearisation steps"),
        "overshoot": Param(0.05, "float", 0.0, 1.0, "relative overshoot past the boundary"),
        "candidates": Param(10, "int", 2, 1000, "most likely classes considered (capped at the class count)"),
    }

    def run(self, model, x, target, *, progress=False):
        ArtDeepFool = import_locked("art.attacks.evasion").DeepFool

        clf = _art_classifier(model, x)
        p = self.params
        with _cuda_context(model):
            attack = ArtDeepFool(
                clf, max_iter=p["max_iter"], epsilon=p["overshoot"],
                nb_grads=min(p["candidates"], clf.nb_classes), batch_size=BATCH, verbose=progress,
            )
            return attack.generate(x)
