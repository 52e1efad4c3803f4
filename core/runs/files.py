"""Run-folder files one at a time: checked reads (regular files only, bounded headers, no pickle).

The file-level half of :mod:`core.runs.folder`: :func:`open_regular` opens a file only if it is a regular file
reached without a symbolic link; :func:`read_manifest` and the ``read_*`` functions decode an opened (and size-checked) file and turn every
decoding failure into an :class:`ArtefactError` naming the file. See docs/design.md#run-files.

Examples
--------
>>> with open_regular(Path("data/runs/fmnist"), "train_labels.npy") as f:          # doctest: +SKIP
...     labels = read_npy(f, Path("data/runs/fmnist/train_labels.npy"))
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from core.errors import ArtefactError

__all__ = ["ArtefactError", "MANIFEST", "sha256_file", "sha256_of", "open_regular", "read_manifest", "npy_header",
           "read_npy", "read_npz", "read_json", "check_classes", "JSON_MAX_BYTES", "read_torch", "read_faiss"]



MANIFEST = "manifest.json"
#: Largest ``manifest.json`` (and ``manifest.sig``) read, in bytes.
MANIFEST_MAX_BYTES = 64 << 20


#: Largest run JSON file read (``report.json`` of the default run is 0.3 MB): a larger one is refused unread, where a
#: 190 MB ``report.json`` cost the server 2.3 GB, kept in its cache.
JSON_MAX_BYTES = 32 << 20
#: Most classes, and longest class name, that ``classes.json`` may hold (ImageNet has 1000 classes).
MAX_CLASSES, MAX_CLASS_NAME = 100_000, 1000


def check_classes(obj: Any, p: Path) -> list[str]:
    """``classes.json``'s content, checked: a non-empty list of strings, at most :data:`MAX_CLASSES` of at most
    :data:`MAX_CLASS_NAME` characters each (``[1, null]`` ended three pages in an ``IndexError``).

    Raises
    ------
    ArtefactError
        Otherwise; the message names ``p``.
    """
    if not isinstance(obj, list) or not obj or not all(isinstance(c, str) for c in obj):
        raise ArtefactError(f"{p}: not a list of class names (a JSON list of strings)")
    if len(obj) > MAX_CLASSES or max(map(len, obj)) > MAX_CLASS_NAME:
        raise ArtefactError(f"{p}: {len(obj)} class names, the longest {max(map(len, obj))} characters (at most "
                            f"{MAX_CLASSES} names of {MAX_CLASS_NAME} characters are read)")
    return obj


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


def read_manifest(root: Path) -> tuple[bytes, dict[str, Any]]:
    """The exact bytes and the checked dict of ``root/manifest.json`` (its signature not looked at).

    Raises
    ------
    ArtefactError
        Not a regular file, over :data:`MANIFEST_MAX_BYTES`, not JSON, or unknown keys or wrong types.
    """
    p = root / MANIFEST
    with open_regular(root, MANIFEST) as f:
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


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    with open(path, "rb") as f:
        return sha256_of(f, chunk=chunk)


def sha256_of(f: BinaryIO, limit: int | None = None, chunk: int = 1 << 22) -> str:
    """Hex sha256 of an open file from its position, reading at most ``limit`` bytes (all when None)."""
    h = hashlib.sha256()
    left = math.inf if limit is None else limit
    while left > 0 and (block := f.read(int(min(chunk, left)))):
        h.update(block)
        left -= len(block)
    return h.hexdigest()


def open_regular(root: Path, rel: str) -> BinaryIO:
    """Open ``root/rel`` for reading only if it is a regular file reached without a symbolic link below ``root``.

    Each component is checked with ``lstat`` before anything is opened (a FIFO or device is never opened), then
    the file is opened with ``O_NOFOLLOW | O_NONBLOCK`` and must still be the inode that was checked.

    Parameters
    ----------
    root : Path
        The run folder.
    rel : str
        A relative path inside it.

    Returns
    -------
    BinaryIO
        The file, open for binary reading.

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


