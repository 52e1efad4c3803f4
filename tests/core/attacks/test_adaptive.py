"""Adaptive attacks: the soft-kNN surrogate's gradient, the attack's budgets, and the stage on the tiny run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.attacks import AdaptiveL2, AdaptiveLinf, KnnSurrogate


def _two_clusters(mode: str = "none") -> KnnSurrogate:
    """Class 0 around (0, 0), class 1 around (3, 0) in a 2-D feature space, one layer ``f``."""
    rng = np.random.default_rng(0)
    xb = np.concatenate([rng.normal(0, 0.3, (200, 2)), rng.normal(0, 0.3, (200, 2)) + [3, 0]]).astype(np.float32)
    xb[:, 1] += 1.0  # keep away from the origin so l2 normalisation stays well defined
    labels = np.r_[np.zeros(200), np.ones(200)].astype(np.int64)
    params = {"mode": np.array(mode)}
    return KnnSurrogate(["f"], {"f": params}, {"f": xb}, labels, k=50, k_class=8, tau=0.5)


@pytest.mark.parametrize("mode", ["none", "l2"])
def test_surrogate_gradient_is_finite_and_points_to_the_target_class(mode):
    sur = _two_clusters(mode)
    torch.manual_seed(0)
    feature_map = torch.nn.Linear(2, 2)  # a tiny "model": input -> features
    with torch.no_grad():
        feature_map.weight.copy_(torch.eye(2))
        feature_map.bias.zero_()
    x = torch.tensor([[1.2, 1.0], [1.0, 1.1]], requires_grad=True)
    target = np.array([1, 1])
    sur.refresh({"f": feature_map(x)}, target)
    loss = sur.loss({"f": feature_map(x)})
    grad, = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(grad).all() and (grad.abs().sum(1) > 0).all()
    assert (grad[:, 0] < 0).all()  # descending the loss moves toward class 1's cluster (+x)
    share0 = sur.share({"f": feature_map(x)}).detach()
    x2 = (x - 0.2 * grad / grad.norm(dim=1, keepdim=True)).detach()
    assert (sur.share({"f": feature_map(x2)}) > share0).all()


def test_surrogate_share_is_a_share_and_needs_a_refresh():
    sur = _two_clusters()
    q = torch.tensor([[0.0, 1.0], [3.0, 1.0]])
    with pytest.raises(RuntimeError, match="refresh"):
        sur.share({"f": q})
    sur.refresh({"f": q}, np.array([0, 0]))
    s = sur.share({"f": q})[:, 0]
    assert s.shape == (2,) and ((s >= 0) & (s <= 1)).all()
    assert s[0] > 0.9 and s[1] < 0.1  # class 0 dominates near (0, 1), not near (3, 1)


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("cls,eps", [(AdaptiveLinf, 0.05), (AdaptiveL2, 0.5)])
def test_oblivious_variant_keeps_its_budget_and_traces_its_loss(cls, eps):
    model = _Tiny().eval()
    x = np.random.default_rng(0).random((6, 1, 4, 4)).astype(np.float32)
    target = (model(torch.from_numpy(x)).argmax(1).numpy() + 1) % 3
    atk = cls(lam=0.0, eps=eps, steps=15)
    res = atk(model, x, target=target)
    d = (res.x_adv - x).reshape(6, -1)
    if cls is AdaptiveLinf:
        assert np.abs(d).max() <= eps + 1e-6
    else:
        assert np.linalg.norm(d, axis=1).max() <= eps + 1e-5
    assert atk.trace.shape == (1, 15) and atk.trace[0, -1] < atk.trace[0, 0]


def test_detector_term_needs_a_surrogate():
    with pytest.raises(ValueError, match="KnnSurrogate"):
        AdaptiveLinf(lam=1.0)


def test_adaptive_stage_on_the_tiny_run(tiny_run):
    from core.runs.folder import RunDir

    run = RunDir(tiny_run)
    assert run.manifest["stages"]["adaptive"]["status"] == "done"
    rep = json.loads((tiny_run / "report.json").read_text())
    ad = rep["adaptive"]
    assert ad["layer"] == rep["operating_point"]["layer"]
    for variant in ("oblivious", "adaptive_layer", "adaptive_all"):
        for norm in ("linf", "l2"):
            c = ad["curves"][variant][norm]
            assert len(c["budgets"]) == len(c["guarded_success"]) >= 1
            for v, lo, hi in c["guarded_success"]:
                assert 0 <= lo <= v <= hi <= 1
    # Tramèr et al.'s first check: with an unbounded budget the adaptive attack gets through the guard
    for norm in ("linf", "l2"):
        assert ad["sanity"]["unbounded"][norm]["guarded_success"][0] >= 0.9
    assert [r["kappa"] for r in ad["cw_confidence"]] == [0.0, 20.0]
    res = run.load_npz("adaptive/results.npz")
    assert res["adaptive_layer-linf-guarded"].shape == (1, ad["n"])
    e = ad["extra_l2"]  # first successful iterates of the early-stopping L2 PGD, with and without the detector
    assert res["first-oblivious-l2"].shape == res["first-adaptive_layer-l2"].shape == (ad["n"],)
    assert e["of"] == ad["n"] and 0 <= e["n"] <= ad["n"]
    if e["n"]:
        assert 0 < e["median_without"] <= e["radius"] + 0.1 and 0 < e["median_with"] <= e["radius"] + 0.1
    assert (tiny_run / "adaptive/curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tiny_run / "report.md").read_text()
    assert "## Adaptive attacks" in md and "adaptive/curve.png" in md


@pytest.mark.parametrize("cls,eps", [(AdaptiveLinf, 1.0), (AdaptiveL2, 4.0)])
def test_stop_test_freezes_each_image_at_its_first_passing_iterate(cls, eps):
    model = _Tiny().eval()
    x = np.random.default_rng(1).random((8, 1, 4, 4)).astype(np.float32)
    target = (model(torch.from_numpy(x)).argmax(1).numpy() + 1) % 3
    seen: list[np.ndarray] = []

    def stop(x_adv, rows):
        seen.append(rows.copy())
        return rows % 2 == 0  # even images pass as soon as they reach the target

    atk = cls(lam=0.0, eps=eps, steps=30, refresh=3, stop=stop)
    res = atk(model, x, target=target)
    assert seen and all(((r >= 0) & (r < 8)).all() for r in seen)
    assert atk.stopped[1::2].sum() == 0 and atk.stopped[::2].all()
    assert (res.predicted[::2] == target[::2]).all()
    # a stopped image is never offered again
    offered = np.concatenate(seen)
    assert all((offered == i).sum() == 1 for i in range(0, 8, 2))


def test_without_random_start_the_first_success_is_a_small_perturbation():
    """From the image itself with small steps, the first successful iterate stops far inside a large ball
    (the extra-L2 measure of the adaptive stage); a random start lands near the ball's surface."""
    model = _Tiny().eval()
    x = np.random.default_rng(2).random((8, 1, 4, 4)).astype(np.float32)
    target = (model(torch.from_numpy(x)).argmax(1).numpy() + 1) % 3
    kw = dict(lam=0.0, eps=4.0, steps=200, refresh=1, stop=lambda xa, rows: np.ones(len(rows), dtype=bool))
    near = AdaptiveL2(random_start=False, **kw)
    res = near(model, x, target=target)
    far = AdaptiveL2(**kw)(model, x, target=target)
    ok = near.stopped
    assert ok.sum() >= 4 and (res.predicted[ok] == target[ok]).all()
    l2 = np.linalg.norm((res.x_adv - x).reshape(8, -1), axis=1)
    l2_far = np.linalg.norm((far.x_adv - x).reshape(8, -1), axis=1)
    assert np.median(l2[ok]) < 0.5 * np.median(l2_far[ok])


