"""The unbounded decode of upload bytes, in this process: what a worker of :mod:`core.uploads.sandbox` runs.

Nothing here bounds time or memory; :func:`core.uploads.read.read_upload` is the entry point that does.
"""

from __future__ import annotations

import io
import logging
import warnings

from PIL import Image, ImageFile, ImageOps

from core.uploads.policy import (
    ACCEPTED_FORMATS,
    MAX_JPEG_SCANS,
    MAX_PIXELS,
    NO_MEMORY_MESSAGE,
    PIL_ERRORS,
    UploadError,
    bomb,
    is_text_bomb,
    jpeg_scans,
    not_an_image,
    sniff,
    text_bomb,
    truncated,
)
from core.uploads.transforms import to_rgb_or_l

__all__ = ["decode_in_process"]

logger = logging.getLogger(__name__)


def decode_in_process(data: bytes, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode in this process, without time or memory bounds: what a worker of :func:`read_upload` runs.

    Parameters
    ----------
    data : bytes
        The whole file, non-empty.
    max_pixels : int, default MAX_PIXELS
        Largest ``width * height`` accepted.

    Returns
    -------
    PIL.Image.Image
        As :func:`read_upload`.

    Raises
    ------
    UploadError
        As :func:`read_upload`, except ``"too_slow"`` and ``"decoder_failed"``.
    """
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = _open_and_load(data, max_pixels=max_pixels)
                try:
                    upright = _exif_transpose(img)
                finally:
                    img.close()
            finally:
                for w in caught:
                    logger.debug("Pillow warned while reading an upload: %s: %s", w.category.__name__, w.message)
        return to_rgb_or_l(upright)
    except MemoryError as exc:
        logger.debug("upload: out of memory while decoding: %r", exc)
        raise UploadError("too_large", NO_MEMORY_MESSAGE) from None


def _open_and_load(data: bytes, *, max_pixels: int) -> ImageFile.ImageFile:
    """Open with the allow-list, check the header, refuse animations, then decode the first frame."""
    sniffed = sniff(data)
    try:
        img = Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
    except Image.DecompressionBombError as exc:
        logger.debug("upload refused by Pillow's bomb check at open: %r", exc)
        raise bomb(2 * (Image.MAX_IMAGE_PIXELS or 0), max_pixels) from exc
    except Image.DecompressionBombWarning as exc:
        logger.debug("upload refused by Pillow's bomb warning at open: %r", exc)
        raise bomb(Image.MAX_IMAGE_PIXELS or 0, max_pixels) from exc
    except PIL_ERRORS as exc:
        logger.debug("upload could not be opened (signature: %s): %r", sniffed, exc)
        if is_text_bomb(exc):
            raise text_bomb() from exc
        raise (truncated(sniffed) if sniffed else not_an_image(data)) from exc

    fmt = img.format or sniffed or "image"
    try:
        if fmt in ("JPEG", "MPO"):
            scans = jpeg_scans(data)  # of the first image: 200 concatenated JPEGs are one picture, not 200 scans
            if scans > MAX_JPEG_SCANS:
                raise UploadError(
                    "too_slow",
                    f"The JPEG file has {scans} scans (an ordinary progressive JPEG has about 10; at most "
                    f"{MAX_JPEG_SCANS} are accepted), so decoding it would take too long. Re-save it and try again.",
                )
        w, h = img.size
        if w < 1 or h < 1:
            raise UploadError("too_small", f"The image is {w}×{h} pixels; it must be at least 1×1.")
        if w * h > max_pixels:
            raise UploadError(
                "too_large",
                f"The image is {w}×{h} pixels ({w * h / 1e6:.1f} megapixels); "
                f"uploads are limited to {max_pixels / 1e6:.1f} megapixels.",
            )
        try:
            # MPO is how Pillow opens a camera JPEG carrying extra (preview, depth) pictures: a still.
            animated = img.format != "MPO" and bool(getattr(img, "is_animated", False))
        except PIL_ERRORS as exc:
            logger.debug("upload: counting frames failed: %r", exc)
            raise truncated(fmt) from exc
        if animated:
            raise UploadError(
                "animated",
                f"The {fmt} file has more than one frame; animated or multi-page images are not "
                "supported. Upload a single still image (e.g. one frame exported as PNG).",
            )
        try:
            img.seek(0)
            img.load()
        except MemoryError as exc:
            logger.debug("upload: out of memory while decoding: %r", exc)
            raise UploadError(
                "too_large", f"There is not enough memory to decode this {w}×{h} image."
            ) from exc
        except PIL_ERRORS as exc:
            logger.debug("upload: decoding failed: %r", exc)
            if is_text_bomb(exc):
                raise text_bomb() from exc
            raise truncated(fmt) from exc
    except BaseException:
        img.close()
        raise
    return img


def _exif_transpose(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (always returns a new, loaded image); ignore unreadable EXIF."""
    try:
        return ImageOps.exif_transpose(img)
    except PIL_ERRORS as exc:
        logger.debug("upload: EXIF orientation unreadable, ignored: %r", exc)
        return img.copy()
