"""Training here: when, on what (zoo nets adapted to a folder, custom entry points), resumable per epoch."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from core.config import loader
from core.data.datasets import FolderSource
from core.models import zoo
from examples.make_shapes import write_folder
from precompute.__main__ import main
from precompute.stages import train as training
from tests.conftest import ADAPTIVE_SMALL, ROOT

CUSTOM = str(ROOT / "precompute/configs/custom-example.toml")
M = {"epochs": 2, "batch_size": 8, "lr": 0.004, "weight_decay": 1e-4, "augment": ["flip", "crop"]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("shapes"), n_train=8, n_test=4, size=16)


def _model() -> zoo.Classifier:
    torch.manual_seed(0)
    return zoo.from_config({"name": "fmnist-cnn", "weights": "none", "num_classes": 3, "channels": 3,
                            "image_size": 16})[0]


@pytest.mark.parametrize("m, want", [
    ({"name": "fmnist-cnn", "train": "auto", "state_dict": ""}, True),
    ({"name": "vgg16", "train": "auto", "state_dict": ""}, False),
    ({"name": "vgg16", "train": True, "state_dict": ""}, True),
    ({"name": "fmnist-cnn", "train": False, "state_dict": ""}, False),
    ({"name": "custom", "train": "auto", "state_dict": ""}, True),
    ({"name": "custom", "train": "auto", "state_dict": "w.pt"}, False),
])
def test_wants_training(m, want):
    assert training.wants_training(m) is want


def test_trainer_on_a_tiny_folder_is_seeded(folder):
    src = FolderSource(folder / "train", size=(16, 16), channels=3)
    a, b = _model(), _model()
    ha = training.train(a, src, M, seed=0, device=torch.device("cpu"))
    hb = training.train(b, src, M, seed=0, device=torch.device("cpu"))
    assert len(ha["losses"]) == 2 and ha == hb and not a.training
    assert all(0 <= x <= 1 for x in ha["accuracies"])
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, msg=k)


def test_training_resumes_after_the_last_finished_epoch(folder, tmp_path, monkeypatch, caplog):
    src = FolderSource(folder / "train", size=(16, 16), channels=3)
    whole = _model()
    training.train(whole, src, M, seed=0, device=torch.device("cpu"))
    save = training._save_checkpoint

    def killed_after_first(path, state):
        save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_checkpoint", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        training.train(_model(), src, M, seed=0, device=torch.device("cpu"), checkpoint=(tmp_path, "key"))
    assert (tmp_path / training.CHECKPOINT).is_file()
    monkeypatch.setattr(training, "_save_checkpoint", save)
    resumed = _model()
    with caplog.at_level(logging.INFO, logger="precompute.stages.train"):
        training.train(resumed, src, M, seed=0, device=torch.device("cpu"), checkpoint=(tmp_path, "key"))
    assert "resuming after epoch 1 of 2" in caplog.text
    assert not (tmp_path / training.CHECKPOINT).exists()
    for (k, va), vb in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(va, vb, msg=k)


def test_a_checkpoint_of_other_inputs_is_ignored(folder, tmp_path, monkeypatch):
    src = FolderSource(folder / "train", size=(16, 16), channels=3)
    save = training._save_checkpoint

    def killed(path, state):
        save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        training.train(_model(), src, M, seed=0, device=torch.device("cpu"), checkpoint=(tmp_path, "old"))
    monkeypatch.setattr(training, "_save_checkpoint", save)
    hist = training.train(_model(), src, M, seed=0, device=torch.device("cpu"), checkpoint=(tmp_path, "new"))
    assert len(hist["losses"]) == 2


def test_outputs_must_match_the_classes():
    with pytest.raises(ValueError, match=r"gives 3 logits but the training set has 5 classes; "
                                         r"fix: --set model.num_classes=5"):
        training.check_outputs(_model(), 5, (3, 16, 16))
    training.check_outputs(_model(), 3, (3, 16, 16))


def _custom_args(folder, tmp_path, *extra):
    root = tmp_path.parent if folder.is_relative_to(tmp_path.parent) else "/"
    return ["--config", CUSTOM, "--no-progress", f"--set=data_root='{root}'",
            f"--set=runs_dir='{tmp_path / 'runs'}'", f"--set=data.train_dir='{folder / 'train'}'",
            f"--set=data.eval_dir='{folder / 'test'}'", "--set=model.state_dict=''", "--set=threads=2",
            "--set=model.epochs=2", "--set=scoring.k_max=20", "--set=scoring.k=10", "--set=scoring.k_sweep=[5,10]",
            "--set=evalsets.n_authentic=6", "--set=evalsets.attacks=['fgsm']", "--set=evaluation.n_boot=100",
            "--set=processing.pca_dim=8", *[f"--set={s}" for s in ADAPTIVE_SMALL], *extra]


def test_custom_model_without_weights_is_trained_here_end_to_end(folder, tmp_path):
    assert main(_custom_args(folder, tmp_path)) == 0
    run = tmp_path / "runs" / "custom-example"
    model = json.loads((run / "model.json").read_text())
    assert model["trained_here"] and model["epochs"] == 2 and len(model["losses"]) == 2 and "warning" not in model
    report = json.loads((run / "report.json").read_text())
    assert 0 <= report["model"]["test_accuracy"] <= 1 and report["model"]["n_test"] == 12
    assert not (run / training.CHECKPOINT).exists()
    cfg = loader.load(CUSTOM, ["model.state_dict=''", "model.train=false"])
    assert not training.wants_training(cfg["model"])


def test_a_model_with_the_wrong_outputs_is_refused_before_any_work(folder, tmp_path, capsys):
    args = _custom_args(folder, tmp_path, "--set=model.name='fmnist-cnn'", "--set=model.channels=3",
                        "--set=model.image_size=16", "--set=features.layers=[]", "--set=model.mean=[]",
                        "--set=model.std=[]")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "gives 10 logits but the training set has 3 classes" in err
    assert not (tmp_path / "runs" / "custom-example" / "manifest.json").exists()


def test_check_outputs_probes_on_the_models_device():
    """The probe input goes where the model is: a model already on a GPU failed with 'cuda:0 and cpu' (seen on
    an H100); the meta device stands in for it here."""
    training.check_outputs(_model().to("meta"), 3, (3, 16, 16))


_TRAIN_IN_A_PROCESS = """
import hashlib, sys
import numpy as np, torch
from core.models import zoo
from core.data.datasets import ArraySource
from precompute.stages import train as training
rng = np.random.default_rng(0)
src = ArraySource(rng.integers(0, 256, (384, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, 384).astype(np.int64))
torch.manual_seed(0)
model = zoo.from_config({"name": "fmnist-cnn", "weights": "none"})[0]
training.train(model, src, {"epochs": 1, "batch_size": 64, "lr": 0.002, "weight_decay": 1e-4, "augment": []},
               seed=0, device=torch.device("cpu"))
h = hashlib.sha256()
for v in model.state_dict().values():
    h.update(v.numpy().tobytes())
print(torch.get_num_threads(), h.hexdigest())
"""


def test_training_gives_the_same_weights_bit_for_bit_whatever_the_callers_threads():
    import os
    import subprocess
    import sys

    got = {}
    for n in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n)
        out = subprocess.run([sys.executable, "-c", _TRAIN_IN_A_PROCESS], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300, check=True).stdout.split()
        assert out[0] == n  # the caller's setting is back after training
        got[n] = out[1]
    assert got["1"] == got["2"]


def test_deterministic_sets_and_restores_torch():
    n, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with training.deterministic(1):
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == n and torch.are_deterministic_algorithms_enabled() == det
