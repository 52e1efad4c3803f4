"""The optional HMAC signature of a run's manifest: sign, verify, refuse a rewrite, another key or a writable key."""
from __future__ import annotations

import json
import os

import pytest

from core.errors import ArtefactError
from core.runs.folder import RunDir
from tests.core.runs.tampering import _cli, _flip, _rewrite_with_hash


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
    from core.errors import SigningKeyError
    from core.runs.signing import load_key

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


def test_each_recorded_file_tampered_in_turn_is_refused_under_a_required_signature(tiny_run_copy, key_env,
                                                                                   monkeypatch, capsys):
    """One bit flipped in each file of a signed run in turn (every recorded file, the manifest and its signature):
    with a signature required, every one is refused by the run's check and by ``--verify``, which names it."""
    from precompute.__main__ import main

    RunDir(tiny_run_copy).sign()
    monkeypatch.setenv("KNNGUARD_REQUIRE_SIGNATURE", "1")
    assert main(["--verify", str(tiny_run_copy)]) == 0
    recorded = sorted(RunDir(tiny_run_copy).manifest["files"])
    assert len(recorded) > 20
    missed = []
    for rel in [*recorded, "manifest.json", "manifest.sig"]:
        p = tiny_run_copy / rel
        original = p.read_bytes()
        _flip(p)
        try:
            try:
                RunDir(tiny_run_copy).verify([rel] if rel in recorded else None)
            except ArtefactError:
                pass
            else:
                missed.append(f"{rel}: accepted by RunDir.verify")
            capsys.readouterr()
            code, err = main(["--verify", str(tiny_run_copy)]), capsys.readouterr().err
            if code != 1 or (rel in recorded and rel not in err):
                missed.append(f"{rel}: --verify exit {code}: {err.strip()[-300:]}")
        finally:
            p.write_bytes(original)
    assert not missed, missed
    assert main(["--verify", str(tiny_run_copy)]) == 0  # every file put back: the run verifies again
