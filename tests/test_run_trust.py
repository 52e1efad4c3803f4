"""Run-folder trust: special files and symbolic links refused before they are read, memory-mapped and displayed
files hash-checked, bounded ``.npy`` headers, and the optional HMAC signature of the manifest."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.runs.files import ArtefactError

from core.runs.folder import RunDir
from tests.conftest import ROOT

#: A refusal must come this fast; a hang (FIFO, /dev/zero) is killed at the deadline and fails the test.
DEADLINE_S = 60
#: Address-space cap of the child process (torch needs ~4 GiB of it), so reading /dev/zero cannot eat the machine.
CHILD_MEMORY = 4 << 30


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))


def _child(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -c code`` in the repository with a deadline and a memory cap; a hang fails the test."""
    try:
        return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                              timeout=DEADLINE_S, preexec_fn=_limit_memory, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung for {DEADLINE_S} s: {code}")


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return _child(f"import sys; from precompute.__main__ import main; sys.exit(main({list(args)!r}))", env)


LOAD = ("from core.detector import Detector\nfrom core.runs.folder import ArtefactError\n"
        "try:\n    Detector.load({path!r}, verify={verify!r})\nexcept ArtefactError as e:\n    print('REFUSED', e)\n"
        "else:\n    print('LOADED')\n")


def _make_special(p: Path, kind: str, outside: Path) -> None:
    """Replace a run file by a FIFO or a link to /dev/zero (its manifest entry rewritten to match their size, 0,
    as a writer of the run can), or by a link to an identical copy outside the run."""
    data = p.read_bytes()
    p.unlink()
    if kind == "outside":
        outside.write_bytes(data)
        p.symlink_to(outside)
        return
    if kind == "fifo":
        os.mkfifo(p)
    else:
        p.symlink_to("/dev/zero")
    mp = p.parent / "manifest.json"
    m = json.loads(mp.read_text())
    m["files"][p.name].update(size=0, sha256=hashlib.sha256(b"").hexdigest())
    mp.write_text(json.dumps(m, indent=1, sort_keys=True))


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


# ------------------------------------------------------------------------ finding 4: files shown, files mapped
def _flip(p: Path, at: float = 0.5) -> None:
    raw = bytearray(p.read_bytes())
    raw[int(len(raw) * at)] ^= 0x01
    p.write_bytes(bytes(raw))


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


def _tamper_json(p: Path, edit) -> None:
    """Rewrite a JSON file with ``edit`` applied; the manifest keeps the old hash (an edit, not a rebuild)."""
    obj = json.loads(p.read_text())
    edit(obj)
    p.write_text(json.dumps(obj, indent=1, sort_keys=True))


@pytest.mark.parametrize("name, edit", [
    ("model.json", lambda o: o.update(test_accuracy=0.9999)),
    ("report.json", lambda o: o.update(run="edited")),
    ("classes.json", lambda o: o.__setitem__(0, "EDITED")),
])
def test_tampered_displayed_json_refused_by_the_app_loader(tiny_run_copy, name, edit):
    from app_pages import loaders, state

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
    at.switch_page("app_pages/run_info.py").run()
    assert not at.exception, [e.value for e in at.exception]
    err = re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", " ".join(e.value for e in at.error))  # the page escapes run text
    assert "cannot be loaded" in err and "model.json" in err
    assert "99.99%" not in [m.value for m in at.metric]


# ---------------------------------------------------------------------------------- finding 5: npy headers
def _huge_header(p: Path) -> None:
    """Rewrite the .npy header to declare 745 GiB of data, keeping the file's size (same header length)."""
    raw = p.read_bytes()
    hlen = int.from_bytes(raw[8:10], "little")
    header = raw[10:10 + hlen].decode("latin1")
    new = re.sub(r"'shape': \([^)]*\)", "'shape': (100000000000,)", header)
    new = new.rstrip().ljust(hlen - 1) + "\n"
    assert len(new) == hlen
    p.write_bytes(raw[:10] + new.encode("latin1") + raw[10 + hlen:])


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


# ------------------------------------------------------------------------------------- finding 2: signature
def _rewrite_with_hash(run: Path, rel: str, data: bytes) -> None:
    """What a writer with access to the run can do: change a file and its manifest entry together."""
    (run / rel).write_bytes(data)
    m = json.loads((run / "manifest.json").read_text())
    m["files"][rel].update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    (run / "manifest.json").write_text(json.dumps(m, indent=1, sort_keys=True))


@pytest.fixture()
def key_env(tmp_path, monkeypatch) -> Path:
    key = tmp_path / "keys" / "signing.key"
    monkeypatch.setenv("KNNGUARD_SIGNING_KEY", str(key))
    monkeypatch.delenv("KNNGUARD_REQUIRE_SIGNATURE", raising=False)
    return key


