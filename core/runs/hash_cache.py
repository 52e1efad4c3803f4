"""sha256 checks of open run files, once per unchanged file and process.

A file is identified by (device, inode, size, mtime, ctime) of the open descriptor and the digest it must have:
a write or a replacement changes the ctime (which no user can set back), so a changed file is hashed again. A
match is also recorded in the private cache folder (:mod:`core._util.disk_cache`), so a new process (the app's server
started again) does not hash an unchanged run again: 0.16 s of the detector's load on the default run. When a
signature is required (``KNNGUARD_REQUIRE_SIGNATURE``) the marks on disk are not read: every process hashes.
"""
from __future__ import annotations

import hashlib
import os
import threading
from typing import BinaryIO

from core._util import disk_cache
from core.runs import files, signing

__all__ = ["sha256_matches"]

#: Files whose sha256 matched, by (device, inode, size, mtime, ctime, digest) of the open file: a file is
#: hashed once per process until any of these change (a write or a replacement changes the ctime).
_HASHED: set[tuple[int, int, int, int, int, str]] = set()
_HASHED_LOCK = threading.Lock()


def sha256_matches(f: BinaryIO, size: int, sha256: str) -> bool:
    """Whether the first ``size`` bytes of the open file ``f`` have the digest ``sha256`` (hex).

    A match is remembered for the unchanged file; ``f`` is rewound after a hash.
    """
    st = os.fstat(f.fileno())
    seen = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, sha256)
    with _HASHED_LOCK:
        if seen in _HASHED:
            return True
    mark = hashlib.sha256(repr(seen + (size,)).encode()).hexdigest()
    # A mark on disk never stands in for the hash when a signature is required: whoever can write the cache
    # folder (or swap a parent of it for a link) could forge "already checked" for a tampered file.
    if not signing.required() and disk_cache.has_mark("sha256_checked", mark):
        with _HASHED_LOCK:
            _HASHED.add(seen)
        return True
    digest = files.sha256_of(f, size)
    f.seek(0)
    if digest != sha256:
        return False
    with _HASHED_LOCK:
        _HASHED.add(seen)
    disk_cache.put_mark("sha256_checked", mark)
    return True