def test_unbounded_budget_is_accepted_by_the_attack_on_large_images():
    from precompute.stages.adaptive import unbounded

    small, large = np.zeros((2, 1, 28, 28)), np.zeros((1, 3, 299, 299))
    assert unbounded("l2", small) == pytest.approx(28.0) and unbounded("linf", large) == 1.0
    assert unbounded("l2", large) == pytest.approx(np.sqrt(3 * 299 * 299))
    assert unbounded("l2", large) <= AdaptiveL2.spec["eps"].max
    AdaptiveL2(eps=unbounded("l2", large), lam=0.0)  # accepted by the attack's parameter check


def test_adaptive_n_zero_attacks_nothing_and_drops_earlier_results(tiny_run_copy):
    from precompute.__main__ import main
    from tests.conftest import ROOT, TINY

    assert "adaptive" in json.loads((tiny_run_copy / "report.json").read_text())
    rc = main(["--config", str(ROOT / "precompute/configs/fmnist.toml"), "--no-progress",
               f"--set=runs_dir='{tiny_run_copy.parent}'", f"--set=data_root='{tiny_run_copy.parent}'",
               *[f"--set={s}" for s in TINY], "--set=adaptive.n=0"])
    assert rc == 0
    assert "adaptive" not in json.loads((tiny_run_copy / "report.json").read_text())  # not the n = 16 results
    assert "## Adaptive attacks" not in (tiny_run_copy / "report.md").read_text()


def test_a_set_cancel_flag_stops_the_attack_at_its_next_step():
    """A live attack past its deadline sets its flag: the loop raises instead of running its remaining steps."""
    import threading

    from core.errors import AttackCancelled

    class SetAfter:  # a flag that is set once the attack has asked it `n` times (one ask per step)
        def __init__(self, n: int) -> None:
            self.n, self.asked = n, 0

        def is_set(self) -> bool:
            self.asked += 1
            return self.asked > self.n

    model = _Tiny().eval()
    x = np.random.default_rng(0).random((2, 1, 4, 4)).astype(np.float32)
    target = (model(torch.from_numpy(x)).argmax(1).numpy() + 1) % 3
    flag = SetAfter(3)
    with pytest.raises(AttackCancelled, match="cancelled at step 3 of restart 1"):
        AdaptiveLinf(lam=0.0, eps=0.05, steps=200, cancel=flag)(model, x, target=target)
    assert flag.asked == 4  # steps 0, 1 and 2 ran, none after
    out = AdaptiveLinf(lam=0.0, eps=0.05, steps=5, cancel=threading.Event())(model, x, target=target)
    assert out.x_adv.shape == x.shape  # a flag never set changes nothing
