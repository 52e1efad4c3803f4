"""The ``features`` stage: training-set activations of every tapped layer, streamed in chunks into memory-mapped
``.npy`` files (sharded over ``torchrun`` ranks, resumed at the first unfinished chunk)."""

import logging
import os
from pathlib import Path

import numpy as np
import torch

from precompute import distributed
from precompute.context import Context

log = logging.getLogger(__name__)


def stage_features(ctx: Context) -> list[str]:
    """Training-set activations of every tapped layer, streamed in chunks into memory-mapped ``.npy`` files.

    Rows are written into ``features/<layer>.npy.partial`` chunk by chunk, each finished chunk recorded
    (:class:`precompute.distributed.ChunkProgress`), so a killed run resumes at the first unfinished chunk.
    Under ``torchrun`` each rank extracts its own chunks into the shared files.
    """
    from core.models.features import extract

    train, _, _ = ctx.sources()
    model, layers, fc = ctx.model(), ctx.layers(), ctx.cfg["features"]
    rank, world = distributed.rank_world()
    prog = distributed.ChunkProgress(ctx.run.path / "features", ctx.keys["features"], len(train), fc["chunk"])
    partial = {layer: prog.folder / f"{layer}.npy.partial" for layer in layers}
    if rank == 0:
        _open_partials(ctx, prog, partial)
    distributed.barrier()
    done = prog.finished()
    mine = sorted(done & set(prog.mine(rank, world)))
    mm = {layer: np.load(p, mmap_mode="r+") for layer, p in partial.items()}
    for ci in prog.mine(rank, world):
        if ci in done:
            continue
        s0, s1 = prog.rows(ci)
        extract(model, layers, train.rows(s0, s1), batch_size=fc["batch_size"], device=ctx.device,
                out={la: mm[la][s0:s1] for la in layers}, amp=fc["amp"], progress=ctx.progress,
                desc=f"train features {ci + 1}/{prog.n_chunks}", workers=fc["workers"])
        for arr in mm.values():
            arr.flush()
        mine.append(ci)
        prog.save(rank, mine)
    del mm
    distributed.barrier()
    files = [f"features/{layer}.npy" for layer in layers]
    if rank == 0:
        _close_partials(ctx, prog, partial, files)
    return files

def _open_partials(ctx: Context, prog: distributed.ChunkProgress, partial: dict[str, Path]) -> None:
    """Keep the partial files of an interrupted extraction, or start new ones (and forget any progress)."""
    from core.models.features import FeatureExtractor

    c, h, w = ctx.spec().size
    with torch.no_grad():
        _, probe = FeatureExtractor(ctx.model(), ctx.layers()).to(ctx.device)(
            torch.zeros(1, c, h, w, device=ctx.device))
    shape = {layer: (prog.n, probe[layer].shape[1]) for layer in partial}
    prog.folder.mkdir(parents=True, exist_ok=True)
    done = prog.finished()
    if done and all(p.exists() and np.load(p, mmap_mode="r").shape == shape[la] for la, p in partial.items()):
        log.info("features: resuming, %d of %d chunks already done", len(done), prog.n_chunks)
        return
    prog.clear()
    for layer, p in partial.items():
        np.lib.format.open_memmap(p, mode="w+", dtype=np.float32, shape=shape[layer]).flush()

def _close_partials(ctx: Context, prog: distributed.ChunkProgress, partial: dict[str, Path],
                    files: list[str]) -> None:
    """Check every chunk is done, move the partial files into place and record them."""
    missing = set(range(prog.n_chunks)) - prog.finished()
    if missing:
        raise RuntimeError(f"features: chunks {sorted(missing)[:10]} were not extracted")
    for layer, rel in zip(partial, files):
        os.replace(partial[layer], ctx.run.path / rel)
        ctx.run.record(rel)
    prog.clear()