def test_rewritten_file_and_hash_loads_without_key_but_is_refused_when_required(tiny_run_copy, key_env, monkeypatch):
    from core.detector import Detector

    monkeypatch.delenv("KNNGUARD_SIGNING_KEY")
    monkeypatch.setenv("HOME", str(key_env.parent))  # no default key either
    _rewrite_with_hash(tiny_run_copy, "classes.json", json.dumps(["forged"] * 10).encode())
    det = Detector.load(tiny_run_copy, verify="full")  # sha256 alone cannot tell a writer from the builder
    assert det.classes[0] == "forged"
    with pytest.raises(ArtefactError, match="manifest.sig: missing and a signed manifest is required"):
        Detector.load(tiny_run_copy, verify="full", require_signature=True)
    monkeypatch.setenv("KNNGUARD_REQUIRE_SIGNATURE", "1")
    with pytest.raises(ArtefactError, match="manifest.sig: missing"):
        Detector.load(tiny_run_copy)
    out = _cli("--verify", str(tiny_run_copy), env={"KNNGUARD_REQUIRE_SIGNATURE": "1", "HOME": str(key_env.parent)})
    assert out.returncode == 1 and "manifest.sig: missing" in out.stderr


def test_sign_then_load_verifies_and_a_rewrite_after_signing_is_refused(tiny_run_copy, key_env, monkeypatch):
    from core.detector import Detector

    out = _cli("--sign", str(tiny_run_copy), env={"KNNGUARD_SIGNING_KEY": str(key_env)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert key_env.is_file() and key_env.stat().st_mode & 0o777 == 0o600
    assert (tiny_run_copy / "manifest.sig").read_text().startswith("hmac-sha256 ")
    assert RunDir(tiny_run_copy).check_signature(require=True) == "verified"
    Detector.load(tiny_run_copy, verify="full", require_signature=True)
    out = _cli("--verify", str(tiny_run_copy), env={"KNNGUARD_SIGNING_KEY": str(key_env)})
    assert out.returncode == 0 and "signature: verified" in out.stdout, (out.stdout, out.stderr[-2000:])

    _rewrite_with_hash(tiny_run_copy, "classes.json", json.dumps(["forged"] * 10).encode())
    with pytest.raises(ArtefactError, match="manifest.sig: signature does not match"):
        Detector.load(tiny_run_copy, verify="full")  # checked whenever a key is there, required or not
    monkeypatch.setenv("HOME", str(key_env.parent))
    monkeypatch.delenv("KNNGUARD_SIGNING_KEY")  # no key: a signed run still loads, unchecked, unless required
    assert RunDir(tiny_run_copy).check_signature() == "unchecked"
    with pytest.raises(ArtefactError, match="no key"):
        RunDir(tiny_run_copy).check_signature(require=True)


def test_signature_from_another_key_refused(tiny_run_copy, key_env, monkeypatch):
    RunDir(tiny_run_copy).sign()
    key_env.write_text(os.urandom(32).hex() + "\n")
    with pytest.raises(ArtefactError, match="signature does not match"):
        RunDir(tiny_run_copy).manifest


def test_sign_refuses_a_damaged_run(tiny_run_copy, key_env):
    _flip(tiny_run_copy / "model.pt")
    with pytest.raises(ArtefactError, match="model.pt: sha256"):
        RunDir(tiny_run_copy).sign()
    assert not (tiny_run_copy / "manifest.sig").exists()


def test_rewriting_the_manifest_drops_the_signature(tmp_path, key_env):
    run = RunDir(tmp_path / "r")
    run.save_json("a.json", [1])
    run.sign()
    assert RunDir(tmp_path / "r").check_signature(require=True) == "verified"
    run.save_json("b.json", [2])  # precompute rewriting its manifest: the old signature no longer applies
    assert not (tmp_path / "r" / "manifest.sig").exists()
    assert RunDir(tmp_path / "r").check_signature() == "unsigned"


@pytest.mark.parametrize("mode", [0o666, 0o620, 0o602])
def test_a_signing_key_others_may_write_is_refused(tmp_path, key_env, mode):
    """Finding 4 of the security issue: a key of mode 0666 signed with a warning only; whoever may write it may sign
    any run, so it is refused (as ssh refuses a private key others can read). Readable only: a warning."""
    from core.runs.signing import SigningKeyError, load_key

    run = RunDir(tmp_path / "r")
    run.save_json("a.json", [1])
    run.sign()  # creates the key, mode 0600
    key_env.chmod(mode)
    with pytest.raises(SigningKeyError, match="writable by other users"):
        load_key()
    with pytest.raises(SigningKeyError):
        run.sign()
    key_env.chmod(0o644)
    assert load_key() is not None
    assert RunDir(tmp_path / "r").check_signature(require=True) == "verified"


@pytest.mark.parametrize("classes", [[1, None], [], {"0": "a"}, ["a" * 1001], "T-shirt"])
def test_malformed_classes_json_is_refused_with_its_name(tiny_run_copy, classes):
    """Finding 9 of the security issue: ``classes.json = [1, null]`` (hash rewritten, as a writer of the run can)
    ended Inspect, Attack and Failure cases in an uncaught ``IndexError``; now every reader refuses it, naming it."""
    from app_pages import loaders, state
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


def _add_deflated_zeros(p: Path, name: str, size: int) -> None:
    import zipfile

    with zipfile.ZipFile(p, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf, \
            zf.open(name, "w", force_zip64=True) as m:
        block = bytes(16 << 20)
        for _ in range(size // len(block)):
            m.write(block)


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
