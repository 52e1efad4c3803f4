"""Run files that lie: malformed or oversized JSON, npz and faiss bombs, forged peer files, swapped models,
thumbnails and cache marks: each refused with its name."""
from __future__ import annotations

import io
import json
import os
import re

import numpy as np
import pytest

from core.errors import ArtefactError
from core.runs.folder import RunDir
from tests.conftest import ROOT
from tests.core.runs.tampering import _add_deflated_zeros, _flip, _rewrite_with_hash


@pytest.mark.parametrize("classes", [[1, None], [], {"0": "a"}, ["a" * 1001], "T-shirt"])
def test_malformed_classes_json_is_refused_with_its_name(tiny_run_copy, classes):
    """Finding 9 of the security issue: ``classes.json = [1, null]`` (hash rewritten, as a writer of the run can)
    ended Inspect, Attack and Failure cases in an uncaught ``IndexError``; now every reader refuses it, naming it."""
    from app_ui import cache as loaders
    from app_ui import selection as state
    from core.detector import Detector

    _rewrite_with_hash(tiny_run_copy, "classes.json", json.dumps(classes).encode())
    with pytest.raises(ArtefactError, match="classes.json"):
        Detector.load(tiny_run_copy, verify="full")
    with pytest.raises(ArtefactError, match="classes.json"):
        loaders.run_json(str(tiny_run_copy), state.stamp(str(tiny_run_copy)), "classes.json")


def test_too_few_classes_for_the_labels_is_refused(tiny_run_copy):
    from core.detector import Detector

    _rewrite_with_hash(tiny_run_copy, "classes.json", json.dumps(["only", "two"]).encode())
    with pytest.raises(ArtefactError, match="train_labels.npy: labels 0..9 do not all name one of the 2 classes"):
        Detector.load(tiny_run_copy, verify="full")


