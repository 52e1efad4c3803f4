"""core.artefacts: a file's sha256 is computed once per process while the file is unchanged, and any change
(even one that keeps its size and modification time) is hashed again and refused."""
from __future__ import annotations

import os

import numpy as np
import pytest

from core import runfiles
from core.artefacts import ArtefactError, RunDir


@pytest.fixture()
def counted(monkeypatch) -> list[int]:
    calls = []
    real = runfiles.sha256_of
    monkeypatch.setattr(runfiles, "sha256_of", lambda f, *a, **kw: calls.append(1) or real(f, *a, **kw))
    return calls


def _run(tmp_path) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.manifest.update(files={}, stages={})
    run.save_npy("a.npy", np.arange(1000, dtype=np.int64))
    return run


def test_an_unchanged_file_is_hashed_once_per_process(tmp_path, counted):
    run = _run(tmp_path)
    counted.clear()  # recording the file hashed it
    for _ in range(3):
        assert run.load_npy("a.npy", verify=True)[7] == 7
    RunDir(run.path).verify(["a.npy"])  # another RunDir of the same run: the same file, not hashed again
    assert len(counted) == 1


def test_a_change_that_keeps_size_and_mtime_is_hashed_again_and_refused(tmp_path, counted):
    run = _run(tmp_path)
    counted.clear()  # recording the file hashed it
    run.load_npy("a.npy", verify=True)
    p = run.path / "a.npy"
    st = p.stat()
    with open(p, "r+b") as f:
        f.seek(-8, os.SEEK_END)
        f.write(np.int64(-1).tobytes())
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ArtefactError, match="sha256 differs"):
        run.load_npy("a.npy", verify=True)
    assert len(counted) == 2
