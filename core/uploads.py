"""Read user-supplied image bytes safely: the one entry point for every upload.

:func:`read_upload` turns the raw bytes of an upload into a fully decoded, EXIF-upright PIL image in mode
``"RGB"`` or ``"L"``, or raises :class:`UploadError` (``e.reason`` is a short code, ``str(e)`` a sentence a UI
can show). Decoding runs in a bounded worker process (:mod:`core.upload_sandbox`); :func:`decode_in_process` is
the unbounded decode it runs. :func:`core.transforms.image_to_array` then makes the array a model expects.
The refusal reasons are in :mod:`core.upload_policy`; the policy case by case, and what Pillow does behind it,
in docs/design.md#uploads.

Examples
--------
>>> from core.uploads import read_upload                  # doctest: +SKIP
>>> from core.transforms import image_to_array            # doctest: +SKIP
>>> img = read_upload(uploaded_file.getvalue())           # doctest: +SKIP
>>> x = image_to_array(img, size=(28, 28), channels=1)    # doctest: +SKIP
"""

from __future__ import annotations

import io
import logging
import warnings

from PIL import Image, ImageFile, ImageOps

from core.transforms import to_rgb_or_l
from core.upload_policy import (
    ACCEPTED_FORMATS,
    NO_MEMORY_MESSAGE,
    PIL_ERRORS,
    UPLOAD_REASONS,
    UploadError,
    bomb,
    is_text_bomb,
    jpeg_scans,
    not_an_image,
    sniff,
    text_bomb,
    truncated,
)

__all__ = [
    "ACCEPTED_FORMATS",
    "MAX_BYTES",
    "MAX_PIXELS",
    "UPLOAD_REASONS",
    "UploadError",
    "decode_in_process",
    "read_upload",
]

logger = logging.getLogger(__name__)

MAX_PIXELS: int = 4096 * 4096
"""Default cap on ``width * height`` declared by the header, checked before decoding (16.8 MP)."""

MAX_BYTES: int = 25 * 1024 * 1024
"""Default cap on the size of the uploaded file in bytes."""

MAX_JPEG_SCANS: int = 100
"""Most SOS markers a JPEG may hold (each scan is a pass over the whole image)."""


def read_upload(
    data: bytes | bytearray | memoryview,
    *,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_BYTES,
) -> Image.Image:
    """Decode the bytes of a user upload into an upright ``"RGB"`` or ``"L"`` image, or refuse it.

    Parameters
    ----------
    data : bytes, bytearray or memoryview
        The whole uploaded file. Its name or extension is irrelevant: the format is found from the bytes.
    max_pixels : int, default MAX_PIXELS
        Largest ``width * height`` accepted, checked from the header before any pixel is decoded.
    max_bytes : int, default MAX_BYTES
        Largest file size accepted, in bytes.

    Returns
    -------
    PIL.Image.Image
        A fully decoded (``load()``-ed) image in mode ``"RGB"`` (colour sources) or ``"L"`` (grey
        sources), rotated/flipped upright per its EXIF orientation, with ``width, height >= 1``. It holds
        no reference to the input bytes (modes mapped by :func:`core.transforms.to_rgb_or_l`).

    Raises
    ------
    UploadError
        When the upload cannot be used; ``e.reason`` is one of :data:`UPLOAD_REASONS` (see
        :mod:`core.upload_policy`) and ``str(e)`` says why.
    TypeError
        If ``data`` is not bytes-like (a programming error, not a bad upload).
    ValueError
        If ``max_pixels`` or ``max_bytes`` is not a positive integer.

    Notes
    -----
    A damaged EXIF block does not reject an image: its orientation is then ignored (logged at debug).

    Examples
    --------
    >>> img = read_upload(open("photo.jpg", "rb").read())   # doctest: +SKIP
    >>> img.mode                                             # doctest: +SKIP
    'RGB'
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"read_upload expects the file's bytes, got {type(data).__name__}")
    for name, value in (("max_pixels", max_pixels), ("max_bytes", max_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    data = bytes(data)
    if not data:
        raise UploadError("empty", "The uploaded file is empty (0 bytes).")
    if len(data) > max_bytes:
        raise UploadError(
            "too_large",
            f"The file is {len(data) / 2**20:.1f} MiB; uploads are limited to {max_bytes / 2**20:.1f} MiB.",
        )
    from core import upload_sandbox

    mode, size, pixels = upload_sandbox.decode(data, max_pixels=max_pixels)
    del data
    try:
        return Image.frombytes(mode, size, pixels)
    except MemoryError:
        raise UploadError("too_large", NO_MEMORY_MESSAGE) from None


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
