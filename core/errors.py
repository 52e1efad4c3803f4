"""Every error knnguard raises on purpose derives from :class:`KnnguardError`.

Each class also keeps the built-in base its callers already catch (``RuntimeError``, ``ValueError``,
``FileNotFoundError``), so ``except KnnguardError`` catches them all and older ``except`` clauses still work.
Errors whose home module gives them behaviour subclass these there: :class:`core.uploads.policy.UploadError`,
:class:`core.models.entrypoints.NeedsEntryPoint`, :class:`core.detector.IncompleteRun`,
:class:`precompute.runlock.NotARun`, :class:`precompute.runlock.RunBusy`.

Examples
--------
>>> from core.errors import ArtefactError, KnnguardError
>>> issubclass(ArtefactError, KnnguardError) and issubclass(ArtefactError, RuntimeError)
True
"""
from __future__ import annotations

__all__ = ["KnnguardError", "ArtefactError", "ConfigError", "SigningKeyError", "DatasetNotFound", "AttackCancelled"]


class KnnguardError(Exception):
    """Base of every error knnguard raises on purpose; the message says what is wrong and how to fix it."""


class ArtefactError(KnnguardError, RuntimeError):
    """A run-folder file is missing, changed, truncated or malformed; the message names the file."""


class ConfigError(KnnguardError, ValueError):
    """A config that cannot be used; the message says which key and why."""


class SigningKeyError(KnnguardError, RuntimeError):
    """The key file named by the environment is missing or malformed."""


class DatasetNotFound(KnnguardError, FileNotFoundError):
    """The dataset files are not on this machine; the message says how to get them."""


class AttackCancelled(KnnguardError):
    """An attack stopped between two steps because its ``cancel`` flag was set (a live attack past its deadline)."""
