"""The run folder: atomic writes, safe loads, sha256 hashes and the manifest.

A run folder (``data/runs/<run>/``) holds every artefact of one precompute run. Every write goes to a
temporary file in the same folder and is renamed into place, so a killed process never leaves a half file
under a real name. Every finished file is recorded in ``manifest.json`` with its size and sha256; loading
checks them and names the bad file. Nothing is ever loaded with pickle.

Example
-------
>>> run = RunDir("data/runs/fmnist")                      # doctest: +SKIP
>>> run.save_npy("train_labels.npy", labels)               # doctest: +SKIP
>>> labels = run.load_npy("train_labels.npy")              # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ArtefactError", "RunDir", "sha256_file", "atomic_path", "MANIFEST"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TMP_SUFFIX = ".tmp"
#: Temporary names made by :func:`atomic_path`: ``.<final name>.knnguard-<pid>-<random>.tmp``.
TMP_NAME = re.compile(r"\..+\.knnguard-\d+-[A-Za-z0-9_]+\.tmp")


class ArtefactError(RuntimeError):
    """A run-folder file is missing, changed, truncated or malformed; the message names the file."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` only if the block succeeds.

    The temporary name matches :data:`TMP_NAME` (``.<name>.knnguard-<pid>-<random>.tmp``) and is removed on
    error, so readers never see a partial file and cleaning never touches a file it did not make.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.knnguard-{os.getpid()}-", suffix=TMP_SUFFIX,
                               dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


_MANIFEST_KEYS = {"files": dict, "stages": dict, "config": dict, "summary": dict, "versions": dict}


def _check_manifest(p: Path, m: Any) -> None:
    """Refuse a manifest with unknown keys or wrong types (before anything is loaded on its word)."""
    if not isinstance(m, dict):
        raise ArtefactError(f"{p}: manifest is not a JSON object")
    for k, v in m.items():
        if k not in _MANIFEST_KEYS:
            raise ArtefactError(f"{p}: unknown manifest key {k!r}; refusing the run (was it edited by hand?)")
        if not isinstance(v, _MANIFEST_KEYS[k]):
            raise ArtefactError(f"{p}: manifest key {k!r} must be a {_MANIFEST_KEYS[k].__name__}")
    for rel, e in m.get("files", {}).items():
        if (not isinstance(e, dict) or not isinstance(e.get("sha256"), str) or not isinstance(e.get("size"), int)
                or ".." in Path(rel).parts or Path(rel).is_absolute()):
            raise ArtefactError(f"{p}: malformed manifest entry for {rel!r}")


