"""The thumbs stage: JPEG thumbnails of the training images shown as neighbours (runs without training images)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from precompute.context import Context

__all__ = ["build"]


def build(ctx: Context) -> list[str]:
    """Thumbnails of the training images shown as neighbours, for runs that do not keep the training images.

    For every evaluation image and layer (default processing), the ``thumbs.per_layer`` nearest training
    images overall and of the predicted class; each distinct image stored once as a JPEG in
    ``thumbs/bank.npz`` (ids, offsets, bytes), so the app shows neighbours without the training set.
    """
    train, _, _ = ctx.sources()
    per, size, mode = ctx.cfg["thumbs"]["per_layer"], ctx.cfg["thumbs"]["size"], ctx.cfg["scoring"]["mode"]
    labels = ctx.run.load_npy("train_labels.npy")
    wanted: set[int] = set()
    for name in ctx.run.manifest["summary"]["sets"]:
        pred = ctx.run.load_npz(f"evalsets/{name}.npz")["predicted"]
        for layer in ctx.layers():
            I = ctx.run.load_npz(f"neighbours/{name}/{layer}-{mode}.npz")["I"]
            wanted.update(I[:, :per].ravel().tolist())
            for row, p in zip(I, pred):
                wanted.update(row[labels[row] == p][:per].tolist())
    ids = np.array(sorted(i for i in wanted if i >= 0), dtype=np.int64)
    blobs = []
    for s0 in tqdm(range(0, len(ids), 256), desc="thumbnails", disable=not ctx.progress, dynamic_ncols=True):
        for img in train.get(ids[s0:s0 + 256]):
            im = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
            blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    data = np.concatenate(blobs) if blobs else np.empty(0, np.uint8)
    ctx.run.save_npz("thumbs/bank.npz", {"ids": ids, "offsets": offsets, "data": data})
    return ["thumbs/bank.npz"]


def stage_thumbs(ctx: Context) -> list[str]:
    """Thumbnails of the training images shown as neighbours, for runs that do not keep the training images."""
    return [] if ctx.run.is_recorded("train_images.npy") else build(ctx)
