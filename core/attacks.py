"""Adversarial attacks behind one signature: ``run_attack(name, model, x, target=...) -> AttackResult``.

Six attacks, registered in :data:`ATTACKS` by name:

=========  ========  ==========================================================================
name       targeted  what
=========  ========  ==========================================================================
fgsm       yes       fast gradient sign, one step of ``ifgsm`` (Goodfellow et al.)
ifgsm      yes       iterative targeted FGSM (BIM), the paper's *iter_target_class*: ``pgd`` started at ``x``
pgd        yes       L-inf projected gradient descent with random start (ART ``ProjectedGradientDescent``)
cw         yes       Carlini & Wagner L2, written here in torch (ART's was weak and slow, see ``CarliniL2``)
deepfool   no        DeepFool (ART ``DeepFool``); ``target`` is ignored
lbfgs      yes       box-constrained L-BFGS of the paper's eq. (1), written here with SciPy's L-BFGS-B
=========  ========  ==========================================================================

The class ladder follows foolbox 3: :class:`Attack` owns one final ``__call__`` that does the shared
bookkeeping once (input checks, ``eval()`` and its undoing, seeding, clipping to the box, quantisation to
uint8 and the success mask); a subclass writes only ``run(model, x, target) -> x_adv``. Parameters are
keyword-only, checked against :func:`param_spec` (unknown names raise ``TypeError``, out-of-range values
``ValueError``), and echoed back, defaults filled in, in :attr:`AttackResult.params`.

``model`` takes float32 images ``(N, C, H, W)`` in ``[0, 1]`` and returns logits; any normalisation lives
inside it. ART is imported lazily, inside the attacks that use it (``import art`` costs about 4 s).

Example
-------
>>> res = run_attack("pgd", model, x, target=t, eps=8 / 255)      # doctest: +SKIP
>>> keep = res.success                                              # doctest: +SKIP
>>> stored = np.round(res.x_adv[keep] * 255).astype(np.uint8)      # scored exactly as res.predicted  # doctest: +SKIP
"""
from __future__ import annotations

import abc
import contextlib
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, final

import numpy as np
import torch

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackResult",
    "available",
    "param_spec",
    "run_attack",
    "quantise",
    "FGSM",
    "IFGSM",
    "PGD",
    "CarliniL2",
    "DeepFool",
    "LBFGS",
]

log = logging.getLogger(__name__)

_BATCH = 128  # images per forward pass / per ART batch
_RANGE_TOL = 1e-6  # inputs may exceed [0, 1] by this much (float noise); they are clipped