class RunDir:
    """One run folder: typed atomic writers, hash-checked readers and the manifest.

    Parameters
    ----------
    path : str or PathLike
        The folder (created on first write).

    Notes
    -----
    The manifest maps every written file (relative path) to ``{"sha256", "size"}`` under ``"files"``, and
    every finished stage to its status under ``"stages"``. Writers update the manifest after the file is in
    place, so a file that is present but unrecorded is simply recomputed.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._manifest: dict[str, Any] | None = None

    # ------------------------------------------------------------------ manifest
    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest as a dict (loaded lazily; empty skeleton for a new run)."""
        if self._manifest is None:
            p = self.path / MANIFEST
            if p.exists():
                try:
                    self._manifest = json.loads(p.read_text())
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise ArtefactError(f"{p}: manifest is not valid JSON ({e}); delete the run folder "
                                        "and run precompute again") from e
                _check_manifest(p, self._manifest)
            else:
                self._manifest = {}
            self._manifest.setdefault("files", {})
            self._manifest.setdefault("stages", {})
        return self._manifest

    def exists(self) -> bool:
        """Whether the folder has a manifest."""
        return (self.path / MANIFEST).exists()

    def save_manifest(self) -> None:
        """Write the manifest atomically."""
        text = json.dumps(self.manifest, indent=1, sort_keys=True)
        with atomic_path(self.path / MANIFEST) as tmp:
            tmp.write_text(text)

    def record(self, rel: str, key: str | None = None) -> None:
        """Hash a file already in place and record it (with the input ``key`` that made it) in the manifest."""
        p = self.path / rel
        self.manifest["files"][rel] = {"sha256": sha256_file(p), "size": p.stat().st_size, "key": key}
        self.save_manifest()

    def item_done(self, rel: str, key: str) -> bool:
        """Whether ``rel`` was recorded with input ``key`` and is on disk with its recorded size."""
        entry = self.manifest["files"].get(rel)
        return entry is not None and entry.get("key") == key and self.is_recorded(rel)

    def forget(self, prefix: str) -> None:
        """Drop every recorded file whose relative path starts with ``prefix`` (files stay on disk)."""
        files = self.manifest["files"]
        for rel in [r for r in files if r.startswith(prefix)]:
            del files[rel]

    def is_recorded(self, rel: str, *, verify: bool = False) -> bool:
        """Whether ``rel`` is in the manifest and on disk with the recorded size (and hash if ``verify``)."""
        entry = self.manifest["files"].get(rel)
        p = self.path / rel
        if entry is None or not p.exists() or p.stat().st_size != entry["size"]:
            return False
        return not verify or sha256_file(p) == entry["sha256"]

    def stage_done(self, stage: str, key: str) -> bool:
        """Whether ``stage`` finished with the same input key and all its files are intact (sizes)."""
        st = self.manifest["stages"].get(stage)
        if not st or st.get("status") != "done" or st.get("key") != key:
            return False
        return all(self.is_recorded(rel) for rel in st.get("files", []))

    def mark_stage(self, stage: str, key: str, files: list[str], seconds: float, **extra: Any) -> None:
        """Record ``stage`` as finished with its input key, output files and wall time."""
        self.manifest["stages"][stage] = {"status": "done", "key": key, "files": sorted(files),
                                          "seconds": round(seconds, 3), "finished": time.time(), **extra}
        self.save_manifest()

    def invalidate(self, stages: list[str], *, item_keys: set[str] = frozenset()) -> None:
        """Forget the given stages (and files recorded with any of ``item_keys``) so they run again."""
        for s in stages:
            self.manifest["stages"].pop(s, None)
        files = self.manifest["files"]
        for rel in [r for r, e in files.items() if e.get("key") in item_keys]:
            del files[rel]
        self.save_manifest()

    # ------------------------------------------------------------------ verification
    def verify(self, rels: list[str] | None = None, *, full: bool = True) -> None:
        """Check recorded files against the manifest; raise :class:`ArtefactError` naming the first bad one.

        Parameters
        ----------
        rels : list of str, optional
            Files to check (default: every recorded file).
        full : bool, default True
            Compare sha256 (else only sizes, for very large runs).
        """
        files = self.manifest["files"]
        for rel in rels if rels is not None else sorted(files):
            entry = files.get(rel)
            p = self.path / rel
            if entry is None:
                raise ArtefactError(f"{p}: not recorded in the manifest; run precompute again")
            if not p.exists():
                raise ArtefactError(f"{p}: missing; run precompute again")
            if p.stat().st_size != entry["size"]:
                raise ArtefactError(f"{p}: size {p.stat().st_size} != recorded {entry['size']} "
                                    "(truncated or replaced); run precompute again with --from the stage "
                                    "that writes it")
            if full and sha256_file(p) != entry["sha256"]:
                raise ArtefactError(f"{p}: sha256 differs from the manifest (file changed after the run); "
                                    "refusing to load it")

    # ------------------------------------------------------------------ writers
    def _write(self, rel: str, writer: Callable[[Path], None], key: str | None = None) -> Path:
        final = self.path / rel
        with atomic_path(final) as tmp:
            writer(tmp)
        self.record(rel, key)
        return final

    def save_npy(self, rel: str, arr: np.ndarray, *, key: str | None = None) -> Path:
        """Save one array as ``.npy`` atomically (no pickle)."""
        arr = np.asarray(arr)
        if arr.dtype == object:
            raise TypeError(f"{rel}: object arrays are not allowed in artefacts")

        def w(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)
        return self._write(rel, w, key)

    def save_npz(self, rel: str, arrays: dict[str, np.ndarray], *, key: str | None = None) -> Path:
        """Save several arrays as one ``.npz`` atomically (no pickle; strings as unicode arrays)."""
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        for k, v in arrays.items():
            if v.dtype == object:
                raise TypeError(f"{rel}:{k}: object arrays are not allowed in artefacts")

        def w(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        return self._write(rel, w, key)

    def save_json(self, rel: str, obj: Any, *, key: str | None = None) -> Path:
        """Save JSON atomically (sorted keys, so equal content gives equal bytes)."""
        text = json.dumps(obj, indent=1, sort_keys=True, allow_nan=True)
        return self._write(rel, lambda tmp: tmp.write_text(text), key)

    def save_text(self, rel: str, text: str, *, key: str | None = None) -> Path:
        """Save a text file atomically."""
        return self._write(rel, lambda tmp: tmp.write_text(text), key)

    def save_torch(self, rel: str, state_dict: dict, *, key: str | None = None) -> Path:
        """Save a ``state_dict`` (tensors only) atomically."""
        import io

        import torch

        buf = io.BytesIO()  # a file-like target: the archive's inner name does not depend on the temp name
        torch.save(state_dict, buf)
        return self._write(rel, lambda tmp: tmp.write_bytes(buf.getvalue()), key)

    def save_faiss(self, rel: str, index: Any, *, key: str | None = None) -> Path:
        """Save a faiss index atomically."""
        import faiss

        return self._write(rel, lambda tmp: faiss.write_index(index, str(tmp)), key)

    def record_existing(self, rel: str, writer: Callable[[Path], None], *, key: str | None = None) -> Path:
        """Run ``writer(tmp_path)`` (any producer of a file) atomically and record the result."""
        return self._write(rel, writer, key)

    # ------------------------------------------------------------------ readers
    def _checked(self, rel: str, verify: bool = False) -> Path:
        p = self.path / rel
        if not p.exists():
            raise ArtefactError(f"{p}: missing; run `python -m precompute --config <config>` to build it")
        if verify:
            self.verify([rel])
        return p

    def load_npy(self, rel: str, *, mmap: bool = False, verify: bool = False) -> np.ndarray:
        """Load a ``.npy`` without pickle (memory-mapped if ``mmap``)."""
        p = self._checked(rel, verify)
        try:
            return np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise ArtefactError(f"{p}: unreadable ({e})") from e

    def load_npz(self, rel: str, *, verify: bool = False) -> dict[str, np.ndarray]:
        """Load every array of a ``.npz`` into a dict, without pickle."""
        p = self._checked(rel, verify)
        try:
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (ValueError, OSError, EOFError, KeyError) as e:
            raise ArtefactError(f"{p}: unreadable ({e})") from e

    def load_json(self, rel: str, *, verify: bool = False) -> Any:
        """Load a JSON file."""
        p = self._checked(rel, verify)
        try:
            return json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtefactError(f"{p}: not valid JSON ({e})") from e

    def load_torch(self, rel: str, *, verify: bool = False) -> dict:
        """Load a ``state_dict`` with ``weights_only=True`` (no code execution)."""
        import torch

        p = self._checked(rel, verify)
        try:
            return torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for a corrupt file; all mean the same to a user
            raise ArtefactError(f"{p}: unreadable state_dict ({type(e).__name__}: {e})") from e

    def load_faiss(self, rel: str, *, verify: bool = False) -> Any:
        """Load a faiss index."""
        import faiss

        p = self._checked(rel, verify)
        try:
            return faiss.read_index(str(p))
        except RuntimeError as e:
            raise ArtefactError(f"{p}: unreadable faiss index ({e})") from e

    def leftovers(self) -> list[Path]:
        """Temporary files left by a killed :func:`atomic_path` writer (names matching :data:`TMP_NAME`).

        Symlinked folders are not followed, and a symlink is never a leftover.
        """
        found = []
        for folder, _, names in os.walk(self.path):
            found += [Path(folder, n) for n in names
                      if TMP_NAME.fullmatch(n) and not os.path.islink(os.path.join(folder, n))]
        return sorted(found)

    def clean_tmp(self) -> int:
        """Remove :meth:`leftovers` (call only while holding the run's lock); return how many."""
        tmps = self.leftovers()
        for t in tmps:
            t.unlink(missing_ok=True)
        return len(tmps)
