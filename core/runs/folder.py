"""The run folder: atomic writes, checked loads, sha256 hashes and the manifest.

A run folder (``data/runs/<run>/``) holds every artefact of one precompute run. :class:`RunDir` writes each file
atomically (:func:`atomic_path`) and records its size and sha256 in ``manifest.json``; every read goes through
:func:`core.runs.files.open_regular` and the manifest's size, JSON is always hash-checked, other files when
``verify`` asks, and nothing is loaded with pickle. An optional HMAC signature of the manifest
(:mod:`core.runs.signing`) authenticates the whole. See docs/design.md#run-files.

Examples
--------
>>> run = RunDir("data/runs/fmnist")                      # doctest: +SKIP
>>> run.save_npy("train_labels.npy", labels)               # doctest: +SKIP
>>> labels = run.load_npy("train_labels.npy")              # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from core._util.atomic import TMP_NAME, atomic_path
from core.errors import ArtefactError
from core.runs import files as runfiles
from core.runs import signing
from core.runs.files import MANIFEST, open_regular, sha256_file
from core.runs.hash_cache import sha256_matches

__all__ = ["RunDir"]

log = logging.getLogger(__name__)

class RunDir:
    """One run folder: typed atomic writers, hash-checked readers and the manifest.

    Parameters
    ----------
    path : str or PathLike
        The folder (created on first write).
    require_signature : bool, optional
        Refuse a manifest without a valid signature (default: ``$KNNGUARD_REQUIRE_SIGNATURE``).

    Notes
    -----
    The manifest maps every written file to ``{"sha256", "size", "key"}`` under ``"files"`` and every finished
    stage to its status under ``"stages"``.
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
                self._manifest_raw, m = runfiles.read_manifest(self.path)
                self.check_signature(require=self.require_signature)
                self._manifest = m
            else:
                self._manifest = {}
            self._manifest.setdefault("files", {})
            self._manifest.setdefault("stages", {})
        return self._manifest

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
        """Check ``manifest.sig`` against the manifest as read, with the key of :func:`core.runs.signing.load_key`.

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
        raw, m = runfiles.read_manifest(self.path)
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
        """Compare the sha256 of ``data`` (or of ``f`` up to its recorded size, then rewound; once per unchanged
        file and process) with the manifest."""
        entry = self.manifest["files"][rel]
        ok = (hashlib.sha256(data).hexdigest() == entry["sha256"] if data is not None
              else sha256_matches(f, entry["size"], entry["sha256"]))
        if not ok:
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
        with self._reading(rel, verify) as f:
            return runfiles.read_npy(f, self.path / rel, mmap=mmap)

    def load_npz(self, rel: str, *, verify: bool = False) -> dict[str, np.ndarray]:
        """Load every array of a ``.npz`` into a dict, without pickle; with ``verify``, from the very bytes whose
        hash was checked (:meth:`_checked_bytes`)."""
        if verify:
            return runfiles.read_npz(io.BytesIO(self._checked_bytes(rel)), self.path / rel)
        with self._reading(rel) as f:
            return runfiles.read_npz(f, self.path / rel)

    def _checked_bytes(self, rel: str) -> bytes:
        """``rel``'s bytes, read once from one open descriptor and hash-checked: what is parsed is what was hashed
        (a check by path followed by a load by path let a file renamed into place between the two be loaded)."""
        with self._reading(rel) as f:
            raw = f.read(self.manifest["files"][rel]["size"])
            self._hash_check(rel, f, raw)
        return raw

    def load_json(self, rel: str) -> Any:
        """Load a JSON file, always hash-checked; refused unread above :data:`core.runs.files.JSON_MAX_BYTES`, and
        ``classes.json`` checked as :func:`core.runs.files.check_classes` says."""
        size = self.manifest.get("files", {}).get(rel, {}).get("size")
        if isinstance(size, int) and size > runfiles.JSON_MAX_BYTES:
            raise ArtefactError(f"{self.path / rel}: {size / 2**20:.0f} MiB, larger than any run JSON file is read "
                                f"({runfiles.JSON_MAX_BYTES >> 20} MiB)")
        obj = runfiles.read_json(self._checked_bytes(rel), self.path / rel)
        return runfiles.check_classes(obj, self.path / rel) if rel == "classes.json" else obj

    def load_text(self, rel: str) -> str:
        """Load a UTF-8 text file, always hash-checked."""
        raw = self._checked_bytes(rel)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ArtefactError(f"{self.path / rel}: not UTF-8 text ({e})") from e

    def load_torch(self, rel: str, *, verify: bool = False) -> dict:
        """Load a ``state_dict`` with ``weights_only=True`` (no code execution); with ``verify``, from the very
        bytes whose hash was checked (:meth:`_checked_bytes`)."""
        if verify:
            return runfiles.read_torch(io.BytesIO(self._checked_bytes(rel)), self.path / rel)
        with self._reading(rel) as f:
            return runfiles.read_torch(f, self.path / rel)

    def load_faiss(self, rel: str, *, verify: bool = False) -> Any:
        """Load a faiss index."""
        with self._reading(rel, verify) as f:
            return runfiles.read_faiss(f, self.path / rel)

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
