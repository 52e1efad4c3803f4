"""The ``index`` stage: a faiss index per (layer, mode) over the processed training features."""

import logging

from core.knn import index as knn_index
from core.knn import processing
from precompute.context import Context

log = logging.getLogger(__name__)


def stage_index(ctx: Context) -> list[str]:
    """A faiss index per (layer, mode) over the processed training features."""
    from tqdm.auto import tqdm

    files = []
    key = ctx.keys["index"]
    for layer, mode in tqdm(ctx.pairs(), desc="indexes", disable=not ctx.progress, dynamic_ncols=True):
        rel, f16 = f"index/{layer}-{mode}.faiss", knn_index.refine_rel(f"index/{layer}-{mode}.faiss")
        pair = [rel, f16] if ctx.run.manifest["files"].get(f16, {}).get("key") == key else [rel]
        if all(ctx.run.item_done(r, key) for r in pair):
            files += pair
            continue
        files.append(rel)
        params = ctx.run.load_npz(f"processing/{layer}-{mode}.npz")
        xb = processing.apply(params, ctx.run.load_npy(f"features/{layer}.npy", mmap=True))
        idx = knn_index.build(xb, kind=ctx.cfg["index"]["kind"], nprobe=ctx.cfg["index"]["nprobe"],
                              ef_search=max(1200, ctx.cfg["scoring"]["k_max"] + 200), seed=ctx.cfg["seed"])
        ctx.run.forget(f16)
        if isinstance(idx, (knn_index.Refined, knn_index.PQScan)):
            ctx.run.save_npy(f16, idx.xb16, key=key)
            files.append(f16)
            idx = idx.coarse
        ctx.run.save_faiss(rel, idx, key=key)
    return files
