"""Helpers shared by the attacks: the one uint8 quantiser, batched logits, model-mode and RNG guards, input checks.

``quantise`` and ``to_uint8`` are the project's only rounding of float images to the uint8 grid: the precompute
stores ``to_uint8(x_adv)``, the app shows it, and the attacks score ``quantise(x_adv)``, the same values.
L-inf attacks first round with ``quantise_within``, which keeps the eps ball, so the two then agree exactly.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

__all__ = [
    "BATCH",
    "GLOBAL_RNG_LOCK",
    "attack_mode",
    "check_images",
    "check_target",
    "logits",
    "model_device",
    "quantise",
    "quantise_within",
    "seeded",
    "to_uint8",
]

BATCH = 128  # images per forward pass / per ART batch
_RANGE_TOL = 1e-6  # inputs may exceed [0, 1] by this much (float noise); they are clipped
_GRID_TOL = 1e-4  # in grid steps: float noise in 255 * (x ± eps), not a budget


def _grid(x: np.ndarray) -> np.ndarray:
    """``round(x * 255)`` (half to even) clipped to ``[0, 255]``, float32, same shape as ``x``."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float32) * 255.0), 0, 255)


def quantise(x: np.ndarray) -> np.ndarray:
    """Round images in ``[0, 1]`` to the uint8 grid and back: ``round(x * 255) / 255`` as float32.

    Parameters
    ----------
    x : ndarray of float, shape (N, C, H, W)

    Returns
    -------
    ndarray of float32, shape (N, C, H, W)
        Values ``k / 255`` with integer ``k`` in ``[0, 255]``; ``core.data.datasets.to_float(to_uint8(x))`` exactly.
    """
    return (_grid(x) / 255.0).astype(np.float32)


def quantise_within(x_adv: np.ndarray, x: np.ndarray, eps: float) -> np.ndarray:
    """Round ``x_adv`` to the uint8 grid without leaving the L-inf ball of radius ``eps`` around ``x``.

    Each pixel takes the nearest value ``k / 255`` unless that lies farther than ``eps`` from ``x``; then it
    takes the nearest one inside the ball (rounding toward ``x``). Where the ball holds no grid value (``eps``
    below half a grid step), the pixel takes the grid value nearest ``x``.

    Parameters
    ----------
    x_adv, x : ndarray of float, shape (N, C, H, W)
        Adversarial and original images in ``[0, 1]``.
    eps : float
        L-inf radius, in ``[0, 1]`` pixel units.

    Returns
    -------
    ndarray of float32, shape (N, C, H, W)
        Values ``k / 255``; ``to_uint8`` of it gives back ``k``.
    """
    x = np.asarray(x, dtype=np.float64) * 255.0
    lo = np.maximum(np.ceil(x - 255.0 * eps - _GRID_TOL), 0)
    hi = np.minimum(np.floor(x + 255.0 * eps + _GRID_TOL), 255)
    k = np.minimum(np.maximum(_grid(x_adv), lo), hi)
    k = np.where(lo <= hi, k, np.clip(np.rint(x), 0, 255))
    return (k / 255.0).astype(np.float32)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Store images: float ``(N, C, H, W)`` in ``[0, 1]`` -> uint8 ``(N, H, W, C)``, the inverse of ``to_float``.

    Parameters
    ----------
    x : ndarray of float, shape (N, C, H, W)

    Returns
    -------
    ndarray of uint8, shape (N, H, W, C), C-contiguous
        ``round(x * 255)`` (half to even), clipped to ``[0, 255]``: the values :func:`quantise` scores.

    Examples
    --------
    >>> to_uint8(np.full((1, 3, 2, 2), 0.5, dtype=np.float32))[0, 0, 0]
    array([128, 128, 128], dtype=uint8)
    """
    return _grid(x).astype(np.uint8).transpose(0, 2, 3, 1).copy()


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    p = next(model.parameters(), None)
    if p is None:
        p = next(model.buffers(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def logits(model: torch.nn.Module, x: np.ndarray, device: torch.device) -> np.ndarray:
    """Logits of float32 images, shape (N, C, H, W) -> (N, n_classes), in batches of ``BATCH``."""
    out = [model(torch.from_numpy(x[i : i + BATCH]).to(device)).float().cpu() for i in range(0, len(x), BATCH)]
    return torch.cat(out).numpy()


@contextlib.contextmanager
def attack_mode(model: torch.nn.Module) -> Iterator[None]:
    """Put every module in eval mode and freeze the parameters; restore both exactly as found.

    Only what differs is written: a model already in eval mode with frozen weights (as :class:`core.detector.
    Detector` loads it) keeps every flag as it is, so any number of threads may attack it at once. A model in
    training mode is switched and restored per call: do not attack one from two threads at once.
    """
    training = [m for m in model.modules() if m.training]
    grads = [p for p in model.parameters() if p.requires_grad]
    for m in training:
        m.training = False
    for p in grads:
        p.requires_grad_(False)  # input gradients only: no .grad side effects on the weights
    try:
        yield
    finally:
        for m in training:
            m.training = True
        for p in grads:
            p.requires_grad_(True)


#: numpy's and torch's global RNGs are one per process: an attack that draws from them holds this lock from
#: seeding to its last draw, so two users attacking at once cannot reseed each other. Attacks that draw nothing
#: (``Attack.draws_random()`` False) never take it. In the app a random attack waits for it inside its attack
#: slot and time limit, so two PGD clicks run one after the other.
GLOBAL_RNG_LOCK = threading.Lock()


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch and numpy's global RNG under :data:`GLOBAL_RNG_LOCK`; restore both afterwards."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with GLOBAL_RNG_LOCK:
        np_state = np.random.get_state()
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            np.random.seed(seed)
            try:
                yield
            finally:
                np.random.set_state(np_state)


def check_images(x: Any) -> np.ndarray:
    """Validate a batch of images and return it as C-contiguous float32 clipped to ``[0, 1]``.

    Raises
    ------
    TypeError
        Not a numpy array, or not floating point.
    ValueError
        Not 4-D, not finite, or outside ``[0, 1]`` by more than float noise.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy array of shape (N, C, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        hint = " Hint: add a batch axis with x[None]." if x.ndim == 3 else ""
        raise ValueError(f"x must have shape (N, C, H, W), got shape {x.shape}.{hint}")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"x must be float32 in [0, 1], got dtype {x.dtype}. Hint: for uint8 images use x / 255.")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.size and not np.isfinite(x).all():
        raise ValueError("x contains NaN or inf")
    if x.size and (x.min() < -_RANGE_TOL or x.max() > 1 + _RANGE_TOL):
        raise ValueError(f"x must lie in [0, 1], got values in [{x.min():.4g}, {x.max():.4g}]")
    return np.clip(x, 0.0, 1.0)


def check_target(target: Any, n: int, n_classes: int, attack: str) -> np.ndarray:
    """Validate target class ids and return them as int64, shape (n,).

    Raises
    ------
    ValueError
        Wrong shape or a class id outside ``[0, n_classes)``.
    TypeError
        Not integer.
    """
    target = np.asarray(target)
    if target.shape != (n,):
        raise ValueError(f"{attack}: target must have shape ({n},), got {target.shape}")
    if n and not np.issubdtype(target.dtype, np.integer):
        raise TypeError(f"{attack}: target must hold integer class ids, got dtype {target.dtype}")
    target = target.astype(np.int64)
    if n and (target.min() < 0 or target.max() >= n_classes):
        raise ValueError(
            f"{attack}: target class ids must lie in [0, {n_classes}), got [{target.min()}, {target.max()}]"
        )
    return target
