"""Images on a page: nearest-neighbour upscaling, captions, grids and the perturbation picture."""
from __future__ import annotations

import numpy as np
import streamlit as st


def upscale(image: np.ndarray, size: int = 224) -> np.ndarray:
    """uint8 (H, W, C) -> a bigger copy by pixel repetition (nearest neighbour: no blur), grey as (H', W')."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    f = max(1, size // max(img.shape[:2]))
    return np.repeat(np.repeat(img, f, axis=0), f, axis=1) if f > 1 else img


#: Frame around a shown image (mid-grey: visible on a light and on a dark page, around white and black images).
FRAME_PX, FRAME_GREY = 2, 128


def framed(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W) or (H, W, C) with a mid-grey frame of :data:`FRAME_PX` pixels around it."""
    pad = ((FRAME_PX, FRAME_PX), (FRAME_PX, FRAME_PX)) + ((0, 0),) * (image.ndim - 2)
    return np.pad(image, pad, constant_values=FRAME_GREY)


def show_image(image: np.ndarray, caption: str | None = None, *, size: int = 224, where=st) -> None:
    """Show an image at a readable size (nearest-neighbour upscaling), framed so that a white or black image
    stays visible, with a caption (Markdown: escape run text)."""
    where.image(framed(upscale(image, size)), caption=caption, width=size)


def side_by_side(images: list[np.ndarray], *, size: int, gap: int = 8) -> np.ndarray:
    """uint8 images of one shape (H, W, C), each upscaled to ``size`` and :func:`framed`, in a row with ``gap``
    transparent pixels between them: one RGBA image (H', n W' + (n - 1) gap, 4), so one element and one file for
    the browser instead of n."""
    tiles = []
    for im in images:
        t = framed(upscale(im, size))
        rgb = np.repeat(t[:, :, None], 3, axis=2) if t.ndim == 2 else t[:, :, :3]
        tiles.append(np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2))
    if len({t.shape for t in tiles}) != 1:
        raise ValueError(f"images of one shape needed, not {[im.shape for im in images]}")
    blank = np.zeros((tiles[0].shape[0], gap, 4), np.uint8)
    row = [tiles[0]]
    for t in tiles[1:]:
        row += [blank, t]
    return np.concatenate(row, axis=1)


def image_grid(images: list[np.ndarray], captions: list[str], *, size: int = 96, where=st) -> None:
    """Images side by side (wrapping), each with its caption (Markdown: escape run text): one element, so one
    message per rerun."""
    if images:
        where.image([upscale(im, size) for im in images], caption=captions, width=size)


def perturbation_image(original: np.ndarray, adversarial: np.ndarray) -> tuple[np.ndarray, float]:
    """Signed perturbation of uint8 (H, W, C) images shown as an image: mid-grey = unchanged, lighter/darker =
    pixel raised/lowered, amplified so the largest change reaches black or white. Returns (uint8 image,
    amplification)."""
    d = adversarial.astype(np.float64) - original.astype(np.float64)
    m = float(np.abs(d).max())
    amp = 127.0 / m if m > 0 else 1.0
    return np.clip(np.round(128 + d * amp), 0, 255).astype(np.uint8), amp
