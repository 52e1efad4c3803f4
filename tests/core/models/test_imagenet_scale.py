"""Your own model and data: torchvision ImageNet configs on a tiny ImageFolder (weights=None), a custom
entry-point model, the NIPS-2017 CSV eval format with external adversarials, chunked extraction resumed after a
kill, torchrun sharding, and --list-layers. Nothing is downloaded."""
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from core.config import loader
from core.detector import Detector
from core.runs.folder import RunDir
from precompute.__main__ import main
from tests.conftest import ADAPTIVE_SMALL, ROOT

CONFIGS = ROOT / "precompute" / "configs"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes × 20 random 64×64 RGB images for train and for eval (class-tinted so classes differ)."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, name in enumerate(["n01440764", "n01443537", "n01484850"]):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(20):
                img = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
                img[..., c] = np.clip(img[..., c].astype(int) + 100, 0, 255)
                Image.fromarray(img).save(d / f"{split}_{i}.png")
    return root


def _common(folder, runs, name, *extra_paths):
    root = os.path.commonpath([runs, folder, *extra_paths])  # every config path must lie under data_root
    return [f"--set=runs_dir='{runs}'", f"--set=data_root='{root}'",
            f"--set=name='{name}'", f"--set=data.train_dir='{folder / 'train'}'",
            f"--set=data.eval_dir='{folder / 'val'}'", "--set=data.eval_csv=''", "--set=model.weights='none'",
            "--set=model.num_classes=3", "--set=evalsets.n_authentic=8", "--set=evalsets.n_errors=8",
            "--set=evalsets.attacks=['fgsm']", "--set=evalsets.attack_batch=8", "--set=scoring.k_max=20",
            "--set=scoring.k=10", "--set=scoring.k_sweep=[5,10]", "--set=features.workers=0",
            "--set=features.chunk=16", "--set=threads=2", "--set=thumbs.size=32", "--set=thumbs.per_layer=2",
            *[f"--set={s}" for s in ADAPTIVE_SMALL], "--no-progress"]


@pytest.mark.parametrize("cfg, size, layers, modes", [
    ("imagenet-inception_v3.toml", 80, "['Mixed_5b','Mixed_6e']", "['pca']"),
    ("imagenet-vgg16.toml", 64, "['features.30','classifier.4']", "['none','l2','pca']"),
])
def test_torchvision_configs_end_to_end(folder, tmp_path, capsys, cfg, size, layers, modes):
    name = cfg.split(".")[0]
    rc = main(["--config", str(CONFIGS / cfg), *_common(folder, tmp_path, name), f"--set=model.image_size={size}",
               f"--set=features.layers={layers}", f"--set=processing.modes={modes}", "--set=scoring.mode='pca'",
               "--set=attacks.lbfgs.n=4"])
    assert rc == 0
    run = RunDir(tmp_path / name)
    run.verify()
    model = run.load_json("model.json")
    assert model["warning"].startswith("random weights")       # said loudly
    assert "meaningless" in (tmp_path / name / "report.md").read_text()
    assert run.load_json("input.json")["size"] == [3, size, size]
    # neighbour thumbnails stored: the app never needs the training images
    bank = run.load_npz("thumbs/bank.npz")
    assert len(bank["ids"]) > 0 and bank["offsets"][-1] == len(bank["data"])
    paths = run.load_json("train_paths.json")
    assert len(paths["paths"]) == 60 and paths["paths"][0].startswith("n01440764/")
    from core.evaluation.rundata import RunData
    data = RunData(run)
    nb = data.neighbours("authentic", data.layers[0], "pca")
    thumb = data.train_image(int(nb.I[0, 0]))
    assert thumb is not None and thumb.shape[2] == 3 and max(thumb.shape[:2]) == 32
    # the Detector takes any PIL image and resizes it as the model's transforms do
    det = Detector.load(tmp_path / name)
    r = det.inspect(Image.new("RGB", (300, 200), (200, 10, 10)), k=5)
    assert r.image.shape == (size, size, 3) and set(r.scores) == set(eval(layers))


