"""Precompute refuses out-of-range configs before any work; the Detector type- and range-checks k."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from core.artefacts import RunDir
from precompute import config
from precompute.__main__ import main
from tests.conftest import ROOT, TINY

FMNIST_TOML = str(ROOT / "precompute/configs/fmnist.toml")
SHIPPED = sorted((ROOT / "precompute/configs").glob("*.toml"))


def _args(runs: Path, *extra: str) -> list[str]:
    return ["--config", FMNIST_TOML, "--no-progress", f"--set=runs_dir='{runs}'", f"--set=data_root='{runs}'",
            *[f"--set={s}" for s in TINY], *extra]


# ------------------------------------------------------------------ 12: ranges before any work
BAD = [
    ("features.batch_size", "0"), ("model.batch_size", "0"), ("features.chunk", "0"), ("threads", "-1"),
    ("data.n_train", "-5"), ("evalsets.noise_eps", "inf"), ("evalsets.noise_eps", "nan"), ("model.lr", "inf"),
    ("processing.pca_dim", "-3"), ("scoring.k_max", str(10 ** 12)), ("model.epochs", "-1"), ("model.epochs", "2.5"),
    ("scoring.k", "0"), ("scoring.k", "1001"), ("scoring.k_sweep", "[10, 0]"), ("scoring.k_sweep", "[10, 5000]"),
    ("scoring.k_sweep", "['ten']"), ("evalsets.n_errors", "-1"), ("index.nprobe", "0"), ("thumbs.size", "0"),
    ("model.weight_decay", "-0.1"), ("seed", "-1"), ("attacks.fgsm.eps", "5.0"), ("attacks.ifgsm.steps", "0"),
    ("attacks.fgsm.n", "0"), ("model.input_size", "[3, 0, 64]"), ("model.std", "[0.0, 0.2, 0.2]"),
]


@pytest.mark.parametrize("key, value", BAD)
def test_out_of_range_value_is_refused_with_its_fix(key, value):
    with pytest.raises(config.ConfigError) as e:
        config.load(FMNIST_TOML, [f"{key}={value}"])
    msg = str(e.value)
    assert "\n" not in msg and f"'{key}'" in msg and "allowed:" in msg
    fix = re.search(r"fix: --set (\S+)$", msg).group(1)
    assert fix.startswith(f"{key}=")
    config.load(FMNIST_TOML, [fix])  # the suggested value is valid


def test_k_max_above_n_train_is_refused():
    with pytest.raises(config.ConfigError, match=r"'scoring.k_max' = 1000 .*data.n_train = 500"):
        config.load(FMNIST_TOML, ["data.n_train=500"])


def test_out_of_range_fails_before_any_work(tmp_path, capsys):
    assert main(_args(tmp_path, "--set=threads=-1")) == 2
    assert "'threads' = -1" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _numeric_leaves(node, path=()):
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _numeric_leaves(v, path + (k,))
        elif (isinstance(v, (int, float)) and not isinstance(v, bool)) or \
                (isinstance(v, list) and any(isinstance(x, (int, float)) for x in v)):
            yield ".".join(path + (k,))


@pytest.mark.parametrize("toml", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_numeric_key_has_a_range(toml):
    import tomllib

    keys = set(_numeric_leaves(config.DEFAULTS)) | set(_numeric_leaves(tomllib.loads(toml.read_text())))
    keys = {k for k in keys if not k.startswith(config.ATTACK_SECTION + ".")}  # core.attacks.param_spec ranges
    assert keys - set(config.RANGES) == set()
    config.load(toml)  # every shipped value is inside its range


def test_detector_max_k_is_the_config_cap():
    from core import detector

    assert detector.MAX_K == config.MAX_K


# ------------------------------------------------------------------ 12: Detector k
def test_detector_k_is_type_and_range_checked(tiny_run):
    from core.detector import Detector

    det = Detector.load(tiny_run, verify="none")
    img = RunDir(tiny_run).load_npz("evalsets/authentic.npz")["images"][:2]
    assert det.score(img).settings["k"] == det.defaults["k"]
    assert det.score(img, k=np.int64(5)).settings["k"] == 5
    assert det.score(img, k=det.k_max).settings["k"] == det.k_max
    for bad in (True, 2.7, 5.0, "7"):
        with pytest.raises(TypeError, match="k must be an int"):
            det.score(img, k=bad)
        with pytest.raises(TypeError, match="k must be an int"):
            det.inspect(img[0], k=bad)
    for bad in (0, -1, det.k_max + 1):
        with pytest.raises(ValueError, match=rf"k must be in \[1, {det.k_max}\], got {bad}"):
            det.score(img, k=bad)
        with pytest.raises(ValueError, match="k must be in"):
            det.inspect(img[0], k=bad)
