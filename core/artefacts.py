"""The run folder: atomic writes, safe loads, sha256 hashes and the manifest.

A run folder (``data/runs/<run>/``) holds every artefact of one precompute run. Every write goes to a
temporary file in the same folder and is renamed into place, so a killed process never leaves a half file
under a real name. Every finished file is recorded in ``manifest.json`` with its size and sha256; loading
checks them and names the bad file. Nothing is ever loaded with pickle.

Every read goes through one path: the file must be recorded, be a regular file reached without a symbolic link
below the run folder, and have its recorded size (so a FIFO, a device or a link to a file elsewhere is refused
before it is opened, and nothing is read past the recorded size). JSON files are always hash-checked; other files
when ``verify`` asks. An optional HMAC signature of the manifest (:mod:`core.signing`) authenticates the whole.

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
import math
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from core import signing

__all__ = ["ArtefactError", "RunDir", "sha256_file", "open_regular", "atomic_path", "MANIFEST"]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
TMP_SUFFIX = ".tmp"
#: Temporary names made by :func:`atomic_path`: ``.<final name>.knnguard-<pid>-<random>.tmp``.
TMP_NAME = re.compile(r"\..+\.knnguard-\d+-[A-Za-z0-9_]+\.tmp")
#: Largest ``manifest.json`` (and ``manifest.sig``) read, in bytes.
MANIFEST_MAX_BYTES = 64 << 20


class ArtefactError(RuntimeError):
    """A run-folder file is missing, changed, truncated or malformed; the message names the file."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    with open(path, "rb") as f:
        return _sha256_of(f, chunk=chunk)


def _sha256_of(f: BinaryIO, limit: int | None = None, chunk: int = 1 << 22) -> str:
    """Hex sha256 of an open file from its position, reading at most ``limit`` bytes."""
    h = hashlib.sha256()
    left = math.inf if limit is None else limit
    while left > 0 and (block := f.read(int(min(chunk, left)))):
        h.update(block)
        left -= len(block)
    return h.hexdigest()


def open_regular(root: Path, rel: str) -> BinaryIO:
    """Open ``root/rel`` for reading only if it is a regular file reached without a symbolic link below ``root``.

    Each component is checked with ``lstat`` before anything is opened (a FIFO or device is never opened), then the
    file is opened with ``O_NOFOLLOW | O_NONBLOCK`` and must still be the inode that was checked.

    Raises
    ------
    ArtefactError
        ``rel`` leaves ``root``, is missing, is or passes through a symbolic link, or is not a regular file.
    """
    parts = Path(rel).parts
    if not parts or Path(rel).is_absolute() or ".." in parts:
        raise ArtefactError(f"{root / rel}: path leaves the run folder")
    cur = Path(root)
    for i, part in enumerate(parts):
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            raise ArtefactError(f"{cur}: missing; run `python -m precompute --config <config>` to build it") from None
        if stat.S_ISLNK(st.st_mode):
            raise ArtefactError(f"{cur}: is a symbolic link; every run file must be a regular file inside the run "
                                "folder (refusing it)")
        if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            raise ArtefactError(f"{cur}: not a folder")
    if not stat.S_ISREG(st.st_mode):
        raise ArtefactError(f"{cur}: not a regular file (a FIFO, device or folder); refusing it")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(cur, flags)
    fst = os.fstat(fd)
    if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise ArtefactError(f"{cur}: replaced while being opened; refusing it")
    return os.fdopen(fd, "rb")


def _fd_path(f: BinaryIO) -> str | None:
    """A path that opens the very file ``f`` has open (Linux ``/proc/self/fd``), or None elsewhere."""
    p = f"/proc/self/fd/{f.fileno()}"
    return p if os.path.exists(p) else None


