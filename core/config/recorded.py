"""What a loaded run gets: its recorded config, checked like the CLI's, and its model builder (never the run's).

Used by :meth:`core.detector.Detector.load`.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from core.errors import ArtefactError
from core.models import entrypoints
from core.models.entrypoints import NeedsEntryPoint
from core.runs.folder import RunDir

__all__ = ["recorded_config", "model_builder"]


def recorded_config(run: RunDir) -> dict:
    """The run's recorded config, checked by the precompute CLI's validator (defaults filled in).

    Raises
    ------
    ArtefactError
        The recorded config is not one the CLI accepts (the message names the manifest).
    """
    from core.config.loader import validate_recorded
    from core.errors import ConfigError

    try:
        return validate_recorded(run.manifest.get("config"))
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        raise ArtefactError(f"{run.path / 'manifest.json'}: the recorded config is invalid ({e}); refusing the "
                            "run") from e


def model_builder(run: RunDir, model_cfg: dict,
                   entry: str | Callable[[], torch.nn.Module] | None) -> Callable[[], torch.nn.Module] | None:
    """The builder of a custom-model run, from the caller or the operator's allow-list (never from the run).

    Returns None for a zoo model. Raises :class:`NeedsEntryPoint` for a custom model nobody supplied, and
    ``ValueError`` for an ``entry`` given with a zoo model or one that cannot be imported.
    """
    if not entrypoints.is_custom(model_cfg):
        if entry is not None:
            raise ValueError(f"run {run.path} uses the zoo model {model_cfg.get('name')!r}; entry applies to "
                             "custom models only")
        return None
    if entry is None:
        why = entrypoints.needs_entry(run.manifest, where=f"run {run.path}")
        if why:
            raise NeedsEntryPoint(why)
        entry = model_cfg["entry"]  # on the operator's allow-list
    return entry if callable(entry) else entrypoints.load(entry)