@pytest.fixture(scope="module")
def csv_set(folder, tmp_path_factory):
    """The DEV format: flat folder of <ImageId>.png + images.csv (labels from 1), and an external adversarial folder."""
    root = tmp_path_factory.mktemp("dev")
    (root / "images").mkdir()
    (root / "adv").mkdir()
    rows = []
    for c, name in enumerate(sorted(os.listdir(folder / "val"))):
        for i, p in enumerate(sorted((folder / "val" / name).iterdir())):
            image_id = f"{name}_{i:02d}"
            shutil.copy(p, root / "images" / f"{image_id}.png")
            # the "adversarial made elsewhere": the image of another class under the same id
            other = sorted((folder / "val" / sorted(os.listdir(folder / "val"))[(c + 1) % 3]).iterdir())[i]
            shutil.copy(other, root / "adv" / f"{image_id}.png")
            rows.append({"ImageId": image_id, "TrueLabel": c + 1, "TargetClass": (c + 1) % 3 + 1})
    with open(root / "images.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["ImageId", "TrueLabel", "TargetClass"])
        w.writeheader()
        w.writerows(rows)
    return root


def _custom_args(folder, runs, name, csv_root=None):
    args = ["--config", str(CONFIGS / "custom-example.toml"),
            *_common(folder, runs, name, *([csv_root] if csv_root is not None else [])),
            "--set=model.state_dict=''", "--set=evalsets.attacks=['fgsm','ifgsm']", "--set=attacks.fgsm.eps=0.3",
            "--set=attacks.ifgsm.eps=0.3", "--set=attacks.ifgsm.step=0.05"]
    if csv_root is not None:
        args += [f"--set=data.eval_dir='{csv_root / 'images'}'", f"--set=data.eval_csv='{csv_root / 'images.csv'}'",
                 f"--set=external.elsewhere.dir='{csv_root / 'adv'}'"]
    return args


def test_custom_model_with_csv_and_external_set(folder, csv_set, tmp_path):
    assert main(_custom_args(folder, tmp_path, "custom", csv_set)) == 0
    run = RunDir(tmp_path / "custom")
    sets = run.manifest["summary"]["sets"]
    assert {"authentic", "noise", "errors", "fgsm", "ifgsm", "elsewhere"} <= set(sets)
    assert sets["elsewhere"]["attempted"] == sets["authentic"]["n"]
    auth = run.load_npz("evalsets/authentic.npz")
    assert auth["images"].shape[1:] == (64, 64, 3)
    fg = run.load_npz("evalsets/ifgsm.npz")
    if len(fg["target"]):  # attacks aimed at the CSV's TargetClass (labels shifted by csv_label_offset)
        np.testing.assert_array_equal(fg["target"], (fg["true"] + 1) % 3)
    rep = run.load_json("report.json")
    assert "elsewhere" in rep["attacks"] or sets["elsewhere"]["n"] == 0


def test_chunked_extraction_resumes_after_kill(folder, tmp_path, monkeypatch):
    """Kill the features stage after 2 of its 4 chunks; the rerun does only the rest and matches a clean run."""
    assert main(_custom_args(folder, tmp_path / "clean", "c")) == 0
    clean = {p.name: np.load(p) for p in (tmp_path / "clean" / "c" / "features").glob("*.npy")}

    import core.models.features as cf
    real, calls = cf.extract, {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        return real(*a, **k)

    monkeypatch.setattr(cf, "extract", dying)
    with pytest.raises(KeyboardInterrupt):
        main(_custom_args(folder, tmp_path / "killed", "c"))
    fdir = tmp_path / "killed" / "c" / "features"
    assert json.loads((fdir / "progress-0.json").read_text())["done"] == [0, 1]
    calls["n"] = -100  # no more kills; count the chunks the resumed run extracts
    assert main(_custom_args(folder, tmp_path / "killed", "c")) == 0
    assert calls["n"] == -100 + 2 + 0 or calls["n"] >= -100 + 2  # only the 2 missing chunks (+ none repeated)
    for name, arr in clean.items():
        np.testing.assert_array_equal(np.load(fdir / name), arr)
    assert not list(fdir.glob("*.partial")) and not list(fdir.glob("progress-*"))


def test_torchrun_shards_extraction(folder, tmp_path):
    """torchrun with 2 CPU ranks (gloo): same features as one process."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not installed next to this python (pip install torch)")
    assert main(_custom_args(folder, tmp_path / "one", "c")) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    from tools.app_server import free_port

    # A free port, not a fixed one: two suites on one machine (or anything else on 29517) made it fail.
    proc = subprocess.run([torchrun, "--nproc_per_node=2", f"--master_port={free_port()}", "-m", "precompute",
                           *_custom_args(folder, tmp_path / "two", "c")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for p in (tmp_path / "one" / "c" / "features").glob("*.npy"):
        np.testing.assert_allclose(np.load(tmp_path / "two" / "c" / "features" / p.name), np.load(p), atol=1e-5)
    RunDir(tmp_path / "two" / "c").verify()


def test_list_layers(capsys):
    assert main(["--list-layers", str(CONFIGS / "imagenet-inception_v3.toml")]) == 0
    out = capsys.readouterr().out
    assert "maxpool2   (default tap)" in out and "Mixed_6d.cat" in out


def test_shipped_configs_validate():
    for p in CONFIGS.glob("*.toml"):
        loader.load(p)
    for bad in ("data.train_dir='data/../../etc'", "data.eval_csv='/etc/passwd'", "runs_dir='/tmp/x'",
                "model.state_dict='../model.pt'"):
        with pytest.raises(loader.ConfigError, match="not allowed|outside data_root"):
            loader.load(CONFIGS / "custom-example.toml", [bad])
    with pytest.raises(loader.ConfigError, match="entry"):
        loader.load(CONFIGS / "custom-example.toml", ["model.entry=''"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (runs on the GPU machine)")
def test_cuda_path(folder, tmp_path):
    assert main(_custom_args(folder, tmp_path, "gpu") + ["--set=device='cuda'"]) == 0
    RunDir(tmp_path / "gpu").verify()
