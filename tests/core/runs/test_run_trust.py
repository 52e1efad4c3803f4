"""Run-folder trust: special files and symbolic links refused before they are read, memory-mapped and displayed
files hash-checked, bounded ``.npy`` headers."""
from __future__ import annotations

import re
import time

import numpy as np
import pytest

from core.errors import ArtefactError
from core.runs.folder import RunDir
from tests.conftest import ROOT
from tests.core.runs.tampering import (
    LOAD,
    _child,
    _cli,
    _flip,
    _huge_header,
    _make_special,
    _tamper_json,
)


# ------------------------------------------------------------------------------------ finding 3: special files
@pytest.mark.parametrize("kind", ["fifo", "devzero", "outside"])
@pytest.mark.parametrize("verify", ["full", "none"])
def test_special_or_linked_classes_json_refused_by_load(tiny_run_copy, tmp_path, kind, verify):
    _make_special(tiny_run_copy / "classes.json", kind, tmp_path / "elsewhere.json")
    t0 = time.perf_counter()
    out = _child(LOAD.format(path=str(tiny_run_copy), verify=verify))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("REFUSED") and "classes.json" in out.stdout, out.stdout
    assert re.search("symbolic link|not a regular file", out.stdout), out.stdout
    print(f"\n{kind}, verify={verify}: refused in {time.perf_counter() - t0:.1f} s (child process, torch import "
          "included)")


@pytest.mark.parametrize("kind", ["fifo", "devzero", "outside"])
def test_special_or_linked_file_refused_by_verify_cli(tiny_run_copy, tmp_path, kind):
    _make_special(tiny_run_copy / "classes.json", kind, tmp_path / "elsewhere.json")
    out = _cli("--verify", str(tiny_run_copy))
    assert out.returncode == 1 and "classes.json" in out.stderr, (out.stdout, out.stderr[-2000:])


def test_symlinked_folder_component_refused(tiny_run_copy, tmp_path):
    """A link anywhere below the run folder (here the ``index`` folder) is refused, not only a linked file."""
    (tiny_run_copy / "index").rename(tmp_path / "index-elsewhere")
    (tiny_run_copy / "index").symlink_to(tmp_path / "index-elsewhere")
    with pytest.raises(ArtefactError, match="index: is a symbolic link"):
        RunDir(tiny_run_copy).verify()


def test_symlinked_manifest_refused(tiny_run_copy, tmp_path):
    (tiny_run_copy / "manifest.json").rename(tmp_path / "manifest.json")
    (tiny_run_copy / "manifest.json").symlink_to(tmp_path / "manifest.json")
    with pytest.raises(ArtefactError, match="manifest.json: is a symbolic link"):
        RunDir(tiny_run_copy).manifest


def test_flipped_train_image_refused_by_full_load(tiny_run_copy):
    from core.detector import Detector

    assert "train_images.npy" in RunDir(tiny_run_copy).manifest["files"]
    _flip(tiny_run_copy / "train_images.npy", at=0.9)  # in the pixels, past the header
    with pytest.raises(ArtefactError, match="train_images.npy: sha256"):
        Detector.load(tiny_run_copy, verify="full")
    Detector.load(tiny_run_copy, verify="size")  # sizes only: loads (the documented trade)


def test_flipped_train_image_refused_by_run_data(tiny_run_copy):
    from core.evaluation.rundata import RunData

    _flip(tiny_run_copy / "train_images.npy", at=0.9)
    with pytest.raises(ArtefactError, match="train_images.npy: sha256"):
        RunData(tiny_run_copy, verify=True).train_image(0)


@pytest.mark.parametrize("name, edit", [
    ("model.json", lambda o: o.update(test_accuracy=0.9999)),
    ("report.json", lambda o: o.update(run="edited")),
    ("classes.json", lambda o: o.__setitem__(0, "EDITED")),
])
def test_tampered_displayed_json_refused_by_the_app_loader(tiny_run_copy, name, edit):
    from app_ui import cache as loaders
    from app_ui import selection as state

    _tamper_json(tiny_run_copy / name, edit)
    stamp = state.stamp(str(tiny_run_copy))
    with pytest.raises(ArtefactError, match=re.escape(name) + ": (sha256|size)"):
        loaders.run_json(str(tiny_run_copy), stamp, name)


def test_tampered_model_json_refused_by_the_run_page(tiny_run_copy, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    _tamper_json(tiny_run_copy / "model.json", lambda o: o.update(test_accuracy=0.9999))
    monkeypatch.setenv("KNNGUARD_RUNS_DIR", str(tiny_run_copy.parent))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("app_pages/run.py").run()
    assert not at.exception, [e.value for e in at.exception]
    err = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", " ".join(e.value for e in at.error))  # the page escapes run text
    assert "cannot be loaded" in err and "model.json" in err
    assert "99.99%" not in [m.value for m in at.metric]


@pytest.mark.parametrize("mmap", [False, True])
def test_npy_header_larger_than_the_file_refused_naming_it(tiny_run_copy, mmap):
    _huge_header(tiny_run_copy / "train_labels.npy")
    with pytest.raises(ArtefactError, match=r"train_labels.npy: the .npy header declares 800000000000 bytes"):
        RunDir(tiny_run_copy).load_npy("train_labels.npy", mmap=mmap)


def test_npy_header_refused_on_a_plain_run(tmp_path):
    run = RunDir(tmp_path)
    run.save_npy("a.npy", np.arange(12, dtype=np.int64).reshape(3, 4))
    assert run.load_npy("a.npy").shape == (3, 4)
    assert run.load_npy("a.npy", mmap=True)[2, 3] == 11
    with open(tmp_path / "a.npy", "r+b") as f:  # header says (3, 5): 8 bytes more than the file holds
        raw = f.read().replace(b"(3, 4)", b"(3, 5)")
        f.seek(0)
        f.write(raw)
    with pytest.raises(ArtefactError, match=r"a.npy: the .npy header declares 120 bytes"):
        run.load_npy("a.npy")
