"""Pinned figures of ``core.attacks``: registry, parameter specs and outputs on a fixed tiny model (bit-exact for the
sign-gradient attacks, to the pixel level for the optimising ones, whose last float bits follow the CPU's kernels).

The literals below were recorded from the single-module ``core/attacks.py`` (commit 01970b9) before it became a
package, and re-recorded where an attack changed on purpose (see the git log); they pin behaviour across refactors. A deliberate change of an attack changes them: re-record with the
printout of a failing ``test_output_is_bit_identical`` or ``test_output_pixels_are_pinned`` and say why in the
commit. Checked on other kernels with ``ATEN_CPU_CAPABILITY=default`` and ``MKL_CBWR=COMPATIBLE``.

Run: ``.venv/bin/python -m pytest tests/core/attacks/test_pinned.py -q`` (about 15 s, most of it ``import art``).
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch import nn

from core.attacks import ATTACKS, available, param_spec, quantise, run_attack, to_uint8
from core.data.datasets import to_float

_LINF_EPS = {"default": 0.1, "type": "float", "min": 0.001, "max": 1.0,
             "help": "L-inf budget: max |x_adv - x| per pixel (in [0, 1] units)"}
_STEP = {"default": 0.01, "type": "float", "min": 0.0001, "max": 1.0,
         "help": "step size per iteration (in [0, 1] units)"}

#: name -> (title, targeted, draws_random() at defaults, param_spec(name)), as recorded from the old module.
REGISTRY = {
    "fgsm": ("FGSM", False, False, {"eps": _LINF_EPS}),
    "ifgsm": ("Iterative targeted FGSM", True, False, {
        "eps": _LINF_EPS,
        "step": _STEP,
        "steps": {"default": 20, "type": "int", "min": 1, "max": 200, "help": "number of iterations"},
    }),
    "pgd": ("PGD (L-inf)", True, True, {
        "eps": _LINF_EPS,
        "step": _STEP,
        "steps": {"default": 40, "type": "int", "min": 1, "max": 200, "help": "number of iterations per start"},
        "random_starts": {"default": 1, "type": "int", "min": 0, "max": 10,
                          "help": "random starts in the eps ball (0: start at x, i.e. IFGSM)"},
    }),
    "cw": ("Carlini-Wagner L2", True, False, {
        "confidence": {"default": 0.0, "type": "float", "min": 0.0, "max": 50.0,
                       "help": "logit margin required over the runner-up class"},
        "learning_rate": {"default": 0.1, "type": "float", "min": 0.0001, "max": 1.0,
                          "help": "Adam step size (in tanh space)"},
        "max_iter": {"default": 100, "type": "int", "min": 1, "max": 1000,
                     "help": "Adam steps per binary-search round"},
        "binary_search_steps": {"default": 3, "type": "int", "min": 1, "max": 20,
                                "help": "rounds of the binary search over c"},
        "initial_const": {"default": 1.0, "type": "float", "min": 0.001, "max": 1000.0,
                          "help": "first value of the trade-off constant c (log scale)"},
    }),
    "deepfool": ("DeepFool", False, False, {
        "max_iter": {"default": 50, "type": "int", "min": 1, "max": 500, "help": "maximum linearisation steps"},
        "overshoot": {"default": 0.05, "type": "float", "min": 0.0, "max": 1.0,
                      "help": "relative overshoot past the boundary"},
        "candidates": {"default": 10, "type": "int", "min": 2, "max": 1000,
                       "help": "most likely classes considered (capped at the class count)"},
    }),
    "lbfgs": ("L-BFGS (box-constrained)", True, False, {
        "c_start": {"default": 3.0, "type": "float", "min": 1.0, "max": 1000.0,
                    "help": "first C of the grid, in units of C\u2080 = 1/||\u2207CE(x)||"},
        "c_factor": {"default": 4.0, "type": "float", "min": 1.5, "max": 100.0,
                     "help": "ratio between successive grid values of C"},
        "grid_steps": {"default": 4, "type": "int", "min": 1, "max": 12, "help": "grid values of C tried at most"},
        "binary_steps": {"default": 3, "type": "int", "min": 0, "max": 20,
                         "help": "bisections of C (log scale) after the grid"},
        "max_iter": {"default": 20, "type": "int", "min": 1, "max": 1000, "help": "L-BFGS-B iterations per solve"},
    }),
}

#: sha256 of x_adv, predicted and success bytes for each sign-gradient attack at its defaults, seed 3, on
#: ``_tiny()``: x ± steps of eps or step, clipped, element by element, so no float reduction reaches the output
#: but the gradient's sign, and the bytes are the same whatever CPU kernels compute the gradient.
SHA256 = {
    "fgsm": "eabc938ed86e971e6b578f9f5990cb67b4fc3b565e1781e1ea71b63be6905a57",
    "ifgsm": "7b9546ed989bcaa0e9f3f80bd1376c5716c32b6dc56fc9d2925aac5e1dae8059",
    "pgd": "329c5e7c5d20ff358cf72f27c878334baf4e94331a432aca8964b8d8697547fd",
}
#: ``to_uint8(x_adv)`` (6, 4, 4, 1) as hex for the optimising attacks, same runs. Their float32 outputs carry norms,
#: sums and L-BFGS-B's iterations, whose last bits follow the CPU's kernels (AVX2 or AVX-512 summation order), so a
#: sha256 of those floats held on one kind of CPU only; the pixels they round to stay within a level.
UINT8 = {
    "cw": "82f32df16c6fe66ea41acd8255ce50822c6a3846c7496ef4fdb68c3629f5910ca4cb97e5138c7209a7dc9133d47c82b420ca8fb72d"
          "e2300ed7e3d27d4400929bc74144a8d2ef3a87e577a415adeccffba335c9499a07c12f3536a23e670b556a",
    "deepfool": "83f015e7607dda649912c08753c6446b22673443bf487cfaf5b98a4729f7831da6cc97e5138d6f0bacdc9239d97e85b426d0"
                "aeca28ca2e14d2d8df7c4603a8b7c94549a7d6ed3888e778a312a9ecd2ffa139a830c91bd426554dab2f67002f54",
    "lbfgs": "83f430ef6f6fe26fa51ecd8653c74e892d6f323fc34b6ff4fab8843e2df48e13a6cb96e5108e6f0caadb913ad97f84b31acc91b7"
             "2ae03c14cfe2d58544008ba4c64243a9d2ee3a86e377a415aaeeceffa434cd4d9a03bf2e3637a341690d5a71",
}
#: success mask of the same runs (shown on failure, so a changed hash says whether the figures moved).
SUCCESS = {"fgsm": [1] * 6, "ifgsm": [1, 1, 1, 1, 1, 0], "pgd": [1, 1, 1, 1, 1, 0],
           "cw": [1] * 6, "deepfool": [1] * 6, "lbfgs": [1] * 6}


def _tiny() -> tuple[nn.Module, np.ndarray, np.ndarray]:
    """A fixed 16-12-4 MLP (weights from numpy's seeded generator), six 1×4×4 images and their targets."""
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.from_numpy(rng.normal(0, 1.0, size=tuple(p.shape)).astype(np.float32)))
        model[1].bias.copy_(-0.5 * model[1].weight.sum(1))  # centre the inputs: predictions vary
    x = np.random.default_rng(1).uniform(0, 1, size=(6, 1, 4, 4)).astype(np.float32)
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    target = ((pred + np.arange(6) % 3 + 1) % 4).astype(np.int64)
    return model.eval(), x, target


