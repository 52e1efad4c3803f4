"""The ``data`` stage: training labels (and images when they fit), class names, set sizes."""

import logging
from pathlib import Path

import numpy as np

from core.config.loader import check_sizes
from core.data.datasets import ArraySource
from precompute.context import Context

log = logging.getLogger(__name__)


def stage_data(ctx: Context) -> list[str]:
    """Training labels (and images when they fit: neighbour thumbnails), class names, set sizes."""
    train, test, classes = ctx.sources()
    check_sizes(ctx.cfg, n_train=len(train), n_test=len(test))
    files = ["train_labels.npy", "classes.json"]
    ctx.run.save_npy("train_labels.npy", train.labels.astype(np.int64))
    ctx.run.save_json("classes.json", classes)
    if isinstance(train, ArraySource):
        ctx.run.save_npy("train_images.npy", train.images)
        files.append("train_images.npy")
    else:  # image folders: record where each training image is (thumbnails are stored by the thumbs stage)
        root = Path(train.root).resolve()
        ctx.run.save_json("train_paths.json", {"root": str(root),
                                               "paths": [str(Path(p).resolve().relative_to(root)) for p in train.paths]})
        files.append("train_paths.json")
    return files
