"""The ``neighbours`` stage: the top-``k_max`` training neighbours of every evaluation image, per (layer, mode)."""

import logging

import numpy as np

from core.knn import index as knn_index
from core.knn import processing
from precompute.context import Context

log = logging.getLogger(__name__)


def stage_neighbours(ctx: Context) -> list[str]:
    """Top-K_max training neighbours (ids, squared distances) of every evaluation image, per (layer, mode)."""
    from tqdm.auto import tqdm

    from core.models.features import extract

    key, k_max = ctx.keys["neighbours"], ctx.cfg["scoring"]["k_max"]
    sets = list(ctx.run.manifest["summary"]["sets"])
    files = []
    params = {(la, mo): ctx.run.load_npz(f"processing/{la}-{mo}.npz") for la, mo in ctx.pairs()}
    indexes: dict = {}
    for name in tqdm(sets, desc="neighbours", disable=not ctx.progress, dynamic_ncols=True):
        rels = {(la, mo): f"neighbours/{name}/{la}-{mo}.npz" for la, mo in ctx.pairs()}
        files += rels.values()
        todo = [p for p, rel in rels.items() if not ctx.run.item_done(rel, key)]
        if not todo:
            continue
        images = ctx.run.load_npz(f"evalsets/{name}.npz")["images"]
        _, feats = extract(ctx.model(), ctx.layers(), images, batch_size=ctx.cfg["features"]["batch_size"],
                           device=ctx.device) if len(images) else (None, None)
        for la, mo in todo:
            if len(images):
                if (la, mo) not in indexes:
                    indexes[(la, mo)] = knn_index.open_saved(ctx.run, f"index/{la}-{mo}.faiss")
                D, I = knn_index.search(indexes[(la, mo)], processing.apply(params[(la, mo)], feats[la]), k_max,
                                        device=ctx.device)
            else:
                D, I = np.empty((0, k_max), np.float32), np.empty((0, k_max), np.int64)
            ctx.run.save_npz(rels[(la, mo)], {"I": I.astype(np.int32), "D": D.astype(np.float32)}, key=key)
    return files
