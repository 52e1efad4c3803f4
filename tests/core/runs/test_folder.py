"""Run folder (atomic writes, hashes, no pickle) and config validation."""
import json

import numpy as np
import pytest

from core._util.atomic import atomic_path
from core.config import loader
from core.errors import ArtefactError
from core.runs.folder import RunDir


def test_atomic_write_and_verify(tmp_path):
    run = RunDir(tmp_path / "r")
    run.save_npy("a.npy", np.arange(10))
    run.save_npz("b.npz", {"x": np.ones(3), "s": np.array("text")})
    run.save_json("c.json", {"k": 1})
    run.verify()
    assert run.load_npz("b.npz")["s"] == "text"
    assert RunDir(tmp_path / "r").manifest["files"]["a.npy"]["size"] > 0
    # tamper: same size, different bytes
    p = tmp_path / "r" / "a.npy"
    raw = bytearray(p.read_bytes())
    raw[-1] ^= 1
    p.write_bytes(bytes(raw))
    with pytest.raises(ArtefactError, match="a.npy: sha256"):
        run.verify()
    with pytest.raises(ArtefactError, match="a.npy"):
        run.load_npy("a.npy", verify=True)
    # truncate
    (tmp_path / "r" / "c.json").write_text("{")
    with pytest.raises(ArtefactError, match="c.json"):
        run.verify(["c.json"])


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "x.npy") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_object_arrays_refused(tmp_path):
    with pytest.raises(TypeError):
        RunDir(tmp_path).save_npy("o.npy", np.array([{}], dtype=object))


def test_bad_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text("not json")
    with pytest.raises(ArtefactError, match="manifest"):
        RunDir(tmp_path).manifest


def test_config_defaults_and_overrides():
    cfg = loader.load("precompute/configs/fmnist.toml", ["evalsets.n_authentic=200", "scoring.fn=wknn",
                                                         "model.lr=1"])
    assert cfg["evalsets"]["n_authentic"] == 200 and cfg["scoring"]["fn"] == "wknn"
    assert isinstance(cfg["model"]["lr"], float)


@pytest.mark.parametrize("override, match", [
    ("evalsets.n_authentik=3", "unknown config key 'evalsets.n_authentik'"),
    ("evalsets.n_authentic='many'", "must be int"),
    ("scoring.fn=svm", "must be one of"),
    ("scoring.k=5000", "scoring.k"),
    ("attacks.fgsm.epsilon=0.1", "unknown parameter"),
    ("attacks.nope.n=1", "unknown attack"),
    ("name=../evil", "plain folder name"),
    ("nokey", "key=value"),
    ("evaluation.validation_share=1.0", "must be under 1"),
    ("evaluation.validation_share=0", "validation_share"),
    ("evaluation.target_tpr=1.5", "target_tpr"),
    ("evaluation.protocol=oracle", "must be one of"),
    ("evalsets.noise=gauss", "must be one of"),
    ("attacks.lbfgs.targeted=false", "supports targeted = true"),
    ("attacks.fgsm.targeted=1", "targeted = 1"),
    ("processing.modes=['zca']", "unknown mode"),
])
def test_config_errors(override, match):
    with pytest.raises(loader.ConfigError, match=match):
        loader.load("precompute/configs/fmnist.toml", [override])


def test_config_unknown_key_in_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[model]\nname = "fmnist-cnn"\nepochz = 3\n')
    with pytest.raises(loader.ConfigError, match="epochz"):
        loader.load(p)
    p.write_text("[model\n")
    with pytest.raises(loader.ConfigError, match="TOML"):
        loader.load(p)


def test_stage_keys_chain():
    from precompute.runner import stage_keys
    a = stage_keys(loader.load("precompute/configs/fmnist.toml"))
    b = stage_keys(loader.load("precompute/configs/fmnist.toml", ["processing.pca_dim=64"]))
    same = [s for s in a if a[s] == b[s]]
    assert same == ["data", "train", "features"]  # processing and everything after it change
    json.dumps(a)


def test_stage_version_recomputes_a_stage_whose_meaning_changed(monkeypatch):
    """A run made before a stage changed meaning (e.g. the evalsets' success rule) is recomputed from there."""
    from precompute import runner as stages
    cfg = loader.load("precompute/configs/fmnist.toml")
    a = stages.stage_keys(cfg)
    monkeypatch.setitem(stages.STAGE_VERSIONS, "evalsets", stages.STAGE_VERSIONS["evalsets"] + 1)
    b = stages.stage_keys(cfg)
    assert [s for s in a if a[s] == b[s]] == ["data", "train", "features", "processing", "index"]