# --------------------------------------------------------------------------------------------------------------
# Result and parameter specification
# --------------------------------------------------------------------------------------------------------------
@dataclass
class AttackResult:
    """What an attack returns.

    Attributes
    ----------
    x_adv : ndarray of float32, shape (N, C, H, W)
        Adversarial images in ``[0, 1]``, not quantised (so an L-inf budget holds exactly). A failed attack
        may return the input image or its last try; see ``success``.
    predicted : ndarray of int64, shape (N,)
        The model's prediction on ``quantise(x_adv)``, i.e. on ``round(x_adv * 255) / 255``: the image a caller
        stores as uint8 is the image that was scored.
    success : ndarray of bool, shape (N,)
        Targeted attacks: ``predicted == target``. Untargeted: ``predicted != model(x).argmax(1)``.
    targeted : bool
        Whether the attack aimed at ``target``.
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
class _Param:
    """One attack parameter: its default, kind and closed range, and a line for a UI."""

    default: float | int
    type: str  # "float" | "int"
    min: float | int
    max: float | int
    help: str

    def as_dict(self) -> dict:
        return {"default": self.default, "type": self.type, "min": self.min, "max": self.max, "help": self.help}

    def check(self, name: str, attack: str, value: Any) -> float | int:
        """Return ``value`` as a plain Python number, or raise ``TypeError`` / ``ValueError``."""
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


# --------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------
def quantise(x: np.ndarray) -> np.ndarray:
    """Round images in ``[0, 1]`` to the uint8 grid and back: ``round(x * 255) / 255`` as float32.

    Parameters
    ----------
    x : ndarray of float, shape (N, C, H, W)

    Returns
    -------
    ndarray of float32, shape (N, C, H, W)
        Values ``k / 255`` with integer ``k`` in ``[0, 255]``.
    """
    return (np.clip(np.rint(np.asarray(x, dtype=np.float32) * 255.0), 0, 255) / 255.0).astype(np.float32)


def _device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    if p is None:
        p = next(model.buffers(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def _logits(model: torch.nn.Module, x: np.ndarray, device: torch.device) -> np.ndarray:
    """Logits of float32 images, shape (N, C, H, W) -> (N, n_classes), in batches of ``_BATCH``."""
    out = [model(torch.from_numpy(x[i : i + _BATCH]).to(device)).float().cpu() for i in range(0, len(x), _BATCH)]
    return torch.cat(out).numpy()


@contextlib.contextmanager
def _attack_mode(model: torch.nn.Module) -> Iterator[None]:
    """Put every module in eval mode and freeze the parameters; restore both exactly as found.

    Only what differs is written: a model already in eval mode with frozen weights (as :class:`core.detector.
    Detector` loads it) keeps every flag as it is (ART re-sets eval mode, the same value), so any number of
    threads may attack it at once. A model in training mode is switched and restored per call: do not attack
    one from two threads at once.
    """
    training = [m for m in model.modules() if m.training]
    grads = [p for p in model.parameters() if p.requires_grad]
    for m in training:
        m.training = False
    for p in grads:
        p.requires_grad_(False)  # input gradients only: no .grad side effects on the weights, and faster
    try:
        yield
    finally:
        for m in training:
            m.training = True
        for p in grads:
            p.requires_grad_(True)


#: numpy's and torch's global RNGs are one per process: an attack that draws from them holds this lock from
#: seeding to its last draw, so two users attacking at once cannot reseed each other (seed 0 gives the same
#: images whatever else runs). Attacks that draw nothing (:meth:`Attack.draws_random` False) never take it. In the
#: app a random attack waits for it inside its attack slot and time limit, so two PGD clicks run one after the other.
_GLOBAL_RNG_LOCK = threading.Lock()


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch and numpy's global RNG (ART draws PGD's random start from it) under
    :data:`_GLOBAL_RNG_LOCK`; restore both afterwards."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with _GLOBAL_RNG_LOCK:
        np_state = np.random.get_state()
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            np.random.seed(seed)
            try:
                yield
            finally:
                np.random.set_state(np_state)


def _check_images(x: Any) -> np.ndarray:
    """Validate a batch of images and return it as C-contiguous float32 clipped to ``[0, 1]``."""
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


def _check_target(target: Any, n: int, n_classes: int, attack: str) -> np.ndarray:
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


# --------------------------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------------------------
class Attack(abc.ABC):
    """Base of every attack: validated keyword-only parameters and one final ``__call__``.

    Subclasses set ``name``, ``title``, ``targeted`` and ``spec`` and implement :meth:`run`.

    Parameters
    ----------
    **params
        The attack's parameters (see ``spec`` / :func:`param_spec`); missing ones take their defaults.

    Raises
    ------
    TypeError
        For an unknown parameter name (the message lists the valid ones) or a value of the wrong type.
    ValueError
        For a value outside its range.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    targeted: ClassVar[bool]
    spec: ClassVar[dict[str, _Param]]

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.spec))
        if unknown:
            raise TypeError(
                f"{self.name}: unknown parameter(s) {unknown}; valid parameters are {sorted(self.spec)}"
            )
        self.params: dict[str, float | int] = {
            k: p.check(k, self.name, params.get(k, p.default)) for k, p in self.spec.items()
        }

    def draws_random(self) -> bool:
        """Whether :meth:`run` draws from numpy's or torch's global RNG with these parameters.

        True (the safe default for subclasses) seeds both with ``seed`` and serialises the run with every other
        random attack of the process; deterministic attacks return False and run concurrently, unseeded.
        """
        return True

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
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
        """
        t0 = time.perf_counter()
        x = _check_images(x)
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
        device = _device(model)
        with _attack_mode(model):
            if n == 0:
                empty = np.zeros(0, dtype=np.int64)
                return AttackResult(x.copy(), empty, np.zeros(0, dtype=bool), self.targeted, params)
            logits = _logits(model, x, device)
            original, n_classes = logits.argmax(1).astype(np.int64), logits.shape[1]
            if target is not None:
                target = _check_target(target, n, n_classes, self.name)
                if (same := int((target == original).sum())):
                    log.warning("%s: %d of %d targets equal the prediction on x (trivial success)", self.name, same, n)
            with _seeded(seed, device) if self.draws_random() else contextlib.nullcontext():
                x_adv = self.run(model, x, target, progress=progress)
            x_adv = np.asarray(x_adv, dtype=np.float32)
            if x_adv.shape != x.shape:
                raise RuntimeError(f"{self.name}: run() returned shape {x_adv.shape}, expected {x.shape}")
            x_adv = np.clip(np.nan_to_num(x_adv, nan=0.0), 0.0, 1.0)
            predicted = _logits(model, quantise(x_adv), device).argmax(1).astype(np.int64)
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
# ART-backed attacks
# --------------------------------------------------------------------------------------------------------------
def _art_classifier(model: torch.nn.Module, x: np.ndarray) -> Any:
    """Wrap ``model`` in ART's ``PyTorchClassifier`` (box [0, 1], cross-entropy, on the model's device)."""
    from art.estimators.classification import PyTorchClassifier  # lazy: ~4 s

    device = _device(model)
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
    device = _device(model)
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _one_hot(target: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes, dtype=np.float32)[target]


class PGD(Attack):
    """Targeted L-inf projected gradient descent with random start (Madry et al.; ART).

    ``steps`` steps of size ``step`` down the cross-entropy of the target class (sign of the gradient),
    each followed by projection onto the ``eps`` ball around ``x`` and the box ``[0, 1]``, starting from a
    uniform random point of the ball (drawn from numpy's global RNG, seeded by the base class). With
    ``random_starts > 1`` it restarts and keeps, per image, the last successful run.
    """

    name = "pgd"
    title = "PGD (L-inf)"
    targeted = True
    spec = {
        "eps": _Param(0.1, "float", 0.001, 1.0, "L-inf budget: max |x_adv - x| per pixel (in [0, 1] units)"),
        "step": _Param(0.01, "float", 0.0001, 1.0, "step size per iteration (in [0, 1] units)"),
        "steps": _Param(40, "int", 1, 200, "number of iterations per start"),
        "random_starts": _Param(1, "int", 0, 10, "random starts in the eps ball (0: start at x, i.e. IFGSM)"),
    }

    def _schedule(self) -> dict[str, float | int]:
        """(eps, step, steps, random_starts) handed to ART's PGD; subclasses fix some of them."""
        return dict(self.params)

    def draws_random(self) -> bool:
        return self._schedule()["random_starts"] > 0

    def run(self, model, x, target, *, progress=False):
        from art.attacks.evasion import ProjectedGradientDescent

        clf = _art_classifier(model, x)
        p = self._schedule()
        with _cuda_context(model):
            attack = ProjectedGradientDescent(
                clf, norm=np.inf, eps=p["eps"], eps_step=p["step"], max_iter=p["steps"], targeted=True,
                num_random_init=p["random_starts"], batch_size=_BATCH, verbose=progress,
            )
            return attack.generate(x, y=_one_hot(target, clf.nb_classes))


class IFGSM(PGD):
    """Iterative targeted FGSM (BIM; the paper's *iter_target_class*): :class:`PGD` started at ``x``.

    ART's ``BasicIterativeMethod`` is exactly ART's PGD with ``num_random_init=0``; its numpy implementation
    ran about 6x slower per step than the PyTorch PGD on our CPU, so the PyTorch one is used. The paper used
    20 steps of 1/255 clipped to ±16/255 on ImageNet; the defaults are sized for 28×28 Fashion-MNIST.
    """

    name = "ifgsm"
    title = "Iterative targeted FGSM"
    targeted = True
    spec = {
        "eps": PGD.spec["eps"],
        "step": PGD.spec["step"],
        "steps": _Param(20, "int", 1, 200, "number of iterations"),
    }

    def _schedule(self) -> dict[str, float | int]:
        return {**self.params, "random_starts": 0}


class FGSM(IFGSM):
    """Targeted fast gradient sign: one step of :class:`IFGSM` of size ``eps``.

    ``x_adv = clip(x - eps * sign(grad_x CE(model(x), target)), 0, 1)``. A single targeted step reaches the
    target class only some of the time (about 20 % on Fashion-MNIST); failures are flagged in ``success``.
    """

    name = "fgsm"
    title = "FGSM"
    targeted = True
    spec = {"eps": PGD.spec["eps"]}

    def _schedule(self) -> dict[str, float | int]:
        eps = self.params["eps"]
        return {"eps": eps, "step": eps, "steps": 1, "random_starts": 0}


class CarliniL2(Attack):
    """Targeted Carlini & Wagner L2 attack, written in torch (Carlini & Wagner 2017, as in foolbox 3).

    Per image, in ``tanh`` space (``x' = (tanh(w) + 1) / 2`` stays in the box)::

        minimise_w   ||x' − x||₂² + c · max(max_{i≠t} Z(x')_i − Z(x')_t + confidence, 0)

    with Adam (``learning_rate``) for ``max_iter`` steps, then a binary search over ``c`` per image
    (``binary_search_steps`` rounds, starting at ``initial_const``; ×10 while no success). Each iterate is
    scored rounded to uint8, as the base class scores it, and the smallest-L2 success is kept; where none
    succeeds the input image is returned.

    Not ART's ``CarliniL2Method``: measured on a Fashion-MNIST CNN (84 % accuracy, 20 images, 60 steps in
    all), ART's version succeeded on 0 % at its default ``initial_const=0.01`` and, tuned to 90 %, found
    perturbations (L2 ≈ 3.9) larger than FGSM's, at ≈ 1.5 s per image: its step is plain gradient descent with
    a halving/doubling line search (up to 10 extra forwards per step) and its binary search aliases
    ``c_old = c_current`` (ART 1.20.1, ``carlini.py``), so the lower bound moves with the doubling.
    """

    name = "cw"
    title = "Carlini-Wagner L2"
    targeted = True
    spec = {
        "confidence": _Param(0.0, "float", 0.0, 50.0, "logit margin required over the runner-up class"),
        "learning_rate": _Param(0.1, "float", 0.0001, 1.0, "Adam step size (in tanh space)"),
        "max_iter": _Param(100, "int", 1, 1000, "Adam steps per binary-search round"),
        "binary_search_steps": _Param(3, "int", 1, 20, "rounds of the binary search over c"),
        "initial_const": _Param(1.0, "float", 0.001, 1000.0, "first value of the trade-off constant c (log scale)"),
    }

    def draws_random(self) -> bool:
        return False  # no random draw: deterministic given model and x

    def run(self, model, x, target, *, progress=False):
        from tqdm.auto import tqdm

        device = _device(model)
        out = x.copy()
        p = self.params
        rounds = p["binary_search_steps"]
        with tqdm(total=rounds * math.ceil(len(x) / _BATCH), desc="C&W L2", disable=not progress) as bar:
            for s in range(0, len(x), _BATCH):
                out[s : s + _BATCH] = self._batch(model, x[s : s + _BATCH], target[s : s + _BATCH], device, bar)
        return out

    def _batch(self, model, x: np.ndarray, target: np.ndarray, device: torch.device, bar: Any) -> np.ndarray:
        """Attack one batch; shapes (B, C, H, W) and (B,) -> (B, C, H, W)."""
        p = self.params
        n = len(x)
        xt = torch.from_numpy(x).to(device)
        tt = torch.from_numpy(target).to(device)
        w0 = torch.atanh((2 * xt - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        c = torch.full((n,), p["initial_const"], device=device)
        lo = torch.zeros(n, device=device)
        hi = torch.full((n,), math.inf, device=device)
        best = xt.clone()
        best_l2 = torch.full((n,), math.inf, device=device)

        def margin(logits: torch.Tensor) -> torch.Tensor:
            """max_{i≠t} Z_i − Z_t, shape (B,)."""
            z_t = logits.gather(1, tt[:, None])[:, 0]
            other = logits.scatter(1, tt[:, None], -math.inf).amax(1)
            return other - z_t

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
                    ok = (margin(logits_q) + p["confidence"] <= 0) & (logits_q.argmax(1) == tt)
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


class DeepFool(Attack):
    """Untargeted DeepFool (Moosavi-Dezfooli et al.; ART ``DeepFool``).

    Linearises the classifier and steps to the nearest decision boundary among the ``candidates`` most
    likely classes, repeatedly; the final perturbation is scaled by ``1 + overshoot``. The boundary is
    reached only just, so rounding to uint8 can undo it: rounding noise has an L2 norm of about
    ``0.3/255 · sqrt(C·H·W)`` (≈ 0.03 at 28×28), some 4 % of a typical DeepFool perturbation there (≈ 0.85), so
    the default overshoot is 0.05 rather than the usual 0.02 (on Fashion-MNIST: 98 % vs 96 % success after
    rounding, both 100 % before, at 1 % more L2).
    """

    name = "deepfool"
    title = "DeepFool"
    targeted = False
    spec = {
        "max_iter": _Param(50, "int", 1, 500, "maximum linearisation steps"),
        "overshoot": _Param(0.05, "float", 0.0, 1.0, "relative overshoot past the boundary"),
        "candidates": _Param(10, "int", 2, 1000, "most likely classes considered (capped at the class count)"),
    }

    def draws_random(self) -> bool:
        return False  # no random draw: deterministic given model and x

    def run(self, model, x, target, *, progress=False):
        from art.attacks.evasion import DeepFool as ArtDeepFool

        clf = _art_classifier(model, x)
        p = self.params
        with _cuda_context(model):
            attack = ArtDeepFool(
                clf, max_iter=p["max_iter"], epsilon=p["overshoot"],
                nb_grads=min(p["candidates"], clf.nb_classes), batch_size=_BATCH, verbose=progress,
            )
            return attack.generate(x)


# --------------------------------------------------------------------------------------------------------------
# Box-constrained L-BFGS (written here: ART has none)
# --------------------------------------------------------------------------------------------------------------
class LBFGS(Attack):
    """Box-constrained L-BFGS, the paper's eq. (1) (Szegedy et al. 2014; Tabacof & Valle 2016).

    Per image, with a constant ``C > 0`` and the target class ``t``::

        minimise_η   ||η||₂ + C · CE(model(x + η), t)     subject to  0 <= x + η <= 1

    This is the paper's form (plain L2 norm, ``C`` on the loss: a larger ``C`` pushes harder towards ``t``
    and gives a larger ``η``), solved with ``scipy.optimize.minimize(method="L-BFGS-B", jac=True)`` on
    float64 copies of torch's gradients; the box is the solver's bound constraint.

    ``C`` is chosen per image, first by a coarse grid raised until the attack succeeds, then by
    ``binary_steps`` bisections (in log C) between the largest failing and the smallest succeeding value,
    looking for the smallest ``C`` that still succeeds; every solve starts from ``η = 0``. The grid is
    scale-free: ``C`` is counted in units of ``C₀ = 1 / ||∇ₓ CE(model(x), t)||₂``, the value below which
    ``η = 0`` is a stationary point of the objective (the gradient of ``C · CE`` cannot beat the unit-norm
    (sub)gradient of ``||η||``), so no ``C <= C₀`` moves the image; the grid is ``C₀ · c_start · c_factor^k``
    for ``k < grid_steps``. (On a Fashion-MNIST CNN, success began at about 3 C₀ and was near-certain by
    5 C₀; a fixed grid such as 10^-2 … 10^3 wastes solves below C₀ and its scale depends on the model.)
    Success is judged on the image rounded to uint8, as the base class scores it; the smallest-norm
    success is kept. An image that never succeeds returns its try at the largest ``C``.

    The objective is a sum of independent per-image terms, so the images of a batch are optimised together
    (one L-BFGS-B call over the concatenation of their ``η``, each term with its own ``C``): the minimiser
    is the per-image one, at a fraction of the per-call overhead (measured: 6x faster for 20 images).
    Warm-starting the bisection from the best success so far was tried: no smaller norms, no fewer evaluations.
    """

    name = "lbfgs"
    title = "L-BFGS (box-constrained)"
    targeted = True
    spec = {
        "c_start": _Param(3.0, "float", 1.0, 1000.0, "first C of the grid, in units of C₀ = 1/||∇CE(x)||"),
        "c_factor": _Param(4.0, "float", 1.5, 100.0, "ratio between successive grid values of C"),
        "grid_steps": _Param(4, "int", 1, 12, "grid values of C tried at most"),
        "binary_steps": _Param(3, "int", 0, 20, "bisections of C (log scale) after the grid"),
        "max_iter": _Param(20, "int", 1, 1000, "L-BFGS-B iterations per solve"),
    }
    _chunk: ClassVar[int] = 256  # images solved jointly at most

    def draws_random(self) -> bool:
        return False  # no random draw: deterministic given model and x

    def run(self, model, x, target, *, progress=False):
        from tqdm.auto import tqdm

        p = self.params
        n = len(x)
        device = _device(model)
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
                ok[sl] = _logits(model, quantise(adv), device).argmax(1) == target[i]
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
        for s in range(0, len(x), _BATCH):
            xt = torch.from_numpy(x[s : s + _BATCH]).to(device).requires_grad_(True)
            with torch.enable_grad():
                ce = torch.nn.functional.cross_entropy(
                    model(xt), torch.from_numpy(target[s : s + _BATCH]).to(device), reduction="sum"
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
    """Limit BLAS to one thread around L-BFGS-B.

    Its BLAS calls are level-1/2 on vectors of ~1e4-1e5 entries, too small to gain from threads; on a busy
    2-core machine OpenBLAS's two spinning threads made the whole attack 3-4x slower (233 vs 924 ms/image on
    Fashion-MNIST). ``threadpoolctl`` comes with scikit-learn; without it this is a no-op.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------
ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (FGSM, IFGSM, PGD, CarliniL2, DeepFool, LBFGS)}


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
        Attack parameters, see :func:`param_spec`.

    Returns
    -------
    AttackResult

    Raises
    ------
    ValueError
        Unknown attack, bad input, out-of-range parameter, or a targeted attack without ``target``.
    TypeError
        Unknown parameter name or wrong parameter type.
    """
    return _lookup(name)(**params)(model, x, target=target, seed=seed, progress=progress)
