"""Concurrent use of one loaded :class:`core.detector.Detector` and its model, as the app's sessions share them.

    .venv/bin/python -m pytest tests/system/test_concurrency.py -q

Threads released together by a barrier inspect, score and attack at once; every result must equal the one the
same call gives alone, and the shared model must come out exactly as it went in. Before the fix, seeded random
attacks (PGD's random start comes from numpy's global RNG) reseeded each other here and gave other images than
their seed does alone.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from core.attacks import ATTACKS, run_attack
from core.detector import Detector
from core.evaluation.rundata import RunData

THREADS = 8


@pytest.fixture(scope="module")
def det(tiny_run) -> Detector:
    return Detector.load(tiny_run, verify="full")


@pytest.fixture(scope="module")
def images(tiny_run) -> np.ndarray:
    """uint8 (N, H, W, C) authentic evaluation images of the tiny run."""
    return np.asarray(RunData(tiny_run, verify=False).evalset("authentic")["images"][:THREADS * 2])


def _together(fn, args: list) -> list:
    """``fn(*a)`` for every ``a`` in ``args``, one thread each, all released at the same moment."""
    gate = threading.Barrier(len(args))

    def call(a):
        gate.wait()
        return fn(*a)

    with ThreadPoolExecutor(len(args)) as pool:
        return list(pool.map(call, args))


def _model_state(model: torch.nn.Module) -> tuple:
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [p.grad is None for p in model.parameters()],
            [t.detach().clone() for t in model.state_dict().values()])


def _same_state(a: tuple, b: tuple) -> bool:
    return a[:3] == b[:3] and all(torch.equal(x, y) for x, y in zip(a[3], b[3]))


def test_concurrent_inspect_equals_sequential(det, images):
    """Also: each thread's torch thread count (its own, once it has used torch) comes back as found after the
    one-thread single-image passes, however the threads interleave."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)

    def inspect(im):
        n0 = torch.get_num_threads()
        out = det.inspect(im, k=20)
        return out, (n0, torch.get_num_threads())

    try:
        alone = [det.inspect(im, k=20) for im in images[:THREADS]]
        rounds = []
        for _ in range(3):
            got = _together(inspect, [(im,) for im in images[:THREADS]])
            assert all(n0 == n1 for _, (n0, n1) in got), [c for _, c in got]
            rounds.append([g for g, _ in got])
    finally:
        torch.set_num_threads(threads)
    for got in rounds:
        for a, b in zip(alone, got):
            assert int(a.predicted[0]) == int(b.predicted[0])
            np.testing.assert_array_equal(a.image, b.image)
            for layer in det.layers:
                np.testing.assert_allclose(a.scores[layer], b.scores[layer], rtol=1e-6)
                np.testing.assert_array_equal(a.neighbours[layer].ids, b.neighbours[layer].ids)


def test_concurrent_score_batches_equal_sequential(det, images):
    batches = [images[i: i + 2] for i in range(0, len(images), 2)]
    alone = [det.score(b, k=20) for b in batches]
    got = _together(lambda b: det.score(b, k=20), [(b,) for b in batches])
    for a, b in zip(alone, got):
        np.testing.assert_array_equal(a.predicted, b.predicted)
        for layer in det.layers:
            np.testing.assert_allclose(a.scores[layer], b.scores[layer], rtol=1e-6)


@pytest.mark.parametrize("name", ["pgd", "fgsm", "deepfool"])
def test_concurrent_attacks_equal_sequential_and_leave_model_alone(det, images, name):
    """Each thread its own seed and image; PGD draws its random start from the global RNG."""
    model = det.model
    before = _model_state(model)
    x = images[:THREADS].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    n_classes = len(det.classes)
    target = ((det.score(images[:THREADS]).predicted + 1) % n_classes).astype(np.int64)
    kw = {"eps": 0.3, "step": 0.05, "steps": 5} if name == "pgd" else {}

    def attack(i: int):
        t = None if not ATTACKS[name].targeted else target[i: i + 1]
        return run_attack(name, model, x[i: i + 1], target=t, seed=1000 + i, **kw).x_adv

    alone = [attack(i) for i in range(THREADS)]
    for _ in range(3):
        got = _together(attack, [(i,) for i in range(THREADS)])
        for i, (a, b) in enumerate(zip(alone, got)):
            np.testing.assert_array_equal(a, b, err_msg=f"{name}: thread {i} (seed {1000 + i}) differs from alone")
    assert _same_state(before, _model_state(model)), "attacks changed the shared model's state"
    if name == "pgd":  # the seed matters: two seeds give two different random starts
        assert not np.array_equal(alone[0], run_attack(name, model, x[:1], target=target[:1], seed=7, **kw).x_adv)


def test_attack_restores_a_training_model_exactly():
    """A model handed over in training mode with trainable weights gets both back, per module."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(16, 3))
    model.train()
    model[1].eval()  # a mixed state must come back mixed
    model[2].bias.requires_grad_(False)
    before = _model_state(model)
    x = np.full((2, 1, 4, 4), 0.5, np.float32)
    run_attack("fgsm", model, x, target=np.array([0, 1]), eps=0.1)
    assert _same_state(before, _model_state(model))


def test_run_data_loads_each_file_once_and_shares_it_read_only(tiny_run):
    """Sessions asking for the same set at once get the one shared copy, which nobody can change in place."""
    data = RunData(tiny_run, verify=True)
    sets = _together(lambda: data.evalset("authentic"), [() for _ in range(THREADS)])
    nbs = _together(lambda: data.neighbours("authentic", data.layers[0], data.modes[0]), [() for _ in range(THREADS)])
    assert all(s is sets[0] for s in sets) and all(n is nbs[0] for n in nbs)
    for arr in (sets[0]["images"], sets[0]["predicted"], nbs[0].I, nbs[0].D, data.train_labels):
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = arr[0]
