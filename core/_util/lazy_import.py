"""Lazy imports that other threads may be making at the same time: one process-wide lock, a retry on a race.

>>> import_locked("json").dumps([1])
'[1]'
"""
from __future__ import annotations

import importlib
import logging
import threading
import time
from types import ModuleType

__all__ = ["import_locked"]

logger = logging.getLogger(__name__)
_IMPORT_LOCK = threading.Lock()


def import_locked(module: str, *, tries: int = 3) -> ModuleType:
    """``importlib.import_module(module)`` under one process-wide lock, retried on an import race.

    The attacks import ART (and SciPy) lazily, on the thread that runs them, and the app imports scikit-learn's
    metrics on a background thread after its first page (``app_ui.cache.warm_imports``). ART's package
    imports itself in a circle (``art`` -> ``art.attacks`` -> ``art.estimators`` -> ``art``) and imports
    scikit-learn and SciPy too: two threads importing these in different orders fail with Python's
    ``_DeadlockError`` or "cannot import name ... from partially initialized module" (the likely cause of a
    CI failure of the app's load test). Every such lazy import goes through this lock. A thread outside it (a page importing a module that
    imports scikit-learn) can still meet one mid-import; such a failure is transient, so the import is tried
    ``tries`` times, 0.5 s apart. Once imported this is a dictionary lookup under the lock.
    """
    attempt = 1
    while True:
        with _IMPORT_LOCK:
            try:
                return importlib.import_module(module)
            except (ImportError, RuntimeError) as e:  # _DeadlockError is a RuntimeError
                if attempt >= tries or not _import_race(e):
                    raise
                logger.warning("importing %s met another thread's import (%s); trying again", module, e)
        attempt += 1
        time.sleep(0.5)


def _import_race(e: BaseException) -> bool:
    """Whether an import failure is one of Python's signs of two threads importing the same modules at once."""
    text = str(e)
    return type(e).__name__ == "_DeadlockError" or "partially initialized module" in text or "deadlock" in text
