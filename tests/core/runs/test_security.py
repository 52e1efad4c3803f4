"""Trust: no code-executing loads anywhere, tampered or hand-edited runs refused, config paths confined,
a read-only run folder gives a clear error and stays intact."""
import errno
import json
import os
import re
import subprocess

import pytest

from core.detector import Detector
from core.errors import ArtefactError
from core.runs.folder import RunDir
from tests.conftest import ROOT, TINY

CODE = [p for d in ("core", "precompute", "app_pages", "pages", "benchmarks", "examples") for p in (ROOT / d).rglob("*.py")]
CODE += [ROOT / "app.py"] if (ROOT / "app.py").exists() else []


def test_no_pickle_loads_in_the_code_base():
    bad = []
    # built from pieces so this line does not match itself
    pattern = re.compile("|".join(["import " + "pickle", r"allow_pickle\s*=\s*True", r"joblib\.load",
                                   r"\bpickle\.loads?\(", "torch" + r"\.load\("]))
    for p in CODE:
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if pattern.search(line) and "weights_only=True" not in line:
                bad.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not bad, "code-executing loads:\n" + "\n".join(bad)
    assert len(CODE) > 10  # the scan saw the code base


@pytest.mark.parametrize("victim, how", [
    ("model.pt", "flip"), ("train_labels.npy", "truncate"), ("index/fc1-pca.faiss", "replace"),
    ("processing/conv2-pca.npz", "flip"), ("classes.json", "replace"),
])
def test_tampered_file_refused_naming_it(tiny_run_copy, victim, how):
    p = tiny_run_copy / victim
    raw = bytearray(p.read_bytes())
    if how == "flip":
        raw[len(raw) // 2] ^= 0x01
    elif how == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        raw = bytearray(b"X" * len(raw))
    p.write_bytes(bytes(raw))
    with pytest.raises(ArtefactError, match=re.escape(victim)):
        Detector.load(tiny_run_copy, verify="full")
    with pytest.raises(ArtefactError, match=re.escape(victim)):
        RunDir(tiny_run_copy).verify()


def test_every_recorded_file_flipped_is_caught_by_name(tiny_run_copy):
    """One bit flipped in each file the manifest records, one file at a time: the full check names that file."""
    rd = RunDir(tiny_run_copy)
    files = sorted(rd.manifest["files"])
    assert len(files) > 20, files  # the whole run, not a sample
    caught = []
    for rel in files:
        p = tiny_run_copy / rel
        good = p.read_bytes()
        assert good, f"{rel} is empty: nothing to flip"
        bad = bytearray(good)
        bad[len(bad) // 3] ^= 0x10
        p.write_bytes(bytes(bad))
        try:
            with pytest.raises(ArtefactError, match=re.escape(rel)):
                RunDir(tiny_run_copy).verify()
            caught.append(rel)
        finally:
            p.write_bytes(good)
    RunDir(tiny_run_copy).verify()  # restored: clean again
    assert caught == files
    print(f"\n{len(caught)} of {len(files)} recorded files caught when flipped")


def test_size_only_verification_catches_truncation(tiny_run_copy):
    p = tiny_run_copy / "index" / "conv2-pca.faiss"
    p.write_bytes(p.read_bytes()[:-8])
    with pytest.raises(ArtefactError, match="conv2-pca.faiss: size"):
        Detector.load(tiny_run_copy, verify="size")


@pytest.mark.parametrize("edit", [
    lambda m: m.update(extra=1),
    lambda m: m.update(files=[]),
    lambda m: m["files"].update({"../../etc/passwd": {"sha256": "0" * 64, "size": 1}}),
])
def test_hand_edited_manifest_refused(tiny_run_copy, edit):
    mp = tiny_run_copy / "manifest.json"
    m = json.loads(mp.read_text())
    edit(m)
    mp.write_text(json.dumps(m))
    with pytest.raises(ArtefactError, match="manifest"):
        Detector.load(tiny_run_copy)


def test_verify_cli(tiny_run_copy):
    import sys
    ok = subprocess.run([sys.executable, "-m", "precompute", "--verify", str(tiny_run_copy)], cwd=ROOT,
                        capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("OK:")
    (tiny_run_copy / "report.md").write_text("edited")
    bad = subprocess.run([sys.executable, "-m", "precompute", "--verify", str(tiny_run_copy)], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "report.md" in bad.stderr


@pytest.mark.parametrize("err", [errno.EROFS, errno.ENOSPC, errno.EACCES])
def test_read_only_or_full_run_folder(tiny_run_copy, capsys, monkeypatch, err):
    """Every write fails as on a read-only / full disk: a clear one-line error, the run left as it was."""
    import core._util.atomic
    from precompute.__main__ import main

    def no_write(*a, **k):
        raise OSError(err, os.strerror(err), str(tiny_run_copy))

    before = {p: p.read_bytes() for p in tiny_run_copy.rglob("*") if p.is_file()}
    monkeypatch.setattr(core._util.atomic.tempfile, "mkstemp", no_write)
    rc = main(["--config", str(ROOT / "precompute/configs/fmnist.toml"), "--no-progress", "--from", "report",
               f"--set=runs_dir='{tiny_run_copy.parent}'", f"--set=data_root='{tiny_run_copy.parent}'",
               *[f"--set={s}" for s in TINY]])
    assert rc == 1
    msg = capsys.readouterr().err
    assert os.strerror(err) in msg and "intact" in msg
    monkeypatch.undo()
    after = {p: p.read_bytes() for p in tiny_run_copy.rglob("*") if p.is_file()}
    assert set(after) == set(before)
    assert all(after[p] == before[p] for p in before if p.name != "manifest.json")
    Detector.load(tiny_run_copy)  # still loads (the manifest, rewritten atomically, only forgot the report stage)