def _npy_header(f: BinaryIO, size: int, p: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, data offset) of an open ``.npy`` whose data must fill the file's ``size``."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        raise ArtefactError(f"{p}: unreadable .npy header ({e})") from e
    if dtype.hasobject:
        raise ArtefactError(f"{p}: object arrays are not allowed in artefacts")
    offset = f.tell()
    want = math.prod(shape) * dtype.itemsize
    if want != size - offset:
        raise ArtefactError(f"{p}: the .npy header declares {want} bytes of data ({dtype} {shape}) but the file "
                            f"holds {size - offset}; refusing it")
    return shape, fortran, dtype, offset


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

    def __init__(self, path: str | os.PathLike, *, require_signature: bool | None = None):
        self.path = Path(path)
        self.require_signature = require_signature
        self._manifest: dict[str, Any] | None = None
        self._manifest_raw: bytes | None = None

    # ------------------------------------------------------------------ manifest
    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest as a dict (loaded lazily; empty skeleton for a new run; signature checked as
        :meth:`check_signature` says)."""
        if self._manifest is None:
            if self.exists():
                self._manifest_raw, m = self._read_manifest()
                self.check_signature(require=self.require_signature)
                self._manifest = m
            else:
                self._manifest = {}
            self._manifest.setdefault("files", {})
            self._manifest.setdefault("stages", {})
        return self._manifest

    def _read_manifest(self) -> tuple[bytes, dict[str, Any]]:
        """(exact bytes, checked dict) of ``manifest.json``, its signature not looked at."""
        p = self.path / MANIFEST
        with open_regular(self.path, MANIFEST) as f:
            raw = f.read(MANIFEST_MAX_BYTES + 1)
        if len(raw) > MANIFEST_MAX_BYTES:
            raise ArtefactError(f"{p}: manifest is over {MANIFEST_MAX_BYTES} bytes; refusing it")
        try:
            m = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtefactError(f"{p}: manifest is not valid JSON ({e}); delete the run folder "
                                "and run precompute again") from e
        _check_manifest(p, m)
        return raw, m

    def exists(self) -> bool:
        """Whether the folder has a manifest."""
        return os.path.lexists(self.path / MANIFEST)

    def save_manifest(self) -> None:
        """Write the manifest atomically (a signature of the previous manifest is removed: sign again)."""
        text = json.dumps(self.manifest, indent=1, sort_keys=True)
        sig = self.path / signing.SIGNATURE
        if os.path.lexists(sig):
            log.info("%s: manifest changed, signature removed (sign again with `python -m precompute --sign`)", sig)
            sig.unlink()
        with atomic_path(self.path / MANIFEST) as tmp:
            tmp.write_text(text)
        self._manifest_raw = text.encode()

    # ------------------------------------------------------------------ signature
    def check_signature(self, *, require: bool | None = None) -> str:
        """Check ``manifest.sig`` against the manifest as read, with the key of :func:`core.signing.load_key`.

        Parameters
        ----------
        require : bool, optional
            Refuse a run without a checkable signature (default: ``$KNNGUARD_REQUIRE_SIGNATURE``).

        Returns
        -------
        str
            ``"verified"``, ``"unsigned"`` (no signature, none required) or ``"unchecked"`` (signed, no key).

        Raises
        ------
        ArtefactError
            The signature does not match, or one is required and absent or uncheckable.
        """
        if self._manifest_raw is None:
            self.manifest
            if self._manifest_raw is None:
                raise ArtefactError(f"{self.path / MANIFEST}: missing; no run to check")
        require = signing.required() if require is None else require
        sp = self.path / signing.SIGNATURE
        try:
            key = signing.load_key()
        except signing.SigningKeyError as e:
            raise ArtefactError(str(e)) from e
        if not os.path.lexists(sp):
            if require:
                raise ArtefactError(f"{sp}: missing and a signed manifest is required; sign the run with "
                                    f"`python -m precompute --sign {self.path}`")
            return "unsigned"
        with open_regular(self.path, signing.SIGNATURE) as f:
            sig = f.read(1024).decode("ascii", "replace")
        if key is None:
            if require:
                raise ArtefactError(f"{sp}: a signed manifest is required but there is no key at "
                                    f"{signing.key_path()} to check it")
            log.warning("%s: not checked (no signing key at %s)", sp, signing.key_path())
            return "unchecked"
        if not signing.matches(key, self._manifest_raw, sig):
            raise ArtefactError(f"{sp}: signature does not match manifest.json (edited after signing, or signed "
                                "with another key); refusing the run")
        return "verified"

    def sign(self) -> Path:
        """Hash-check every recorded file, then write ``manifest.sig`` for the manifest on disk (creating the
        key if missing). Returns the key's path.

        Raises
        ------
        ArtefactError
            No manifest, or a file fails its check (nothing is signed).
        """
        if not self.exists():
            raise ArtefactError(f"{self.path / MANIFEST}: missing; nothing to sign")
        raw, m = self._read_manifest()
        m.setdefault("files", {})
        self._manifest, self._manifest_raw = m, raw
        self.verify(full=True)
        key, path = signing.create_key()
        with atomic_path(self.path / signing.SIGNATURE) as tmp:
            tmp.write_text(signing.sign(key, raw))
        return path

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
        """Whether ``rel`` is in the manifest and on disk as a regular file with the recorded size (and hash if
        ``verify``)."""
        try:
            self.verify([rel], full=verify)
        except ArtefactError:
            return False
        return True

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
            with self._open(rel) as f:
                if full:
                    self._hash_check(rel, f)

    def _open(self, rel: str) -> BinaryIO:
        """``rel`` opened by :func:`open_regular` after its manifest entry and size are checked."""
        entry = self.manifest["files"].get(rel)
        p = self.path / rel
        if entry is None:
            raise ArtefactError(f"{p}: not recorded in the manifest; run precompute again")
        f = open_regular(self.path, rel)
        size = os.fstat(f.fileno()).st_size
        if size != entry["size"]:
            f.close()
            raise ArtefactError(f"{p}: size {size} != recorded {entry['size']} "
                                "(truncated or replaced); run precompute again with --from the stage "
                                "that writes it")
        return f

    def _hash_check(self, rel: str, f: BinaryIO, data: bytes | None = None) -> None:
        """Compare the sha256 of ``data`` (or of ``f`` up to its recorded size, then rewound) with the manifest."""
        entry = self.manifest["files"][rel]
        if data is not None:
            digest = hashlib.sha256(data).hexdigest()
        else:
            digest = _sha256_of(f, entry["size"])
            f.seek(0)
        if digest != entry["sha256"]:
            raise ArtefactError(f"{self.path / rel}: sha256 differs from the manifest (file changed after the "
                                "run); refusing to load it")

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
    @contextmanager
    def _reading(self, rel: str, verify: bool = False) -> Iterator[BinaryIO]:
        """``rel`` open for reading through :meth:`_open`, hash-checked first if ``verify``."""
        with self._open(rel) as f:
            if verify:
                self._hash_check(rel, f)
            yield f

    def load_npy(self, rel: str, *, mmap: bool = False, verify: bool = False) -> np.ndarray:
        """Load a ``.npy`` without pickle (memory-mapped read-only if ``mmap``).

        Raises
        ------
        ArtefactError
            Also when the header's shape and dtype do not fill the file exactly.
        """
        p = self.path / rel
        with self._reading(rel, verify) as f:
            shape, fortran, dtype, offset = _npy_header(f, os.fstat(f.fileno()).st_size, p)
            try:
                if mmap:
                    return np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape,
                                     order="F" if fortran else "C")
                f.seek(0)
                return np.load(f, allow_pickle=False)
            except (ValueError, OSError, EOFError, MemoryError) as e:
                raise ArtefactError(f"{p}: unreadable ({type(e).__name__}: {e})") from e

    def load_npz(self, rel: str, *, verify: bool = False) -> dict[str, np.ndarray]:
        """Load every array of a ``.npz`` into a dict, without pickle."""
        p = self.path / rel
        with self._reading(rel, verify) as f:
            try:
                with np.load(f, allow_pickle=False) as z:
                    return {k: z[k] for k in z.files}
            except (ValueError, OSError, EOFError, KeyError, MemoryError) as e:
                raise ArtefactError(f"{p}: unreadable ({type(e).__name__}: {e})") from e

    def load_json(self, rel: str) -> Any:
        """Load a JSON file, always hash-checked."""
        p = self.path / rel
        with self._reading(rel) as f:
            raw = f.read(self.manifest["files"][rel]["size"])
            self._hash_check(rel, f, raw)
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtefactError(f"{p}: not valid JSON ({e})") from e

    def load_torch(self, rel: str, *, verify: bool = False) -> dict:
        """Load a ``state_dict`` with ``weights_only=True`` (no code execution)."""
        import torch

        p = self.path / rel
        with self._reading(rel, verify) as f:
            try:
                return torch.load(f, map_location="cpu", weights_only=True)
            except Exception as e:  # torch raises many types for a corrupt file; all mean the same to a user
                raise ArtefactError(f"{p}: unreadable state_dict ({type(e).__name__}: {e})") from e

    def load_faiss(self, rel: str, *, verify: bool = False) -> Any:
        """Load a faiss index."""
        import faiss

        p = self.path / rel
        with self._reading(rel, verify) as f:
            try:
                return faiss.read_index(_fd_path(f) or str(p))
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
