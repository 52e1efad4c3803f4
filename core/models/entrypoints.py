"""Custom-model entry points (``"package.module:build_fn"``): who may name one, and importing it.

A run folder is untrusted, so the entry point recorded in its manifest is never imported on the run's word. Code
comes from the caller (``Detector.load(run, entry=...)``) or from the operator's allow-list, the environment
variable ``KNNGUARD_ALLOWED_ENTRIES`` (comma-separated entry points)::

    KNNGUARD_ALLOWED_ENTRIES=examples.custom_model:build streamlit run app.py

No torch here: the app checks a run with :func:`needs_entry` before it loads anything.
"""
from __future__ import annotations

import importlib
import logging
import os
import re
from collections.abc import Callable
from typing import Any

from core.errors import ArtefactError

__all__ = ["ALLOWED_ENV", "NeedsEntryPoint", "allowed", "is_custom", "needs_entry", "parse", "load"]

log = logging.getLogger(__name__)

#: Environment variable holding the operator's allow-list of entry points.
ALLOWED_ENV = "KNNGUARD_ALLOWED_ENTRIES"
_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


class NeedsEntryPoint(ArtefactError):
    """A custom-model run whose entry point neither the caller nor the operator's allow-list supplies."""


def parse(spec: str) -> tuple[str, str]:
    """``"package.module:fn"`` -> ``("package.module", "fn")``; anything else raises ``ValueError``."""
    if not isinstance(spec, str) or not _SPEC.match(spec):
        raise ValueError(f"model entry point must look like 'package.module:build_fn', got {spec!r}")
    mod, fn = spec.split(":")
    return mod, fn


def allowed() -> frozenset[str]:
    """Entry points the operator allows (``$KNNGUARD_ALLOWED_ENTRIES``, comma-separated; malformed ones dropped)."""
    out = set()
    for s in os.environ.get(ALLOWED_ENV, "").split(","):
        s = s.strip()
        if not s:
            continue
        try:
            parse(s)
        except ValueError:
            log.warning("%s: ignoring malformed entry point %r", ALLOWED_ENV, s)
            continue
        out.add(s)
    return frozenset(out)


def is_custom(model_cfg: Any) -> bool:
    """Whether a config's ``[model]`` table names a custom (user-code) model."""
    return isinstance(model_cfg, dict) and model_cfg.get("name") == "custom"


def needs_entry(manifest: dict, where: str = "this run") -> str | None:
    """Why a run cannot be opened without an entry point from the caller, or None when it can.

    Parameters
    ----------
    manifest : dict
        The run's manifest.
    where : str
        How the message names the run.
    """
    model = manifest.get("config", {}).get("model") if isinstance(manifest.get("config"), dict) else None
    if not is_custom(model):
        return None
    recorded = model.get("entry")
    if isinstance(recorded, str) and recorded in allowed():
        return None
    return (f"{where} uses a custom model whose code is not part of the run: a run never supplies code, so its "
            f"recorded entry point {recorded!r} is not imported. Pass the builder yourself "
            "(Detector.load(run, entry='package.module:build_fn' or a callable)), or, as the operator, allow it: "
            f"{ALLOWED_ENV}='package.module:build_fn' (comma-separated).")


def load(spec: str) -> Callable[..., Any]:
    """Import ``"package.module:function"`` and return the function.

    Call it only with a spec from the caller, the operator or a config file the user passed, never from a run.

    Raises
    ------
    ValueError
        Malformed spec, missing module or attribute (the message says which).
    """
    mod_name, fn_name = parse(spec)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"cannot import {mod_name!r} for model entry point {spec!r}: {e}") from e
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise ValueError(f"{mod_name!r} has no callable {fn_name!r} (model entry point {spec!r})")
    return fn
