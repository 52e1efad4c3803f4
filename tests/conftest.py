"""Shared fixtures: a tiny real run of the pipeline (a few hundred Fashion-MNIST images, 2 layers, 2 attacks)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FMNIST = Path("/usr/share/datasets/fashion-mnist")

#: The tiny config used by the end-to-end, detector and app tests (kept small: CI has 2 cores).
TINY = ["name=tiny", "seed=0", "threads=2", "data.n_train=1200", "data.n_test=600", "model.epochs=2",
        "features.layers=['conv2','fc1']", "evalsets.n_authentic=120", "evalsets.n_errors=60",
        "evalsets.attacks=['fgsm','ifgsm']", "attacks.fgsm.n=120", "attacks.ifgsm.n=60",
        "scoring.k_max=50", "scoring.k=20", "scoring.k_sweep=[5,20,50]",
        "adaptive.n=16", "adaptive.steps=10", "adaptive.linf=[0.1]", "adaptive.l2=[2.0]", "adaptive.k=20",
        "adaptive.k_class=8", "adaptive.refresh=5", "adaptive.unbounded_steps=40", "adaptive.cw_n=4",
        "adaptive.cw_kappas=[0.0,20.0]", "adaptive.cw_max_iter=10", "adaptive.cw_binary_steps=1"]

#: The adaptive stage at its smallest, for tests whose runs only need it to work (its defaults took 490 s on the
#: InceptionV3 test config with 2 cores).
ADAPTIVE_SMALL = ["adaptive.n=2", "adaptive.steps=2", "adaptive.linf=[0.1]", "adaptive.l2=[2.0]", "adaptive.k=10",
                  "adaptive.k_class=4", "adaptive.unbounded_steps=2", "adaptive.unbounded_restarts=1",
                  "adaptive.cw_n=0"]


def need_fmnist() -> None:
    if not (FMNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST idx files missing: run `apt-get install -y dataset-fashion-mnist`")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """Path of a finished tiny run (built once per session with the real CLI)."""
    need_fmnist()
    from precompute.__main__ import main

    runs = tmp_path_factory.mktemp("runs")
    rc = main(["--config", str(ROOT / "precompute/configs/fmnist.toml"), "--no-progress",
               f"--set=runs_dir='{runs}'", f"--set=data_root='{runs}'", *[f"--set={s}" for s in TINY]])
    assert rc == 0
    return runs / "tiny"


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory) -> Path:
    """The tests' own cache folder (core._util.disk_cache), not the user's: one per test session, shared by the
    servers the tests start."""
    import os

    path = tmp_path_factory.mktemp("knnguard-cache")
    old = os.environ.get("KNNGUARD_CACHE_DIR")
    os.environ["KNNGUARD_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("KNNGUARD_CACHE_DIR", None)
    else:
        os.environ["KNNGUARD_CACHE_DIR"] = old


@pytest.fixture(scope="module", autouse=True)
def restore_torch_threads():
    """Give each test module torch's thread count back (the app and the library's one-image path change it)."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def tiny_run_copy(tiny_run, tmp_path) -> Path:
    """A private copy of the tiny run that a test may damage."""
    dst = tmp_path / "tiny"
    shutil.copytree(tiny_run, dst)
    return dst
