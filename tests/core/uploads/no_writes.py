"""Proof that decoding writes nothing: an audit hook that records file writes, and the fuzz run's summary."""
from __future__ import annotations

import functools
import logging
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator

import pytest
from PIL import Image

from core.uploads.read import read_upload
from tests.core.uploads.corpus import format_bases, outcome_of
from tests.core.uploads.crafted import FORMATS, Case

_AUDIT_LOG: list[tuple[str, object]] | None = None


_AUDIT_INSTALLED = False


_MUTATING_EVENTS = {
    "os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.truncate", "os.symlink", "os.link", "os.chmod",
    "os.utime", "shutil.copyfile", "shutil.move", "shutil.rmtree", "tempfile.mkstemp", "tempfile.mkdtemp",
}


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _audit_hook(event: str, args: tuple) -> None:
    log = _AUDIT_LOG
    if log is None:
        return
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int):  # wrapping a descriptor (a decode worker's pipe): nothing is opened
            return
        if isinstance(mode, str):
            writes = any(c in mode for c in "wax+")
        else:  # os.open: no mode string, only flags
            writes = isinstance(flags, int) and bool(flags & _WRITE_FLAGS)
        if writes:
            log.append((event, path))
    elif event in _MUTATING_EVENTS:
        log.append((event, args[0] if args else None))


@functools.cache
def _warm_up() -> None:
    """Import every Pillow plugin and code path once, so first-import .pyc writes are not counted."""
    Image.init()
    for fmt in FORMATS:
        for _, data in format_bases(fmt):
            read_upload(data)


class DiskWatch:
    """Empty private cwd + temp dir, audit log; records every sign of a write while active."""

    def __init__(self, root: str) -> None:
        self.cwd = os.path.join(root, "cwd")
        self.tmp = os.path.join(root, "tmp")
        os.makedirs(self.cwd)
        os.makedirs(self.tmp)
        self.system_tmp = tempfile.gettempdir()
        self.hard: list[str] = []
        self.system_tmp_new: set[str] = set()

    def __enter__(self) -> DiskWatch:
        global _AUDIT_LOG, _AUDIT_INSTALLED
        if not _AUDIT_INSTALLED:
            sys.addaudithook(_audit_hook)
            _AUDIT_INSTALLED = True
        self._old = (os.getcwd(), tempfile.tempdir, os.environ.get("TMPDIR"))
        self._sys_before = set(os.listdir(self.system_tmp))
        os.chdir(self.cwd)
        tempfile.tempdir = self.tmp
        os.environ["TMPDIR"] = self.tmp
        self._log: list[tuple[str, object]] = []
        _AUDIT_LOG = self._log
        return self

    def __exit__(self, *exc_info: object) -> None:
        global _AUDIT_LOG
        _AUDIT_LOG = None
        old_cwd, old_tempdir, old_env = self._old
        os.chdir(old_cwd)
        tempfile.tempdir = old_tempdir
        if old_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_env
        self.hard += [f"audit: {ev} {path}" for ev, path in self._log]
        self.hard += [f"cwd gained {name}" for name in os.listdir(self.cwd)]
        self.hard += [f"private TMPDIR gained {name}" for name in os.listdir(self.tmp)]
        self.system_tmp_new = set(os.listdir(self.system_tmp)) - self._sys_before


def run_without_writes(
    cases: tuple[Case, ...], tmp_path_factory: pytest.TempPathFactory
) -> list[tuple[Case, str, str | None]]:
    """Run cases under DiskWatch. The shared system temp dir can gain entries from other processes on
    this machine, so a change there is retried once and only a change in both runs fails."""
    _warm_up()
    for attempt in range(2):
        with DiskWatch(str(tmp_path_factory.mktemp("sandbox"))) as watch:
            results = [(case, *outcome_of(case)) for case in cases]
        assert not watch.hard, f"read_upload touched the disk: {watch.hard[:10]}"
        if not watch.system_tmp_new:
            return results
        first_new = watch.system_tmp_new
    pytest.fail(f"system temp dir gained entries in two runs: {sorted(first_new)} / {sorted(watch.system_tmp_new)}")


TALLY: Counter[str] = Counter()


TALLY_BY_CATEGORY: dict[str, Counter[str]] = {}


@pytest.fixture(scope="module", autouse=True)
def _print_fuzz_summary(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if not TALLY:
        return
    total = sum(TALLY.values())
    lines = [f"uploads fuzz: {total} files: " + ", ".join(f"{k}={v}" for k, v in TALLY.most_common())]
    lines += [f"  {cat}: {sum(c.values())} ({', '.join(f'{k}={v}' for k, v in c.most_common())})"
              for cat, c in TALLY_BY_CATEGORY.items()]
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capman is None:  # pragma: no cover
        logging.getLogger(__name__).warning("\n".join(lines))
        return
    with capman.global_and_fixture_disabled():  # shown even without -s
        reporter.write_line("")
        for line in lines:
            reporter.write_line(line)