def test_malformed_classes_json_is_a_message_on_the_inspect_page(tiny_run_copy, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    _rewrite_with_hash(tiny_run_copy, "classes.json", json.dumps([1, None]).encode())
    monkeypatch.setenv("KNNGUARD_RUNS_DIR", str(tiny_run_copy.parent))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    err = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", " ".join(e.value for e in at.error))
    assert "classes.json" in err


def test_an_oversized_run_json_is_refused_unread(tiny_run_copy):
    """Finding 9: a 190 MB report.json cost the server 2.3 GB, kept in its cache; above the cap it is not read."""
    from core.runs.files import JSON_MAX_BYTES

    data = b"[" + b" " * JSON_MAX_BYTES + b"]"
    _rewrite_with_hash(tiny_run_copy, "report.json", data)
    with pytest.raises(ArtefactError, match="report.json: 32 MiB, larger than any run JSON file is read"):
        RunDir(tiny_run_copy).load_json("report.json")


def test_an_npz_decompression_bomb_is_refused_before_inflating(tiny_run_copy):
    """Finding 5 of the security issue: an extra deflated member of zeros (3 GiB in 3.1 MB) in a processing file
    took a server from 0.63 to 3.68 GB at start-up. The members' declared sizes are checked first: refused, naming
    the file, with nothing inflated (here 1 GiB of zeros, 1 MB stored; reading the file for its hash allocates a
    64 MiB buffer)."""
    import tracemalloc

    rel = "processing/conv2-pca.npz"
    path = tiny_run_copy / rel
    _add_deflated_zeros(path, "extra.npy", 1 << 30)
    _rewrite_with_hash(tiny_run_copy, rel, path.read_bytes())
    tracemalloc.start()
    try:
        with pytest.raises(ArtefactError, match="conv2-pca.npz: member 'extra.npy' inflates to 1024 MiB"):
            RunDir(tiny_run_copy).load_npz(rel)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 << 20, peak
    assert RunDir(tiny_run_copy).load_npz("processing/conv2-l2.npz")  # an ordinary one still loads


@pytest.mark.parametrize("floats", [3 << 28, 25 << 32])  # 3 GiB and 100 GiB of float32
def test_a_faiss_header_declaring_more_than_its_file_is_refused_unread(tiny_run_copy, floats):
    """Finding 7 of the security issue: a 61-byte flat index declaring a 3 GiB vector made ``read_index`` zero-fill
    3 GiB before failing; 100 GiB raised ``MemoryError``, which escaped as itself. The header is checked against the
    file's size first."""
    import struct
    import tracemalloc

    rel = "index/conv2-pca.faiss"
    d, ntotal = 16, floats // 16
    data = struct.pack("<4siqqqBiQ", b"IxF2", d, ntotal, 1 << 20, 1 << 20, 1, 1, floats) + bytes(16)
    assert len(data) == 61
    _rewrite_with_hash(tiny_run_copy, rel, data)
    tracemalloc.start()
    try:
        with pytest.raises(ArtefactError, match="conv2-pca.faiss: flat faiss index header"):
            RunDir(tiny_run_copy).load_faiss(rel)
        assert tracemalloc.get_traced_memory()[1] < 128 << 20  # the hash check's 64 MiB read buffer; no vector
    finally:
        tracemalloc.stop()
    assert RunDir(tiny_run_copy).load_faiss("index/conv2-l2.faiss").ntotal > 0


def test_faiss_out_of_memory_is_an_artefact_error(tiny_run_copy, monkeypatch):
    import faiss

    def no_memory(path):
        raise MemoryError

    monkeypatch.setattr(faiss, "read_index", no_memory)
    with pytest.raises(ArtefactError, match="conv2-l2.faiss: unreadable faiss index \\(MemoryError"):
        RunDir(tiny_run_copy).load_faiss("index/conv2-l2.faiss")


@pytest.mark.parametrize("rel", ["detectors/mahalanobis/scores-all.npz", "detectors/mahalanobis/fit-all.npz",
                                 "detectors/dknn/fit-all.npz"])
def test_a_same_size_forged_peer_file_is_refused_in_a_signed_run(tiny_run_copy, key_env, monkeypatch, rel):
    """Finding 1 of the security issue: peer-detector files were read with a size check only, so same-size forged
    Mahalanobis files in a signed run (signature required) drew 'AUC 100.0' on Compare and trusted every image."""
    from core.peers import store

    RunDir(tiny_run_copy).sign()
    monkeypatch.setenv("KNNGUARD_REQUIRE_SIGNATURE", "1")
    _flip(tiny_run_copy / rel, 0.9)
    entry, name = rel.split("/")[1:]
    fit = name.split("-", 1)[1].removesuffix(".npz")
    run = RunDir(tiny_run_copy)
    assert run.check_signature(require=True) == "verified"  # the manifest is intact: only the file changed
    load = store.load_scores if name.startswith("scores") else store.load_fitted
    with pytest.raises(ArtefactError, match=re.escape(name) + ": sha256"):
        load(run, entry, fit)


def test_the_adaptive_surrogate_reads_hash_checked_features(tiny_run_copy):
    """Finding 1: the adaptive panel's surrogate loaded the training features with ``verify=False``."""
    from core.attacks import KnnSurrogate
    from core.detector import Detector

    det = Detector.load(tiny_run_copy, verify="full")
    _flip(tiny_run_copy / "features/fc1.npy", 0.7)
    with pytest.raises(ArtefactError, match="fc1.npy: sha256"):
        KnnSurrogate.from_detector(det, layers=["fc1"])


def test_a_model_swapped_in_after_its_hash_check_is_not_loaded(tiny_run_copy, monkeypatch):
    """Finding 2 of the security issue: ``Detector.load`` hashed ``model.pt``, then reopened it by name, so a
    same-size model renamed into place between the two was loaded (class 8 for 20 of 20 images). The swap here
    happens right after the check; the bytes loaded are the bytes hashed, so the run's own model is loaded."""
    import io
    import os

    import torch

    from core.detector import Detector

    model = tiny_run_copy / "model.pt"
    forged = {k: -v if v.is_floating_point() else v for k, v in torch.load(model, weights_only=True).items()}
    buf = io.BytesIO()  # as RunDir.save_torch writes it: the same size
    torch.save(forged, buf)
    (tiny_run_copy / "forged.pt").write_bytes(buf.getvalue())
    assert (tiny_run_copy / "forged.pt").stat().st_size == model.stat().st_size
    real_check, swapped = RunDir._hash_check, []

    def check_then_swap(self, rel, f, data=None):
        real_check(self, rel, f, data)
        if rel == "model.pt" and not swapped:
            os.replace(tiny_run_copy / "forged.pt", model)  # a watcher renames its model into place
            swapped.append(rel)

    monkeypatch.setattr(RunDir, "_hash_check", check_then_swap)
    det = Detector.load(tiny_run_copy, verify="full")
    assert swapped
    loaded = det.model.state_dict()
    for k, v in forged.items():
        if v.is_floating_point() and v.abs().sum() > 0:
            assert not torch.equal(loaded[k], v), k


def test_a_run_thumbnail_is_decoded_bounded_and_no_larger_than_the_run_says():
    """Finding 6 of the security issue: a run's JPEG thumbnails were decoded in the server process without limits
    (progressive 8192-pixel JPEGs of 300 scans: a core for 160 s and 1.2 GB, shown at full size). They are decoded
    in the upload sandbox, at most the run's thumbnail size a side; nothing is decoded in this process."""
    from PIL import Image

    from core.evaluation.rundata import decode_thumb

    def jpeg(w, h, **kw):
        buf = io.BytesIO()
        Image.new("RGB", (w, h), (200, 30, 90)).save(buf, format="JPEG", **kw)
        return buf.getvalue()

    ok = decode_thumb(jpeg(32, 20), 32)
    assert ok.shape == (20, 32, 3) and ok.dtype == np.uint8 and abs(int(ok[0, 0, 0]) - 200) < 8
    big = jpeg(4096, 4096, progressive=True)
    before = Image.core.get_stats()["new_count"]
    assert decode_thumb(big, 32) is None  # over 32 x 32 pixels: refused from its header
    assert decode_thumb(b"\xff\xd8 not a jpeg", 32) is None
    assert decode_thumb(jpeg(32, 20), 32).shape == (20, 32, 3)
    assert Image.core.get_stats()["new_count"] == before + 1  # only the one made here: no decode in this process


def test_a_forged_cache_mark_never_stands_in_for_the_hash_when_a_signature_is_required(tmp_path, monkeypatch):
    """Finding 3 of the security issue (its last part): a writer of the cache folder could forge the "already
    hash-checked" mark of a tampered file, which a signed run then loaded. With a signature required the marks on
    disk are not read."""
    import hashlib

    from core._util import disk_cache
    from core.runs import hash_cache

    p = tmp_path / "model.pt"
    p.write_bytes(b"the run's own bytes")
    want = hashlib.sha256(p.read_bytes()).hexdigest()
    p.write_bytes(b"a tampered model!!!")  # same size, other bytes
    with open(p, "rb") as f:
        st = os.fstat(f.fileno())
        seen = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, want)
        disk_cache.put_mark("sha256_checked", hashlib.sha256(repr(seen + (st.st_size,)).encode()).hexdigest())
        monkeypatch.setattr(hash_cache, "_HASHED", set())
        monkeypatch.setenv("KNNGUARD_REQUIRE_SIGNATURE", "1")
        assert hash_cache.sha256_matches(f, st.st_size, want) is False  # hashed: the forgery is seen
        monkeypatch.delenv("KNNGUARD_REQUIRE_SIGNATURE")
        # Unsigned: the mark still saves the hash (whoever can write an unsigned run can rewrite its manifest too).
        assert hash_cache.sha256_matches(f, st.st_size, want) is True
