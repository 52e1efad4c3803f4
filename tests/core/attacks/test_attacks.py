"""Tests for ``core.attacks`` on a tiny CNN trained in seconds on synthetic, separable 1×12×12 images.

Run: ``.venv/bin/python -m pytest tests/core/attacks/test_attacks.py -q`` (about 20-30 s on 2 busy cores, most of it
``import art`` and the attacks; one torch thread).
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from core import attacks
from core.attacks import (
    ATTACKS,
    AttackResult,
    available,
    param_spec,
    quantise,
    run_attack,
)

N_CLASSES = 10
SHAPE = (1, 12, 12)
N_ATTACK = 16  # images attacked per attack
LINF = {"fgsm", "ifgsm", "pgd"}
FAST = {"cw": {"max_iter": 40, "binary_search_steps": 2}}  # keeps the file fast; other attacks run at defaults


def _make_data(n_per_class: int, rng: np.random.Generator, protos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images = class prototype + noise, clipped to [0, 1]; float32 (N, 1, 12, 12) and int64 (N,)."""
    y = np.repeat(np.arange(N_CLASSES), n_per_class)
    x = protos[y] + rng.normal(0.0, 0.12, size=(len(y), *SHAPE))
    return np.clip(x, 0, 1).astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="session")
def setup():
    """A trained tiny CNN (> 90 % test accuracy), test images it classifies right, and random wrong targets."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    protos = rng.uniform(0.2, 0.8, size=(N_CLASSES, *SHAPE))
    x_train, y_train = _make_data(40, rng, protos)
    x_test, y_test = _make_data(5, rng, protos)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 3 * 3, N_CLASSES),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(8):
        for idx in torch.randperm(len(xt)).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x_test)).argmax(1).numpy()
    acc = (pred == y_test).mean()
    assert acc > 0.9, f"tiny model too weak: {acc:.2f}"
    keep = np.flatnonzero(pred == y_test)[:N_ATTACK]
    x, y = x_test[keep], y_test[keep]
    target = (y + rng.integers(1, N_CLASSES, size=len(y))) % N_CLASSES
    return model, x, y, target.astype(np.int64)


@pytest.fixture(scope="session")
def results(setup):
    """Every attack run once with its defaults (shared by the tests below)."""
    model, x, _, target = setup
    return {name: run_attack(name, model, x, target=target, **FAST.get(name, {})) for name in available()}


def _predict(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).argmax(1).numpy()


# ----------------------------------------------------------------------------------------------------------
# Registry and parameter specs
# ----------------------------------------------------------------------------------------------------------
def test_registry():
    assert available() == ["fgsm", "ifgsm", "pgd", "cw", "deepfool", "lbfgs"]
    assert list(ATTACKS) == available()
    assert {n for n in available() if ATTACKS[n].targeted} == {"ifgsm", "pgd", "cw", "lbfgs"}  # FGSM: untargeted


@pytest.mark.parametrize("name", available())
def test_param_spec_is_well_formed(name):
    spec = param_spec(name)
    assert spec, name
    for key, p in spec.items():
        assert set(p) == {"default", "type", "min", "max", "help"}, key
        assert p["type"] in ("float", "int")
        assert p["min"] <= p["default"] <= p["max"]
        if p["type"] == "int":
            assert all(isinstance(p[k], int) for k in ("default", "min", "max"))
        assert p["help"]
    json.dumps(spec)
    spec[next(iter(spec))]["default"] = -1  # a copy: mutating it changes nothing
    assert param_spec(name) != spec


def test_unknown_attack():
    with pytest.raises(ValueError, match="available"):
        param_spec("nope")


def test_unknown_param_is_type_error(setup):
    model, x, _, target = setup
    with pytest.raises(TypeError, match=r"valid parameters are \['eps', 'random_starts', 'step', 'steps'\]"):
        run_attack("pgd", model, x, target=target, epsilon=0.1)


@pytest.mark.parametrize(
    ("name", "params"),
    [("fgsm", {"eps": 2.0}), ("pgd", {"steps": 0}), ("cw", {"max_iter": 10**6}), ("lbfgs", {"c_factor": 1.0}),
     ("deepfool", {"overshoot": -0.1}), ("ifgsm", {"step": float("nan")})],
)
def test_out_of_range_is_value_error(setup, name, params):
    model, x, _, target = setup
    with pytest.raises(ValueError, match=next(iter(params))):
        run_attack(name, model, x, target=target, **params)


def test_wrong_param_type_is_type_error():
    with pytest.raises(TypeError, match="int"):
        ATTACKS["pgd"](steps=2.5)
    with pytest.raises(TypeError):
        ATTACKS["pgd"](eps="0.1")
    assert ATTACKS["pgd"](steps=10.0).params["steps"] == 10  # an integral float is accepted as int


@pytest.mark.parametrize("name", [n for n in available() if ATTACKS[n].targeted])
def test_targeted_without_target(setup, name):
    model, x, _, _ = setup
    with pytest.raises(ValueError, match="targeted"):
        run_attack(name, model, x, target=None)


def test_bad_inputs(setup):
    model, x, _, target = setup
    with pytest.raises(TypeError, match="uint8"):
        run_attack("fgsm", model, (x * 255).astype(np.uint8), target=target)
    with pytest.raises(ValueError, match="batch axis"):
        run_attack("fgsm", model, x[0], target=target[:1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        run_attack("fgsm", model, x * 2, target=target)
    with pytest.raises(ValueError, match="shape"):
        run_attack("fgsm", model, x, target=target[:-1], targeted=True)
    with pytest.raises(ValueError, match="class ids"):
        run_attack("fgsm", model, x, target=target + N_CLASSES, targeted=True)


# ----------------------------------------------------------------------------------------------------------
# Every attack
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", available())
def test_attack_result(setup, results, name):
    model, x, y, target = setup
    res = results[name]
    assert isinstance(res, AttackResult)
    assert res.x_adv.shape == x.shape and res.x_adv.dtype == np.float32
    assert res.predicted.shape == (len(x),) and res.predicted.dtype == np.int64
    assert res.success.shape == (len(x),) and res.success.dtype == np.bool_
    assert 0.0 <= res.x_adv.min() and res.x_adv.max() <= 1.0
    # predicted is the model's output on the uint8-rounded image; success is recomputed from it
    np.testing.assert_array_equal(res.predicted, _predict(model, quantise(res.x_adv)))
    expected = res.predicted == target if ATTACKS[name].targeted else res.predicted != _predict(model, x)
    np.testing.assert_array_equal(res.success, expected)
    assert res.targeted == ATTACKS[name].targeted == res.params["targeted"]
    # full parameters, defaults filled in, JSON-serialisable
    assert res.params["attack"] == name and res.params["seed"] == 0
    for key, p in param_spec(name).items():
        assert res.params[key] == FAST.get(name, {}).get(key, p["default"])
    json.dumps(res.params)
    if name in LINF:
        assert np.abs(res.x_adv - x).max() <= res.params["eps"] + 1e-6
    assert res.success.any(), f"{name} never succeeded"


def test_lbfgs_succeeds_with_small_perturbation(setup, results):
    _, x, _, _ = setup
    lb, fg = results["lbfgs"], results["fgsm"]
    assert lb.success.mean() >= 0.8
    l2 = lambda r: np.sqrt(((r.x_adv - x) ** 2).reshape(len(x), -1).sum(1))  # noqa: E731
    assert l2(lb)[lb.success].mean() < l2(fg).mean()


def test_iterative_attacks_beat_one_step(setup, results):
    model, x, _, target = setup
    assert results["ifgsm"].success.sum() >= run_attack("fgsm", model, x, target=target, targeted=True).success.sum()
    assert results["deepfool"].success.mean() >= 0.8


@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm_is_one_step_of_ifgsm(setup, results, targeted):
    model, x, _, target = setup
    one = run_attack("ifgsm", model, x, target=target, eps=0.1, step=0.1, steps=1, targeted=targeted)
    fgsm = run_attack("fgsm", model, x, target=target, targeted=targeted)
    np.testing.assert_array_equal(one.x_adv, fgsm.x_adv)
    assert fgsm.targeted is targeted and fgsm.params["targeted"] is targeted
    if not targeted:
        np.testing.assert_array_equal(fgsm.x_adv, results["fgsm"].x_adv)  # untargeted is FGSM's default


def test_deepfool_ignores_target(setup, results):
    model, x, _, target = setup
    res = run_attack("deepfool", model, x, target=None)
    np.testing.assert_array_equal(res.x_adv, results["deepfool"].x_adv)
    assert res.params["targeted"] is False


def test_training_flag_and_requires_grad_restored(setup):
    model, x, _, target = setup
    model.train()
    model[0].eval()  # a mixed state comes back exactly
    frozen = model[0].weight
    frozen.requires_grad_(False)
    try:
        run_attack("pgd", model, x[:4], target=target[:4], steps=2)
        assert model.training and not model[0].training and model[3].training
        assert not frozen.requires_grad and model[3].weight.requires_grad
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()
        frozen.requires_grad_(True)


def test_same_seed_same_output_and_rng_restored(setup):
    model, x, _, target = setup
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    torch_before = torch.random.get_rng_state()
    a = run_attack("pgd", model, x, target=target, seed=7, steps=5)
    b = run_attack("pgd", model, x, target=target, seed=7, steps=5)
    c = run_attack("pgd", model, x, target=target, seed=8, steps=5)
    np.testing.assert_array_equal(a.x_adv, b.x_adv)
    assert not np.array_equal(a.x_adv, c.x_adv)
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    assert torch.equal(torch.random.get_rng_state(), torch_before)


def test_empty_batch(setup):
    model, x, _, _ = setup
    res = run_attack("lbfgs", model, x[:0], target=np.zeros(0, dtype=np.int64))
    assert res.x_adv.shape == (0, *SHAPE) and res.predicted.shape == (0,) and res.success.shape == (0,)


@pytest.mark.parametrize("module", sorted(p.name for p in Path(attacks.__file__).parent.glob("*.py")))
def test_art_is_imported_lazily(module):
    """``import art`` costs ~4 s: the package may import it only inside functions, never at module level."""
    tree = ast.parse((Path(attacks.__file__).parent / module).read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not [m for m in names if m == "art" or m.startswith("art.") or m.startswith("scipy")], names


def test_lbfgs_result_does_not_depend_on_batch_mates(setup, results):
    """Each image is its own L-BFGS-B problem: other mates, another order, the same adversarial.

    Within a pixel level, not bit for bit: whole blocks of 8 images keep an image's arithmetic apart from its mates
    with torch's own kernels, but MKL's (``MKL_CBWR=COMPATIBLE``, or another CPU's) block the batch otherwise and
    move pixels by up to 3e-4. Sharing the problem across mates moved them by up to 0.013 (3 levels)."""
    model, x, _, target = setup
    whole = results["lbfgs"]
    order = np.array([5, 0, 11, 3])  # images 0, 3, 5 and 11 with three of their mates gone, reordered
    part = run_attack("lbfgs", model, x[order], target=target[order])
    np.testing.assert_allclose(part.x_adv, whole.x_adv[order], rtol=0, atol=1 / 255)
    np.testing.assert_array_equal(part.success, whole.success[order])
    alone = run_attack("lbfgs", model, x[3:4], target=target[3:4])
    np.testing.assert_allclose(alone.x_adv[0], whole.x_adv[3], rtol=0, atol=1 / 255)


def test_quantise_within_never_leaves_the_eps_ball():
    """Random images and perturbations, on and off the uint8 grid, eps down to below half a grid step."""
    rng = np.random.default_rng(0)
    plain_excess = []
    for eps in [0.001, 0.1, 8 / 255, 0.5 / 255 + 1e-4, 0.3]:
        x = rng.uniform(0, 1, size=(20, 3, 8, 8)).astype(np.float32)
        x[:10] = np.rint(x[:10] * 255) / 255  # half the images on the grid, as stored images are
        x_adv = np.clip(x + rng.choice([-eps, eps], size=x.shape) * rng.uniform(0.9, 1, size=x.shape), 0, 1)
        q = attacks.quantise_within(x_adv, x, eps)
        k = attacks.to_uint8(q).transpose(0, 3, 1, 2).astype(np.float64)
        np.testing.assert_array_equal(attacks.to_uint8(q), attacks.to_uint8(attacks.quantise(q)))  # on the grid
        has_grid = np.ceil(x * 255.0 - 255 * eps - 1e-4) <= np.floor(x * 255.0 + 255 * eps + 1e-4)
        dist = np.abs(k - x.astype(np.float64) * 255)
        assert dist[has_grid].max() <= 255 * eps + 1e-3, eps
        assert (dist[~has_grid] <= 0.5 + 1e-6).all()  # no grid value in the ball: the nearest to x
        assert (np.abs(k - np.rint(x_adv * 255.0)) <= 1).all()  # moves by one step at most
        plain = np.abs(attacks.quantise(x_adv).astype(np.float64) - x) * 255
        plain_excess.append(plain[has_grid].max() - 255 * eps)
    assert max(plain_excess) > 0.4  # the plain rounding leaves the ball by up to half a step


@pytest.mark.parametrize("name", sorted(LINF))
def test_linf_attacks_store_inside_the_eps_ball(setup, results, name):
    _, x, _, _ = setup
    res = results[name]
    stored = attacks.to_uint8(res.x_adv).transpose(0, 3, 1, 2).astype(np.float64)
    assert np.abs(stored - x.astype(np.float64) * 255).max() <= 255 * res.params["eps"] + 1e-3
    np.testing.assert_array_equal(res.x_adv, quantise(res.x_adv))  # what is returned is what is stored


def test_modes(setup):
    model, x, y, target = setup
    assert [ATTACKS[n].targeted for n in available()] == [False, True, True, True, False, True]
    for name in ["ifgsm", "pgd", "cw"]:
        res = run_attack(name, model, x[:6], target=target[:6], targeted=False, **FAST.get(name, {}))
        assert res.targeted is False and res.params["targeted"] is False
        np.testing.assert_array_equal(res.success, res.predicted != y[:6])
        assert res.success.mean() >= 0.5, name
    with pytest.raises(ValueError, match="not supported"):
        run_attack("lbfgs", model, x[:2], target=target[:2], targeted=False)
    with pytest.raises(ValueError, match="not supported"):
        run_attack("deepfool", model, x[:2], target=target[:2], targeted=True)
    with pytest.raises(TypeError, match="bool"):
        run_attack("fgsm", model, x[:2], target=target[:2], targeted=1)
    with pytest.raises(ValueError, match="targeted attack"):
        run_attack("fgsm", model, x[:2], target=None, targeted=True)



_ART_IMPORTS_IN_TWO_ORDERS = """
import threading
from core._util.lazy_import import import_locked
orders = [("art.attacks.evasion", "art.estimators.classification"),
          ("art.estimators.classification", "art.attacks.evasion")] * 2
errors, start = [], threading.Barrier(len(orders))
def load(order):
    start.wait()
    try:
        for module in order:
            import_locked(module)
    except Exception as e:
        errors.append(f"{order[0]} first: {type(e).__name__}: {e}")
threads = [threading.Thread(target=load, args=(o,)) for o in orders]
[t.start() for t in threads]; [t.join() for t in threads]
print("\\n".join(errors) or "ok")
"""


def test_art_imported_from_threads_in_two_orders():
    """Four threads importing ART's attacks and estimators, two in each order, in a fresh process: without the one
    import lock three of them failed (``_DeadlockError``, or "cannot import name 'attacks' from partially
    initialized module 'art'"), ART's package importing itself in a circle."""
    import subprocess
    import sys

    root = Path(attacks.__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", _ART_IMPORTS_IN_TWO_ORDERS], cwd=root, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1:] == ["ok"], out.stdout[-3000:]


def test_import_locked_retries_an_import_race_only(monkeypatch):
    from core._util import lazy_import as utils

    calls = []

    def flaky(name):
        calls.append(name)
        if len(calls) == 1:
            raise ImportError("cannot import name 'attacks' from partially initialized module 'art'")
        return ast

    monkeypatch.setattr(utils.importlib, "import_module", flaky)
    monkeypatch.setattr(utils.time, "sleep", lambda s: None)
    assert utils.import_locked("art") is ast and calls == ["art", "art"]

    def missing(name):
        calls.append(name)
        raise ImportError("No module named 'art'")

    calls.clear()
    monkeypatch.setattr(utils.importlib, "import_module", missing)
    with pytest.raises(ImportError, match="No module named"):
        utils.import_locked("art")
    assert calls == ["art"]  # not a race: not tried again
