"""Optional HMAC-SHA256 signature of a run's manifest, with a secret key kept outside the run.

    python -m precompute --sign data/runs/fmnist      # creates the key (0600) if missing, writes manifest.sig

The key file is ``$KNNGUARD_SIGNING_KEY`` or ``~/.config/knnguard/signing.key`` (64 hex digits). Loading checks a
present signature whenever a key is there; ``KNNGUARD_REQUIRE_SIGNATURE=1`` (or ``require_signature=True``)
refuses an unsigned run.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
from pathlib import Path

from core.errors import SigningKeyError

__all__ = ["SIGNATURE", "SigningKeyError", "key_path", "load_key", "create_key", "required", "sign", "matches"]

log = logging.getLogger(__name__)

#: The signature file, beside ``manifest.json``.
SIGNATURE = "manifest.sig"
_ENV_KEY = "KNNGUARD_SIGNING_KEY"
_ENV_REQUIRE = "KNNGUARD_REQUIRE_SIGNATURE"
_DEFAULT_KEY = Path("~/.config/knnguard/signing.key")
_PREFIX = b"knnguard-manifest-v1\n"
_SCHEME = "hmac-sha256"
_KEY_BYTES = 32



def key_path() -> Path:
    """The key file: ``$KNNGUARD_SIGNING_KEY`` if set, else ``~/.config/knnguard/signing.key``."""
    env = os.environ.get(_ENV_KEY)
    return Path(env).expanduser() if env else _DEFAULT_KEY.expanduser()


def required() -> bool:
    """Whether ``$KNNGUARD_REQUIRE_SIGNATURE`` asks every loaded run to carry a valid signature."""
    return os.environ.get(_ENV_REQUIRE, "").strip().lower() in ("1", "true", "yes", "on")


def load_key() -> bytes | None:
    """The signing key, or None when the key file does not exist.

    Raises
    ------
    SigningKeyError
        The key file is not a regular file, others may write it, or it does not hold at least 16 bytes as hex.
    """
    p = key_path()
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if os.environ.get(_ENV_KEY):
            log.warning("%s: no signing key there (named by $%s)", p, _ENV_KEY)
        return None
    if not stat.S_ISREG(st.st_mode):
        raise SigningKeyError(f"{p}: signing key is not a regular file")
    if st.st_mode & 0o022:  # whoever may write the key may sign any run (ssh refuses such a private key)
        raise SigningKeyError(f"{p}: signing key is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}); "
                              "chmod 600 it, or make a new key if you cannot trust it")
    if st.st_mode & 0o044:
        log.warning("%s: signing key is readable by other users (chmod 600 it)", p)
    with open(p, "rb") as f:
        text = f.read(1024)
    try:
        key = bytes.fromhex(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise SigningKeyError(f"{p}: signing key is not hex") from None
    if len(key) < 16:
        raise SigningKeyError(f"{p}: signing key is shorter than 16 bytes")
    return key


def create_key() -> tuple[bytes, Path]:
    """The signing key, created (32 random bytes as hex, mode 0600, folder 0700) when missing; and its path."""
    key = load_key()
    p = key_path()
    if key is not None:
        return key, p
    p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.token_bytes(_KEY_BYTES)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    log.info("created signing key %s", p)
    return key, p


def sign(key: bytes, manifest: bytes) -> str:
    """The signature text of the exact bytes of ``manifest.json``."""
    return f"{_SCHEME} {hmac.new(key, _PREFIX + manifest, hashlib.sha256).hexdigest()}\n"


def matches(key: bytes, manifest: bytes, signature: str) -> bool:
    """Whether ``signature`` (text of ``manifest.sig``) is ``key``'s signature of ``manifest`` (constant time)."""
    return hmac.compare_digest(sign(key, manifest).strip().encode(), signature.strip().encode())
