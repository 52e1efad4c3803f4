"""The attack base class, its parameters, its result and the registry of attacks by name.

:class:`Attack` owns one final ``__call__`` that does the shared bookkeeping once (input checks, ``eval()``
and its undoing, seeding, clipping to the box, quantisation to uint8 and the success mask); a subclass sets
a few class attributes and writes only ``run(model, x, target) -> x_adv``.
"""
from __future__ import annotations

import abc
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar, final

import numpy as np
import torch

from .utils import (
    attack_mode,
    check_images,
    check_target,
    logits,
    model_device,
    quantise,
    seeded,
)

__all__ = ["ATTACKS", "Attack", "AttackResult", "Param", "available", "param_spec", "register", "run_attack"]

log = logging.getLogger(__name__)


@dataclass
class AttackResult:
    """What an attack returns.

    Attributes
    ----------
    x_adv : ndarray of float32, shape (N, C, H, W)
        Adversarial images in ``[0, 1]``. L-inf attacks return them on the uint8 grid, inside the eps ball
        (:func:`~core.attacks.quantise_within`); the others unrounded. A failed attack may return the input
        image or its last try; see ``success``.
    predicted : ndarray of int64, shape (N,)
        The model's prediction on ``quantise(x_adv)``, i.e. on ``round(x_adv * 255) / 255``: the image a caller
        stores as uint8 (:func:`~core.attacks.to_uint8`) is the image that was scored.
    success : ndarray of bool, shape (N,)
        Targeted attacks: ``predicted == target``. Untargeted: ``predicted != model(x).argmax(1)``.
    targeted : bool
        Whether the attack aimed at ``target`` (else: at any class but the prediction on ``x``).
    params : dict
        Every parameter used, defaults filled in, plus ``attack`` (name), ``targeted`` and ``seed``;
        JSON-serialisable.
    """

    x_adv: np.ndarray
    predicted: np.ndarray
    success: np.ndarray
    targeted: bool
    params: dict


@dataclass(frozen=True)
class Param:
    """One attack parameter: its default, kind (``"float"`` or ``"int"``), closed range and a line for a UI."""

    default: float | int
    type: str
    min: float | int
    max: float | int
    help: str

    def as_dict(self) -> dict:
        """``{"default", "type", "min", "max", "help"}``, a fresh dict."""
        return {"default": self.default, "type": self.type, "min": self.min, "max": self.max, "help": self.help}

    def check(self, name: str, attack: str, value: Any) -> float | int:
        """Return ``value`` as a plain Python number.

        Raises
        ------
        TypeError
            A bool, a non-number, or a non-integral value for an ``int`` parameter.
        ValueError
            NaN, or a value outside ``[min, max]``.
        """
        if isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{attack}: parameter '{name}' must be {self.type}, got bool {value!r}")
        if self.type == "int":
            if not isinstance(value, (int, np.integer)):
                if isinstance(value, (float, np.floating)) and float(value).is_integer():
                    value = int(value)
                else:
                    raise TypeError(f"{attack}: parameter '{name}' must be int, got {type(value).__name__} {value!r}")
            value = int(value)
        else:
            if not isinstance(value, (int, float, np.integer, np.floating)):
                raise TypeError(f"{attack}: parameter '{name}' must be float, got {type(value).__name__} {value!r}")
            value = float(value)
            if math.isnan(value):
                raise ValueError(f"{attack}: parameter '{name}' is NaN")
        if not self.min <= value <= self.max:
            raise ValueError(f"{attack}: parameter '{name}'={value!r} is outside [{self.min}, {self.max}]")
        return value


