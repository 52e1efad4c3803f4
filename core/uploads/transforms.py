"""Model-input geometry: any decoded image to the ``uint8`` array ``(H, W, C)`` a model expects.

:func:`to_rgb_or_l` maps every Pillow pixel mode to ``"RGB"`` or ``"L"``; :func:`image_to_array` then resizes,
centre-crops and converts, as torchvision's ``Resize`` + ``CenterCrop``. See docs/design.md#model-input for the
rules and docs/design.md#pixel-modes for the mode mapping.

Examples
--------
>>> from PIL import Image
>>> image_to_array(Image.new("RGB", (40, 30)), size=(28, 28), channels=1).shape
(28, 28, 1)
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from core.uploads.policy import UploadError

__all__ = ["EXACT_RESIZE_PIXELS", "image_to_array", "to_rgb_or_l"]

EXACT_RESIZE_PIXELS: int = 1 << 22
"""Largest intermediate (resized, uncropped) image :func:`image_to_array` makes; beyond it only the crop is
resampled."""


def image_to_array(
    img: Image.Image, *, size: tuple[int, int], channels: int, resize: int | None = None
) -> np.ndarray:
    """Resize, centre-crop and convert an image to the ``uint8`` array a model expects.

    With ``resize``, exactly torchvision's ``Resize(resize) + CenterCrop(size)`` (a model's eval transform,
    e.g. 342 -> 299); without it, or when that would not cover ``size``, the one scale that just covers
    ``size``. Downscaling uses ``LANCZOS``, upscaling ``BICUBIC``. See docs/design.md#model-input.

    Parameters
    ----------
    img : PIL.Image.Image
        A decoded image, typically from :func:`core.uploads.read.read_upload`; any mode :func:`to_rgb_or_l` takes.
    size : tuple of int
        Target ``(H, W)`` (height first, as torchvision).
    channels : {1, 3}
        1 converts to grey (``"L"``, ITU-R 601-2 luma, as torchvision's ``Grayscale``); 3 to ``"RGB"``
        (a grey source is replicated into three channels).
    resize : int, optional
        Length of the shorter side before the centre crop; None scales to just cover ``size``.

    Returns
    -------
    numpy.ndarray of shape (H, W, channels), dtype uint8
        C-contiguous and writable; values in ``[0, 255]`` (not normalised).

    Raises
    ------
    ValueError
        If ``size`` is not two positive ints, ``channels`` is not 1 or 3, or ``resize`` is not a
        positive int or None.
    UploadError
        If ``img`` has a pixel mode that cannot be converted (``reason="unsupported_mode"``).

    Examples
    --------
    >>> image_to_array(Image.new("L", (400, 300)), size=(299, 299), channels=3, resize=342).shape
    (299, 299, 3)
    """
    _check_geometry(size, channels, resize)
    out_h, out_w = int(size[0]), int(size[1])

    img = to_rgb_or_l(img)
    img = img.convert("L" if channels == 1 else "RGB")

    w, h = img.size
    new_w, new_h, scale = _resized(w, h, out_w, out_h, resize)
    # torchvision's CenterCrop rounding.
    top = int(round((new_h - out_h) / 2.0))
    left = int(round((new_w - out_w) / 2.0))
    if (new_w, new_h) != (w, h):
        resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
        if new_w * new_h > EXACT_RESIZE_PIXELS:
            # Resample only the source box that maps onto the crop (same filter and scale).
            box = (left * w / new_w, top * h / new_h, (left + out_w) * w / new_w, (top + out_h) * h / new_h)
            img = img.resize((out_w, out_h), resample, box=box)
            new_w, new_h = out_w, out_h
        else:
            img = img.resize((new_w, new_h), resample)
    if (new_w, new_h) != (out_w, out_h):
        img = img.crop((left, top, left + out_w, top + out_h))

    arr = np.array(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, np.newaxis]
    return np.ascontiguousarray(arr)


def _check_geometry(size: tuple[int, int], channels: int, resize: int | None) -> None:
    """ValueError unless ``size`` is two positive ints, ``channels`` 1 or 3 and ``resize`` a positive int or None."""
    if (
        not isinstance(size, (tuple, list))
        or len(size) != 2
        or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in size)
    ):
        raise ValueError(f"size must be (H, W) with two positive ints, got {size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    if resize is not None and (isinstance(resize, bool) or not isinstance(resize, (int, np.integer)) or resize < 1):
        raise ValueError(f"resize must be a positive int (shorter side) or None, got {resize!r}")


def _resized(w: int, h: int, out_w: int, out_h: int, resize: int | None) -> tuple[int, int, float]:
    """``(new_w, new_h, scale)`` of the resize before the centre crop of :func:`image_to_array`."""
    new_w = new_h = 0
    scale = 1.0
    if resize is not None:  # torchvision Resize(int): shorter side -> resize, longer side truncated
        resize = int(resize)
        scale = resize / min(w, h)
        new_w, new_h = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    if new_w < out_w or new_h < out_h:
        # Just cover size: one scale factor, set by the side that must match exactly; the other side is
        # truncated as in torchvision's Resize(int).
        if out_w * h >= out_h * w:
            scale = out_w / w
            new_w, new_h = out_w, max(out_h, int(out_w * h / w))
        else:
            scale = out_h / h
            new_w, new_h = max(out_w, int(out_h * w / h)), out_h
    return new_w, new_h, scale


def to_rgb_or_l(img: Image.Image) -> Image.Image:
    """Convert any decoded pixel mode to ``"RGB"`` (colour sources) or ``"L"`` (grey sources).

    Transparency is composited on white; 16-bit, 32-bit and float grey are scaled to ``[0, 255]`` without
    clipping. The mapping, mode by mode, is in docs/design.md#pixel-modes.

    Parameters
    ----------
    img : PIL.Image.Image
        A decoded image.

    Returns
    -------
    PIL.Image.Image
        ``img`` itself when it is already ``"RGB"`` or ``"L"`` without a transparent colour key, else a new image.

    Raises
    ------
    UploadError
        ``reason="unsupported_mode"`` for a mode with no conversion here.
    """
    mode = img.mode
    has_key = "transparency" in img.info
    if mode in ("RGB", "L") and not has_key:
        return img
    if mode == "1":
        return img.convert("L")
    if mode in ("L", "LA", "La"):
        return _flatten(img.convert("LA"))
    if mode == "P" and not has_key:
        return img.convert("RGB")
    if mode in ("P", "PA", "RGB", "RGBA", "RGBa"):
        return _flatten(img.convert("RGBA"))
    if mode in ("RGBX", "CMYK", "YCbCr", "LAB", "HSV"):
        return img.convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_deep_to_uint8(np.asarray(img), mode))
    raise UploadError("unsupported_mode", f"Images with pixel mode {mode!r} are not supported.")


def _flatten(img: Image.Image) -> Image.Image:
    """Composite an ``"LA"`` or ``"RGBA"`` image over white, returning ``"L"`` or ``"RGB"``."""
    base_mode = img.mode[:-1]
    out = Image.new(base_mode, img.size, 255 if base_mode == "L" else (255, 255, 255))
    out.paste(img.convert(base_mode), mask=img.getchannel("A"))
    return out


def _deep_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale a 16-bit, 32-bit int or float grey array to uint8 without clipping."""
    if mode.startswith("I;16"):
        return _scale_uint16(arr)
    if mode == "I":
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return _scale_uint16(arr)
        return _stretch(arr.astype(np.float64))
    values = np.where(np.isfinite(arr), arr, 0).astype(np.float64)
    if values.size and values.min() >= 0.0 and values.max() <= 1.0:
        return np.rint(values * 255.0).astype(np.uint8)
    return _stretch(values)


def _scale_uint16(arr: np.ndarray) -> np.ndarray:
    """``round(v * 255 / 65535)`` for ``v`` in ``[0, 65535]``, exact in integers."""
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _stretch(values: np.ndarray) -> np.ndarray:
    """Linearly map ``[min, max]`` of ``values`` onto ``[0, 255]``; a constant array becomes 0."""
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)
