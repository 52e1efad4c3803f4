"""core.runs.folder: a file's sha256 is computed once while the file is unchanged (in one process, and across
processes through the private cache folder), and any change (even one that keeps its size and modification time)
is hashed again and refused."""
from __future__ import annotations

import os

import numpy as np
import pytest

from core.errors import ArtefactError
from core.runs import files as runfiles
from core.runs.folder import RunDir


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


def test_a_new_process_does_not_hash_an_unchanged_file_again_but_does_a_changed_one(tmp_path, counted, monkeypatch):
    from core._util import disk_cache
    from core.runs import hash_cache

    monkeypatch.setenv(disk_cache.CACHE_ENV, str(tmp_path / "cache"))
    run = _run(tmp_path)
    assert run.load_npy("a.npy", verify=True)[5] == 5  # hashed and recorded in the cache folder
    counted.clear()
    monkeypatch.setattr(hash_cache, "_HASHED", set())  # a new process: nothing remembered in memory
    assert RunDir(run.path).load_npy("a.npy", verify=True)[5] == 5
    assert counted == []
    path = run.path / "a.npy"
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[-8] ^= 1  # same size, same mtime: only the ctime tells
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    monkeypatch.setattr(hash_cache, "_HASHED", set())
    with pytest.raises(ArtefactError):
        RunDir(run.path).load_npy("a.npy", verify=True)
    assert counted == [1]
