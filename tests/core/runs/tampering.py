"""Helpers of the run-trust tests: a bounded child process, the verify CLI, and ways to damage a run folder."""
from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

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


# ------------------------------------------------------------------------ finding 4: files shown, files mapped
def _flip(p: Path, at: float = 0.5) -> None:
    raw = bytearray(p.read_bytes())
    raw[int(len(raw) * at)] ^= 0x01
    p.write_bytes(bytes(raw))


def _tamper_json(p: Path, edit) -> None:
    """Rewrite a JSON file with ``edit`` applied; the manifest keeps the old hash (an edit, not a rebuild)."""
    obj = json.loads(p.read_text())
    edit(obj)
    p.write_text(json.dumps(obj, indent=1, sort_keys=True))


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


# ------------------------------------------------------------------------------------- finding 2: signature
def _rewrite_with_hash(run: Path, rel: str, data: bytes) -> None:
    """What a writer with access to the run can do: change a file and its manifest entry together."""
    (run / rel).write_bytes(data)
    m = json.loads((run / "manifest.json").read_text())
    m["files"][rel].update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    (run / "manifest.json").write_text(json.dumps(m, indent=1, sort_keys=True))


def _add_deflated_zeros(p: Path, name: str, size: int) -> None:
    import zipfile

    with zipfile.ZipFile(p, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf, \
            zf.open(name, "w", force_zip64=True) as m:
        block = bytes(16 << 20)
        for _ in range(size // len(block)):
            m.write(block)