def test_registry_is_pinned():
    assert available() == list(REGISTRY)
    for name, (title, targeted, random, spec) in REGISTRY.items():
        cls = ATTACKS[name]
        assert (cls.name, cls.title, cls.targeted, cls().draws_random()) == (name, title, targeted, random), name
        assert param_spec(name) == spec, name


@pytest.mark.parametrize("name", list(SHA256))
def test_output_is_bit_identical(name):
    torch.set_num_threads(1)
    model, x, target = _tiny()
    r = run_attack(name, model, x, target=target, seed=3)
    digest = hashlib.sha256(r.x_adv.tobytes() + r.predicted.tobytes() + r.success.tobytes()).hexdigest()
    assert (digest, r.success.astype(int).tolist()) == (SHA256[name], SUCCESS[name])


@pytest.mark.parametrize("name", list(UINT8))
def test_output_pixels_are_pinned(name):
    """Every pixel within one level of the recorded one, at most 1 in 10 off by that level, success the same: a
    deliberate change of an attack moves many pixels by more (re-record from the failure's printout)."""
    torch.set_num_threads(1)
    model, x, target = _tiny()
    r = run_attack(name, model, x, target=target, seed=3)
    got = to_uint8(r.x_adv).astype(int)
    want = np.frombuffer(bytes.fromhex(UINT8[name]), np.uint8).reshape(got.shape).astype(int)
    off = np.abs(got - want)
    printout = (bytes(to_uint8(r.x_adv).ravel()).hex(), r.success.astype(int).tolist())
    assert r.success.astype(int).tolist() == SUCCESS[name], printout
    assert off.max() <= 1 and (off > 0).mean() <= 0.1, printout


def _hard_pixels() -> np.ndarray:
    """float32 (N, 3, 4, 5) in [0, 1]: every k/255, every tie (k + 0.5)/255, their float32 neighbours, noise."""
    k = np.arange(256, dtype=np.float64)
    v = np.concatenate([k / 255, (k[:-1] + 0.5) / 255]).astype(np.float32)
    v = np.concatenate([v, np.nextafter(v, np.float32(0)), np.nextafter(v, np.float32(1))])
    v = np.concatenate([v, np.random.default_rng(0).uniform(0, 1, 60 * 40).astype(np.float32)])
    v = np.clip(v, 0, 1)
    return np.resize(v, (-(-len(v) // 60), 3, 4, 5))


def test_one_quantiser_matches_the_three_old_roundings():
    """``to_uint8`` / ``quantise`` reproduce, bit for bit, the roundings they replace (old code inlined here)."""
    x = _hard_pixels()
    old_quantise = (np.clip(np.rint(np.asarray(x, dtype=np.float32) * 255.0), 0, 255) / 255.0).astype(np.float32)
    old_stages = np.clip(np.rint(np.asarray(x) * 255), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1).copy()
    stored = to_uint8(x)
    assert stored.dtype == np.uint8 and stored.flags.c_contiguous
    np.testing.assert_array_equal(stored, old_stages)
    for i in range(len(x)):  # app_pages/attack.py showed one image at a time
        old_live = np.round(x[i].transpose(1, 2, 0) * 255).astype(np.uint8)
        np.testing.assert_array_equal(to_uint8(x[i : i + 1])[0], old_live)
    assert quantise(x).tobytes() == old_quantise.tobytes()
    assert to_float(stored).tobytes() == quantise(x).tobytes()  # what is stored is what was scored
