"""core.models.features.FeatureExtractor: taps read by forward hooks equal torchvision's traced graph, and the default
model's taps load without importing torchvision."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from core.models import zoo
from core.models.features import FeatureExtractor
from tests.conftest import ROOT

TAPS = ["conv1", "conv2", "conv3", "conv4", "fc1"]


def _fmnist() -> zoo.Classifier:
    torch.manual_seed(0)
    return zoo.Classifier(zoo.FashionCNN(), (0.3,), (0.4,), (zoo.ConvBlock, zoo.FCBlock)).eval()


def _traced(model: nn.Module, taps: list[str]) -> FeatureExtractor:
    ext = FeatureExtractor(model, taps)
    ext._trace()
    return ext


def test_hooked_taps_equal_the_traced_graph():
    model, x = _fmnist(), torch.rand(6, 1, 28, 28)
    ext = FeatureExtractor(model, TAPS)
    assert ext._hooked
    (lh, fh), (lt, ft) = ext(x), _traced(model, TAPS)(x)
    assert torch.equal(lh, lt)
    assert list(fh) == TAPS and all(torch.equal(fh[k], ft[k]) for k in TAPS)


def test_tap_inside_a_leaf_module_is_refused_as_before():
    with pytest.raises(ValueError, match="not nodes"):
        FeatureExtractor(_fmnist(), ["conv1.0"])  # the ConvBlock is one node: its conv is not a tap


class _Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.act, self.out = nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3)

    def forward(self, x):
        return self.out(self.act(self.lin(self.act(x.flatten(1)))))


def test_a_tap_called_twice_falls_back_to_the_traced_node():
    model = zoo.Classifier(_Twice(), (0.0,), (1.0,)).eval()
    x = torch.rand(3, 1, 2, 2)
    ext = FeatureExtractor(model, ["act"])
    assert ext._hooked
    logits, f = ext(x)
    assert not ext._hooked  # the hook saw two calls: the graph's node "act" (the first call) decides
    lt, ft = _traced(model, ["act"])(x)
    assert torch.equal(logits, lt) and torch.equal(f["act"], ft["act"])
    assert torch.equal(f["act"], torch.tanh(x.flatten(1)))


def test_default_model_taps_do_not_import_torchvision():
    code = ("import sys, torch; from core.models import zoo; from core.models.features import FeatureExtractor\n"
            "m = zoo.Classifier(zoo.FashionCNN(), (0.3,), (0.4,), (zoo.ConvBlock, zoo.FCBlock)).eval()\n"
            "FeatureExtractor(m, ['conv2', 'fc1'])(torch.rand(2, 1, 28, 28))\n"
            "print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_threads_sharing_one_extractor_each_get_their_own_taps():
    """App sessions share one cached model: a hook must keep only its own thread's outputs (another thread's
    forward in between used to fill it twice, and the fallback FX trace broke every concurrent forward)."""
    import threading
    import time

    model = _fmnist()
    ext = FeatureExtractor(model, TAPS)
    model.net.conv1.register_forward_hook(lambda *_: time.sleep(0.02))  # forwards overlap for sure
    xs = [torch.rand(2, 1, 28, 28) for _ in range(6)]
    with torch.no_grad():
        want = [ext(x) for x in xs]
    got: list = [None] * len(xs)
    barrier = threading.Barrier(len(xs))

    def run(i: int) -> None:
        barrier.wait()
        with torch.no_grad():
            got[i] = ext(xs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ext._hooked
    for (lw, fw), (lg, fg) in zip(want, got):
        assert torch.equal(lw, lg) and all(torch.equal(fw[k], fg[k]) for k in TAPS)
