"""Sizes the data cannot fill are refused before any work, each with one line naming its key and the fix."""
from __future__ import annotations

import re

import pytest

from core.config import loader
from examples.make_shapes import write_folder
from precompute.__main__ import main
from tests.conftest import ROOT

CUSTOM = str(ROOT / "precompute/configs/custom-example.toml")
SHAPES = str(ROOT / "precompute/configs/shapes.toml")


def _cfg(*overrides: str) -> dict:
    return loader.load(SHAPES, list(overrides))


@pytest.mark.parametrize("overrides, key", [
    (["scoring.k_max=200", "scoring.k=100", "scoring.k_sweep=[10,100]"], "scoring.k_max"),
    (["scoring.k_max=180", "scoring.k=100", "scoring.k_sweep=[10,100]"], None),
    (["scoring.k_max=500", "scoring.k=300", "scoring.k_sweep=[10,200]"], "scoring.k_max"),
    (["evalsets.n_authentic=151"], "evalsets.n_authentic"),
])
def test_each_refused_size_names_its_key_and_a_fix_that_fits(overrides, key):
    cfg = _cfg(*overrides)
    if key is None:
        loader.check_sizes(cfg, n_train=180, n_test=150)
        return
    with pytest.raises(loader.ConfigError) as e:
        loader.check_sizes(cfg, n_train=180, n_test=150)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"'{key}' = ")
    fixes = re.search(r"fix: (.*)$", msg).group(1).split(" ")
    sets = [f for f in fixes if f != "--set"]
    loader.check_sizes(_cfg(*overrides, *sets), n_train=180, n_test=150)  # the suggested fix is enough


def test_k_and_sweep_above_the_training_set_are_named():
    cfg = _cfg("scoring.k_max=100", "scoring.k=100", "scoring.k_sweep=[10,100]")
    with pytest.raises(loader.ConfigError) as e:
        loader.check_sizes(cfg, n_train=90, n_test=150)
    assert str(e.value) == ("'scoring.k_max' = 100 is more than the 90 training images; 'scoring.k' = 100 is more "
                            "than the 90 training images; 'scoring.k_sweep' = [10,100] is more than the 90 training "
                            "images (100 is more); fix: --set scoring.k_max=90 --set scoring.k=90 "
                            "--set scoring.k_sweep=[10]")


@pytest.mark.parametrize("value, ok", [('"auto"', True), ("true", True), ("false", True), ("3", False),
                                       ('"yes"', False)])
def test_model_train_is_auto_or_bool(value, ok):
    if ok:
        assert _cfg(f"model.train={value}")["model"]["train"] in ("auto", True, False)
    else:
        with pytest.raises(loader.ConfigError, match=r"^'model.train' must be \"auto\" or bool"):
            _cfg(f"model.train={value}")


def test_training_options_are_checked():
    with pytest.raises(loader.ConfigError, match="model.augment: unknown augmentation 'rotate'"):
        _cfg("model.augment=['flip','rotate']")
    with pytest.raises(loader.ConfigError, match=r"'model.channels' = 3 only applies to models trained here"):
        loader.load(CUSTOM, ["model.channels=3"])
    with pytest.raises(loader.ConfigError, match=r"'model.channels' = 4 is out of range"):
        _cfg("model.channels=4")


def test_custom_example_on_a_small_folder_is_refused_before_any_work(tmp_path, capsys):
    """The shipped example's sizes fit a few hundred images; too-large ones stop the CLI before it writes."""
    write_folder(tmp_path / "imgs", n_train=10, n_test=4, size=16)
    runs = tmp_path / "runs"
    args = ["--config", CUSTOM, "--no-progress", f"--set=data_root='{tmp_path}'", f"--set=runs_dir='{runs}'",
            f"--set=data.train_dir='{tmp_path / 'imgs/train'}'", f"--set=data.eval_dir='{tmp_path / 'imgs/test'}'",
            "--set=model.state_dict=''"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: 'scoring.k_max' = ") and "fix: --set scoring.k_max=30" in err
    assert not (runs / "custom-example" / "manifest.json").exists()
    assert main([*args, "--set=scoring.k_max=30", "--set=scoring.k=20", "--set=scoring.k_sweep=[20]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 'evalsets.n_authentic' = ") and "--set evalsets.n_authentic=12" in err
