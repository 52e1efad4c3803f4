"""Multi-process runs under ``torchrun``: rank and world size, barriers, and the features stage's chunk shards.

Outside ``torchrun`` (``WORLD_SIZE`` unset or 1) every function here is a no-op for a single process of rank 0.
The features stage splits its rows into chunks; rank ``r`` of ``w`` extracts chunks ``r, r + w, ...`` and
records the chunks it finished in ``progress-<rank>.json``, so a killed run resumes at the first unfinished one.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from core._util.atomic import atomic_path

__all__ = ["rank_world", "barrier", "close", "ChunkProgress"]

log = logging.getLogger(__name__)


def rank_world() -> tuple[int, int]:
    """(rank, world size) under torchrun (the process group is initialised once), else (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        from datetime import timedelta

        # other ranks wait at a barrier while rank 0 runs a whole stage: allow long stages
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timedelta(hours=12))
    return dist.get_rank(), world


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if rank_world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def close() -> None:
    """End the process group (after the last sharded stage)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


class ChunkProgress:
    """Which chunks of ``n`` rows are extracted, as recorded by every rank in ``folder/progress-<rank>.json``.

    Parameters
    ----------
    folder : Path
        Where the progress files live (beside the partial outputs).
    key : str
        The stage's input key; progress recorded under another key or row count is ignored.
    n, chunk : int
        Rows and rows per chunk.
    """

    def __init__(self, folder: Path, key: str, n: int, chunk: int):
        self.folder, self.key, self.n = Path(folder), key, n
        self.n_chunks = (n + chunk - 1) // chunk
        self.chunk = chunk

    def files(self) -> list[Path]:
        """The progress files, sorted."""
        return sorted(self.folder.glob("progress-*.json"))

    def finished(self) -> set[int]:
        """Chunks some rank has recorded as done (unreadable or stale files are ignored)."""
        done: set[int] = set()
        for p in self.files():
            try:
                d = json.loads(p.read_text())
            except (ValueError, OSError):
                continue
            if d.get("key") == self.key and d.get("n") == self.n:
                done |= set(d["done"])
        return done

    def clear(self) -> None:
        """Delete every progress file."""
        for p in self.files():
            p.unlink()

    def mine(self, rank: int, world: int) -> list[int]:
        """The chunks of ``rank``: ``rank, rank + world, ...``."""
        return list(range(rank, self.n_chunks, world))

    def rows(self, ci: int) -> tuple[int, int]:
        """Rows ``[start, stop)`` of chunk ``ci``."""
        return ci * self.chunk, min((ci + 1) * self.chunk, self.n)

    def save(self, rank: int, done: list[int]) -> None:
        """Record (atomically) the chunks ``rank`` has finished."""
        with atomic_path(self.folder / f"progress-{rank}.json") as tmp:
            tmp.write_text(json.dumps({"key": self.key, "n": self.n, "done": sorted(done)}))
