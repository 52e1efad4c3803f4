"""Adversarial attacks behind one signature: ``run_attack(name, model, x, target=...) -> AttackResult``.

Six attacks, registered in :data:`ATTACKS` by name:

=========  ==========  ============  ===========================================================================
name       targeted    module        what
=========  ==========  ============  ===========================================================================
fgsm       no (opt.)   art_attacks   fast gradient sign, one step of ``ifgsm`` (Goodfellow et al.)
ifgsm      yes (opt.)  art_attacks   iterative FGSM (BIM), the paper's *iter_target_class*: ``pgd`` at ``x``
pgd        yes (opt.)  art_attacks   L-inf projected gradient descent with random start (ART)
cw         yes (opt.)  cw            Carlini & Wagner L2, in torch
deepfool   no          art_attacks   DeepFool (ART); ``target`` is ignored
lbfgs      yes         lbfgs         box-constrained L-BFGS of the paper's eq. (1), with SciPy's L-BFGS-B
=========  ==========  ============  ===========================================================================

Layout, as foolbox 3: :mod:`.base` (the :class:`Attack` base, :class:`Param`, :class:`AttackResult`, the
registry), :mod:`.utils` (the uint8 quantisers and shared helpers), one module per family. ``targeted=`` picks
the mode of an attack marked "(opt.)" (default: the first word). Parameters are keyword-only, checked against
:func:`param_spec` (unknown names raise ``TypeError``, out-of-range values ``ValueError``), and echoed back,
defaults filled in, in :attr:`AttackResult.params`.

``model`` takes float32 images ``(N, C, H, W)`` in ``[0, 1]`` and returns logits; any normalisation lives
inside it. ART and SciPy are imported lazily, inside the attacks that use them.

Examples
--------
>>> res = run_attack("pgd", model, x, target=t, eps=8 / 255)      # doctest: +SKIP
>>> stored = to_uint8(res.x_adv[res.success])  # uint8 (n, H, W, C), as scored  # doctest: +SKIP
"""
from __future__ import annotations

from .adaptive import AdaptiveL2, AdaptiveLinf
from .art_attacks import FGSM, IFGSM, PGD, DeepFool
from .base import (
    ATTACKS,
    Attack,
    AttackResult,
    Param,
    available,
    param_spec,
    register,
    run_attack,
)
from .cw import CarliniL2
from .lbfgs import LBFGS
from .surrogate import KnnSurrogate
from .utils import quantise, quantise_within, to_uint8

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackResult",
    "Param",
    "available",
    "param_spec",
    "register",
    "run_attack",
    "quantise",
    "quantise_within",
    "to_uint8",
    "FGSM",
    "IFGSM",
    "PGD",
    "CarliniL2",
    "DeepFool",
    "LBFGS",
    "AdaptiveLinf",
    "AdaptiveL2",
    "KnnSurrogate",
]

register(FGSM, IFGSM, PGD, CarliniL2, DeepFool, LBFGS)
