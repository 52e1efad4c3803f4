"""Read user-supplied image bytes safely: the one entry point for every upload.

:func:`read_upload` turns the raw bytes of an upload into a fully decoded, EXIF-upright PIL image in mode
``"RGB"`` or ``"L"``, or raises :class:`UploadError` (``e.reason`` is a short code, ``str(e)`` a sentence a UI
can show). Decoding runs in a bounded worker process (:mod:`core.uploads.sandbox`); :func:`core.uploads.decode.decode_in_process`
is the unbounded decode it runs. :func:`core.uploads.transforms.image_to_array` then makes the array a model expects.
The refusal reasons are in :mod:`core.uploads.policy`; the policy case by case, and what Pillow does behind it,
in docs/design.md#uploads.

Examples
--------
>>> from core.uploads.read import read_upload                  # doctest: +SKIP
>>> from core.uploads.transforms import image_to_array            # doctest: +SKIP
>>> img = read_upload(uploaded_file.getvalue())           # doctest: +SKIP
>>> x = image_to_array(img, size=(28, 28), channels=1)    # doctest: +SKIP
"""

from __future__ import annotations

import logging

from PIL import Image

from core.uploads import sandbox
from core.uploads.policy import (
    MAX_BYTES,
    MAX_PIXELS,
    NO_MEMORY_MESSAGE,
    UploadError,
)

__all__ = ["read_upload"]

logger = logging.getLogger(__name__)



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
        no reference to the input bytes (modes mapped by :func:`core.uploads.transforms.to_rgb_or_l`).

    Raises
    ------
    UploadError
        When the upload cannot be used; ``e.reason`` is one of :data:`UPLOAD_REASONS` (see
        :mod:`core.uploads.policy`) and ``str(e)`` says why.
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
    mode, size, pixels = sandbox.decode(data, max_pixels=max_pixels)
    del data
    try:
        return Image.frombytes(mode, size, pixels)
    except MemoryError:
        raise UploadError("too_large", NO_MEMORY_MESSAGE) from None
