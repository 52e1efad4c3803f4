"""The ``processing`` stage: each processing mode fitted per layer on the training features."""

import logging

from core.knn import processing
from precompute.context import Context

log = logging.getLogger(__name__)


def stage_processing(ctx: Context) -> list[str]:
    """Fit each processing mode per layer on the training features; what each does, in words
    (:func:`core.knn.processing.describe`), goes to the manifest's ``summary.processing_labels[layer][mode]``."""
    files, labels = [], {}
    for layer, mode in ctx.pairs():
        rel = f"processing/{layer}-{mode}.npz"
        feats = ctx.run.load_npy(f"features/{layer}.npy", mmap=True)
        params = processing.fit(feats, mode, dim=ctx.cfg["processing"]["pca_dim"], seed=ctx.cfg["seed"])
        ctx.run.save_npz(rel, params)
        labels.setdefault(layer, {})[mode] = processing.describe(params, int(feats.shape[1]))
        files.append(rel)
    ctx.run.manifest.setdefault("summary", {})["processing_labels"] = labels
    ctx.run.save_manifest()
    return files