def npy_header(f: BinaryIO, size: int, p: Path) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Read and check the header of an open ``.npy`` file of ``size`` bytes.

    Parameters
    ----------
    f : BinaryIO
        The file, at its start.
    size : int
        Its size in bytes.
    p : Path
        Its path, for messages.

    Returns
    -------
    shape : tuple of int
    fortran_order : bool
    dtype : numpy.dtype
    offset : int
        Where the data starts.

    Raises
    ------
    ArtefactError
        An unreadable header, an object dtype, or a shape and dtype whose data does not fill the file exactly.
    """
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


def read_npy(f: BinaryIO, p: Path, *, mmap: bool = False) -> np.ndarray:
    """The array of an open ``.npy`` (memory-mapped read-only if ``mmap``), header checked by :func:`npy_header`.

    Raises
    ------
    ArtefactError
        A bad header (see :func:`npy_header`) or unreadable data; the message names ``p``.
    """
    shape, fortran, dtype, offset = npy_header(f, os.fstat(f.fileno()).st_size, p)
    try:
        if mmap:
            return np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
        f.seek(0)
        return np.load(f, allow_pickle=False)
    except (ValueError, OSError, EOFError, MemoryError) as e:
        raise ArtefactError(f"{p}: unreadable ({type(e).__name__}: {e})") from e


#: An ``.npz`` member may inflate to this many bytes whatever its stored size (the precompute stores members
#: uncompressed, ``np.savez``), or to :data:`NPZ_MAX_RATIO` times its stored size.
NPZ_FREE_BYTES = 16 << 20
NPZ_MAX_RATIO = 20


def _check_npz_members(f: BinaryIO, p: Path) -> None:
    """Refuse an ``.npz`` whose members' declared sizes inflate past the bound, before any is inflated (a 3 GiB
    deflated member of zeros, 3.1 MB on disk, took a server from 0.63 to 3.68 GB at start-up and kept it)."""
    import zipfile

    start = f.tell()
    try:
        with zipfile.ZipFile(f) as zf:
            for info in zf.infolist():
                if info.file_size > max(NPZ_FREE_BYTES, NPZ_MAX_RATIO * info.compress_size):
                    raise ArtefactError(
                        f"{p}: member {info.filename[:80]!r} inflates to {info.file_size / 2**20:.0f} MiB from "
                        f"{info.compress_size / 2**20:.1f} MiB stored, more than any run file holds")
    except zipfile.BadZipFile as e:
        raise ArtefactError(f"{p}: unreadable (BadZipFile: {e})") from e
    finally:
        f.seek(start)


def read_npz(f: BinaryIO, p: Path) -> dict[str, np.ndarray]:
    """Every array of an open ``.npz``, without pickle; refused when a member would inflate past the bound of
    :func:`_check_npz_members`.

    Raises
    ------
    ArtefactError
        Unreadable data or a decompression bomb; the message names ``p``.
    """
    _check_npz_members(f, p)
    try:
        with np.load(f, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, KeyError, MemoryError) as e:
        raise ArtefactError(f"{p}: unreadable ({type(e).__name__}: {e})") from e


def read_json(raw: bytes, p: Path) -> Any:
    """Parse the bytes of a JSON file.

    Raises
    ------
    ArtefactError
        Not valid JSON (or not UTF-8); the message names ``p``.
    """
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtefactError(f"{p}: not valid JSON ({e})") from e


def read_torch(f: BinaryIO, p: Path) -> dict:
    """A ``state_dict`` from an open file, with ``weights_only=True`` (no code execution).

    Raises
    ------
    ArtefactError
        Any failure of ``torch.load``; the message names ``p``.
    """
    import torch

    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt file; all mean the same to a user
        raise ArtefactError(f"{p}: unreadable state_dict ({type(e).__name__}: {e})") from e


def read_faiss(f: BinaryIO, p: Path) -> Any:
    """A faiss index from an open file (read through ``/proc/self/fd`` where there is one, else from ``p``).

    Raises
    ------
    ArtefactError
        faiss cannot read it; the message names ``p``.
    """
    import faiss

    _check_flat_header(f, p)
    try:
        return faiss.read_index(_fd_path(f) or str(p))
    except (RuntimeError, MemoryError) as e:
        raise ArtefactError(f"{p}: unreadable faiss index ({type(e).__name__}: {e})") from e


#: The header of a flat faiss index as faiss 1.15 writes it: fourcc, d (int32), ntotal (int64), two unused int64,
#: is_trained (uint8), metric (int32), then the vectors' float count (uint64) and the floats.
_FLAT_HEADER = struct.Struct("<4siqqqBiQ")
_FLAT_KINDS = (b"IxF2", b"IxFI")


def _check_flat_header(f: BinaryIO, p: Path) -> None:
    """Refuse a flat index whose header declares more vectors than its file holds, before faiss allocates them (a
    61-byte file declaring a 3 GiB vector made ``read_index`` zero-fill 3 GiB, 100 GiB raised ``MemoryError``).
    Other kinds of index are left to faiss."""
    start = f.tell()
    try:
        head = f.read(_FLAT_HEADER.size)
        size = os.fstat(f.fileno()).st_size
    finally:
        f.seek(start)
    if len(head) < _FLAT_HEADER.size or head[:4] not in _FLAT_KINDS:
        return
    _, d, ntotal, _, _, _, metric, count = _FLAT_HEADER.unpack(head)
    if d <= 0 or ntotal < 0 or metric > 1 or count != ntotal * d or size != _FLAT_HEADER.size + 4 * count:
        raise ArtefactError(f"{p}: flat faiss index header (d={d}, ntotal={ntotal}, {count} floats) does not match "
                            f"its {size}-byte file")
