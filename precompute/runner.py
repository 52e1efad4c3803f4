"""Run the precompute stages of :data:`precompute.stages.STAGES` over one run folder, resumably.

Each stage has an input key (a hash of the config values it reads and the keys of the stages before
it); a stage whose key and output files match the manifest is skipped. Stages that make many files (evaluation sets,
neighbours, indexes) record each file with its key as soon as it is written, so a killed run resumes at
the file it was writing. The shared inputs are in :mod:`precompute.context`, the evaluation sets in
:mod:`precompute.stages.evalsets`, the ``torchrun`` helpers in :mod:`precompute.distributed`.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from core.config.loader import stage_hash
from precompute import distributed
from precompute.context import Context
from precompute.stages import STAGE_NAMES, STAGE_VERSIONS, STAGES

__all__ = ["pending", "run_stages", "stage_keys"]

log = logging.getLogger(__name__)


def _cfg_value(cfg: dict, dotted: str):
    v = cfg
    for p in dotted.split("."):
        v = v[p]
    return v


def stage_keys(cfg: dict) -> dict[str, str]:
    """Input key of every stage: its config values chained with the previous stage's key."""
    keys, prev = {}, ""
    for name, _, sections in STAGES:
        parts = [prev, name, [_cfg_value(cfg, s) for s in sections], cfg["seed"]]
        if name in STAGE_VERSIONS:
            parts.append(STAGE_VERSIONS[name])
        prev = stage_hash(*parts)
        keys[name] = prev
    return keys


def pending(ctx: Context) -> list[str]:
    """Stages that would run (first not-done stage and everything after it)."""
    ctx.keys = stage_keys(ctx.cfg)
    for i, (name, _, _) in enumerate(STAGES):
        if not ctx.run.stage_done(name, ctx.keys[name]):
            return STAGE_NAMES[i:]
    return []


def run_stages(ctx: Context, *, from_stage: str | None = None,
               on_stage: Callable[[str, float, bool], None] | None = None) -> dict[str, float]:
    """Run every pending stage in order; return {stage: seconds} (0 for skipped ones).

    Under ``torchrun`` (WORLD_SIZE > 1) rank 0 runs every stage and the manifest; the other ranks join the
    features stage (their share of the chunks) and then exit.
    """
    ctx.keys = stage_keys(ctx.cfg)
    rank, world = distributed.rank_world()
    if rank == 0:
        _open_run(ctx, from_stage)
    distributed.barrier()
    times: dict[str, float] = {}
    redo = False
    for i, (name, fn, _) in enumerate(STAGES):
        sharded = world > 1 and i <= STAGE_NAMES.index("features")
        if sharded:
            ctx.reload_run()  # rank 0 may have written the manifest
        if not redo and ctx.run.stage_done(name, ctx.keys[name]):
            times[name] = 0.0
            if on_stage and rank == 0:
                on_stage(name, ctx.run.manifest["stages"][name]["seconds"], True)
        else:
            redo = True  # everything after a recomputed stage is recomputed too
            if rank == 0 or name == "features":
                times[name] = _run_one(ctx, name, fn, rank == 0, on_stage)
        if sharded:
            distributed.barrier()  # the other ranks wait for rank 0's stages up to the features
            if name == "features":
                distributed.close()
                if rank != 0:
                    break  # the rest is rank 0's
    return times


def _open_run(ctx: Context, from_stage: str | None) -> None:
    """Invalidate from ``from_stage`` on, remove leftovers of a killed run, write config and summary headers."""
    if from_stage is not None:
        again = STAGE_NAMES[STAGE_NAMES.index(from_stage):]
        ctx.run.invalidate(again, item_keys={ctx.keys[s] for s in again})
    removed = ctx.run.clean_tmp()
    if removed:
        log.info("removed %d leftover temporary files from a killed run", removed)
    ctx.run.manifest["config"] = ctx.cfg
    ctx.run.manifest.setdefault("summary", {}).update(
        layers=ctx.layers(), modes=list(ctx.cfg["processing"]["modes"]), model=ctx.cfg["model"]["name"],
        k_max=ctx.cfg["scoring"]["k_max"], defaults={k: ctx.cfg["scoring"][k] for k in ("k", "fn", "mode")})
    ctx.run.manifest["versions"] = _versions()
    ctx.run.save_manifest()


def _run_one(ctx: Context, name: str, fn: Callable[[Context], list[str]], record: bool,
             on_stage: Callable[[str, float, bool], None] | None) -> float:
    """Run one stage; with ``record`` (rank 0) mark it done in the manifest and report it."""
    t0 = time.perf_counter()
    files = fn(ctx)
    seconds = time.perf_counter() - t0
    if record:
        ctx.run.mark_stage(name, ctx.keys[name], files, seconds)
        if on_stage:
            on_stage(name, seconds, False)
    return seconds


def _versions() -> dict[str, str]:
    import platform

    import faiss
    import scipy
    import sklearn
    import torchvision

    return {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "faiss": faiss.__version__, "scipy": scipy.__version__,
            "scikit-learn": sklearn.__version__, "cpu_count": str(os.cpu_count())}