class Attack(abc.ABC):
    """Base of every attack: validated keyword-only parameters and one final ``__call__``.

    Subclasses set the class attributes below and implement :meth:`run`.

    Parameters
    ----------
    targeted : bool, optional, keyword-only
        Aim at a target class (True) or at any class but the prediction (False); one of ``modes``. Default:
        the class's ``targeted``.
    **params
        The attack's parameters (see ``spec`` / :func:`param_spec`); missing ones take their defaults.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``"pgd"``.
    title : str
        Name for people, e.g. ``"PGD (L-inf)"``.
    targeted : bool
        Whether the attack aims at a target class: on the class, the default mode; on an instance, its mode.
    modes : tuple of bool
        The values ``targeted`` may take.
    random : bool
        Whether :meth:`run` draws from numpy's or torch's global RNG. True (the default) seeds both with
        ``seed`` and serialises the run with every other random attack of the process; False runs unseeded,
        concurrently.
    spec : dict of str to Param
        The parameters, in display order.

    Raises
    ------
    TypeError
        For an unknown parameter name (the message lists the valid ones) or a value of the wrong type.
    ValueError
        For a value outside its range, or a ``targeted`` mode the attack lacks.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    targeted: bool
    modes: ClassVar[tuple[bool, ...]] = (True, False)
    random: ClassVar[bool] = True
    spec: ClassVar[dict[str, Param]]

    def __init__(self, *, targeted: bool | None = None, **params: Any) -> None:
        if targeted is not None:
            if not isinstance(targeted, (bool, np.bool_)):
                raise TypeError(f"{self.name}: targeted must be a bool, got {type(targeted).__name__} {targeted!r}")
            if bool(targeted) not in self.modes:
                raise ValueError(f"{self.name}: targeted={bool(targeted)} is not supported (modes: {self.modes})")
            self.targeted = bool(targeted)
        unknown = sorted(set(params) - set(self.spec))
        if unknown:
            raise TypeError(
                f"{self.name}: unknown parameter(s) {unknown}; valid parameters are {sorted(self.spec)}"
            )
        self.params: dict[str, float | int] = {
            k: p.check(k, self.name, params.get(k, p.default)) for k, p in self.spec.items()
        }

    def draws_random(self) -> bool:
        """Whether :meth:`run` draws from the global RNGs with these parameters; :attr:`random` unless overridden."""
        return self.random

    def snap(self, x: np.ndarray, x_adv: np.ndarray) -> np.ndarray:
        """Last step on ``x_adv`` (clipped to the box), shapes (N, C, H, W); unchanged unless overridden."""
        return x_adv

    def __repr__(self) -> str:
        args = ", ".join([f"targeted={self.targeted!r}", *(f"{k}={v!r}" for k, v in self.params.items())])
        return f"{type(self).__name__}({args})"

    @final
    def __call__(
        self,
        model: torch.nn.Module,
        x: np.ndarray,
        *,
        target: np.ndarray | None,
        seed: int = 0,
        progress: bool = False,
    ) -> AttackResult:
        """Attack a batch of images.

        Parameters
        ----------
        model : torch.nn.Module
            Takes float32 ``(N, C, H, W)`` in ``[0, 1]`` and returns logits ``(N, n_classes)``. It is put in
            eval mode with frozen weights during the attack; both are restored afterwards. Several threads may
            attack one model at once only when it is already in eval mode with frozen weights.
        x : ndarray of float32, shape (N, C, H, W)
            Images in ``[0, 1]``.
        target : ndarray of int64, shape (N,), or None
            Target class per image; required by targeted attacks, ignored by untargeted ones.
        seed : int
            Seeds torch and numpy's global RNG for an attack that draws from them (:meth:`draws_random`), under a
            process-wide lock; both RNG states are restored afterwards. Deterministic attacks ignore it.
        progress : bool
            Show a tqdm progress bar.

        Returns
        -------
        AttackResult

        Raises
        ------
        ValueError
            Bad images, bad seed, a targeted attack without ``target``, or bad target ids.
        TypeError
            Images or targets of the wrong type.
        """
        t0 = time.perf_counter()
        x = check_images(x)
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or not 0 <= seed < 2**32:
            raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
        seed = int(seed)
        if self.targeted and target is None:
            raise ValueError(
                f"{self.name} is a targeted attack: pass target=<int64 array of shape ({len(x)},)> "
                f"(e.g. a random wrong class per image)"
            )
        if not self.targeted and target is not None:
            log.debug("%s is untargeted: target ignored", self.name)
            target = None
        params = {"attack": self.name, "targeted": self.targeted, "seed": seed, **self.params}
        n = len(x)
        device = model_device(model)
        with attack_mode(model):
            if n == 0:
                empty = np.zeros(0, dtype=np.int64)
                return AttackResult(x.copy(), empty, np.zeros(0, dtype=bool), self.targeted, params)
            z = logits(model, x, device)
            original, n_classes = z.argmax(1).astype(np.int64), z.shape[1]
            if target is not None:
                target = check_target(target, n, n_classes, self.name)
                if (same := int((target == original).sum())):
                    log.warning("%s: %d of %d targets equal the prediction on x (trivial success)", self.name, same, n)
            with seeded(seed, device) if self.draws_random() else contextlib.nullcontext():
                x_adv = self.run(model, x, target, progress=progress)
            x_adv = np.asarray(x_adv, dtype=np.float32)
            if x_adv.shape != x.shape:
                raise RuntimeError(f"{self.name}: run() returned shape {x_adv.shape}, expected {x.shape}")
            x_adv = np.asarray(self.snap(x, np.clip(np.nan_to_num(x_adv, nan=0.0), 0.0, 1.0)), dtype=np.float32)
            predicted = logits(model, quantise(x_adv), device).argmax(1).astype(np.int64)
        success = predicted == target if self.targeted else predicted != original
        dt = time.perf_counter() - t0
        log.info(
            "%s: %d images in %.2f s (%.1f ms/image), success %d/%d (%.0f%%)",
            self.name, n, dt, 1e3 * dt / n, success.sum(), n, 100 * success.mean(),
        )
        return AttackResult(x_adv, predicted, success, self.targeted, params)

    @abc.abstractmethod
    def run(
        self, model: torch.nn.Module, x: np.ndarray, target: np.ndarray | None, *, progress: bool = False
    ) -> np.ndarray:
        """Compute adversarial images; the base class does everything else.

        Parameters
        ----------
        model : torch.nn.Module
            In eval mode, weights frozen.
        x : ndarray of float32, shape (N, C, H, W)
            Validated images in ``[0, 1]``, N >= 1.
        target : ndarray of int64, shape (N,), or None
            Validated targets (None exactly for untargeted attacks).
        progress : bool
            Show a progress bar.

        Returns
        -------
        ndarray of float, shape (N, C, H, W)
            Adversarial images (clipped to ``[0, 1]`` by the caller).
        """


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------
#: Attack classes by name, in display order (filled by :func:`register` when ``core.attacks`` is imported).
ATTACKS: dict[str, type[Attack]] = {}


def register(*classes: type[Attack]) -> None:
    """Add attack classes to :data:`ATTACKS`, in the order given.

    Raises
    ------
    ValueError
        If a name is already registered by another class.
    """
    for cls in classes:
        if ATTACKS.get(cls.name, cls) is not cls:
            raise ValueError(f"attack name {cls.name!r} is taken by {ATTACKS[cls.name].__name__}")
        ATTACKS[cls.name] = cls


def available() -> list[str]:
    """Names of the registered attacks, in display order."""
    return list(ATTACKS)


def _lookup(name: str) -> type[Attack]:
    try:
        return ATTACKS[name]
    except KeyError:
        raise ValueError(f"unknown attack {name!r}; available: {available()}") from None


def param_spec(name: str) -> dict[str, dict]:
    """Parameters of attack ``name``, for building a UI.

    Returns
    -------
    dict
        ``{param: {"default", "type" ("float" | "int"), "min", "max", "help"}}``; ``min``/``max`` are
        inclusive. A fresh copy each call.

    Raises
    ------
    ValueError
        If ``name`` is not in :data:`ATTACKS`.

    Examples
    --------
    >>> param_spec("fgsm")["eps"]["default"]                             # doctest: +SKIP
    0.1
    """
    return {k: p.as_dict() for k, p in _lookup(name).spec.items()}


def run_attack(
    name: str,
    model: torch.nn.Module,
    x: np.ndarray,
    *,
    target: np.ndarray | None,
    seed: int = 0,
    progress: bool = False,
    **params: Any,
) -> AttackResult:
    """Run attack ``name`` on a batch of images.

    Parameters
    ----------
    name : str
        One of :func:`available`.
    model : torch.nn.Module
        Float32 ``(N, C, H, W)`` in ``[0, 1]`` -> logits; its train/eval state is restored afterwards.
    x : ndarray of float32, shape (N, C, H, W)
        Images in ``[0, 1]``.
    target : ndarray of int64, shape (N,), or None
        Target class per image; required for targeted attacks, ignored by ``deepfool``.
    seed : int
        Seed for torch and numpy's global RNG during the attack.
    progress : bool
        Show a progress bar.
    **params
        Attack parameters, see :func:`param_spec`, and ``targeted`` (bool) to pick the mode of an attack that
        has both (``ATTACKS[name].modes``).

    Returns
    -------
    AttackResult

    Raises
    ------
    ValueError
        Unknown attack, bad input, out-of-range parameter, or a targeted attack without ``target``.
    TypeError
        Unknown parameter name or wrong parameter type.

    Examples
    --------
    >>> res = run_attack("pgd", model, x, target=t, eps=8 / 255)      # doctest: +SKIP
    >>> stored = to_uint8(res.x_adv[res.success])  # uint8 (n, H, W, C), as scored  # doctest: +SKIP
    """
    from core._util.threads import single_image_threads

    with single_image_threads(x):
        return _lookup(name)(**params)(model, x, target=target, seed=seed, progress=progress)
