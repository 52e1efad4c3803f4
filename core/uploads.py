"""Read user-supplied image bytes safely: the one entry point for every upload.

``read_upload(data)`` turns the raw bytes of an upload into a fully decoded, EXIF-upright PIL image in
mode ``"RGB"`` or ``"L"``, or raises :class:`UploadError` whose ``reason`` is a short code and whose
``str()`` is a sentence a UI can show. ``image_to_array(img, size=(H, W), channels=C)`` then makes the
``uint8`` array of shape ``(H, W, C)`` a model expects (resize the shorter side, centre-crop).

Policy, one line per case (the ``reason`` codes are listed in :data:`UPLOAD_REASONS`):

- ``"empty"``: the upload has 0 bytes.
- ``"too_large"``: the file exceeds ``max_bytes``, or the header declares ``width * height > max_pixels``
  (checked from the header, before any pixel is decoded), or decoding ran out of memory. Pillow refuses
  headers above ``2 * PIL.Image.MAX_IMAGE_PIXELS`` inside ``Image.open``, before we see the size; when our
  ``max_pixels`` is the smaller limit (the default) that is reported as ``"too_large"`` too.
- ``"decompression_bomb"``: Pillow's own bomb guards fired where ours did not (its
  ``DecompressionBombError``/``DecompressionBombWarning`` when the caller raised ``max_pixels`` above
  ``PIL.Image.MAX_IMAGE_PIXELS``, or a PNG text/ICC chunk that inflates beyond ``MAX_TEXT_CHUNK``).
- ``"not_an_image"``: the bytes do not start with the signature of an accepted format (PNG, JPEG, WebP,
  BMP, GIF, TIFF): random bytes, text, SVG, HTML, PDF, HEIC/AVIF, ... Only those six formats are ever
  handed to a decoder (``Image.open(..., formats=ACCEPTED_FORMATS)``); the file name is never consulted.
  (BMP's ``"BM"`` is weak, so a BMP must also carry a DIB header size Pillow reads.)
- ``"truncated"``: the bytes start like an accepted format (its signature, or a prefix of it when the file
  is shorter than the signature) but cannot be opened or fully decoded: the file ends early or is damaged
  (a zero width or height in a PNG/BMP header lands here too: Pillow refuses it while opening).
  Pillow's ``LOAD_TRUNCATED_IMAGES`` is never set, so a partial image is never returned. A cut that
  removes no pixel data leaves a complete image, which is accepted: a PNG missing only the end of its
  zlib stream (Adler-32), the last IDAT's CRC and IEND; a GIF its last 2 bytes (block terminator,
  trailer); a BMP the padding of its last stored row; a TIFF whose first IFD ends the file, its final
  next-IFD offset; sometimes a JPEG its EOI marker. WebP decodes only when complete.
- ``"animated"``: more than one frame (animated GIF/WebP/APNG, multi-page TIFF). Single-frame GIFs are fine.
  A JPEG that Pillow opens as MPO (a camera JPEG with extra preview/depth pictures) is a still photo: its
  primary picture is used.
- ``"unsupported_mode"``: a pixel mode with no RGB/L conversion here. Every mode Pillow 13 defines
  (``PIL.Image.MODES``) is mapped below, so this guards against modes added later.
- ``"too_small"``: an opened image reporting a zero width or height (a guard: see ``"truncated"``).
- ``"too_slow"``: a JPEG with more than ``MAX_JPEG_SCANS`` scans, or a decode stopped by the worker's
  CPU-time or wall-clock limit (:mod:`core.upload_sandbox`).
- ``"decoder_failed"``: the decode worker died any other way (e.g. a native out-of-memory abort).

Decoding runs in a worker process bounded in CPU time, address space and wall-clock time
(:mod:`core.upload_sandbox`); :func:`decode_in_process` is the unbounded decode it runs.

Pixel modes, as decoded by Pillow -> as returned:

- ``"RGB"`` -> ``"RGB"``; ``"L"`` -> ``"L"``; ``"1"`` -> ``"L"`` (0/255).
- ``"P"`` -> ``"RGB"``; ``"P"`` with transparency, ``"PA"``, ``"RGBA"``, ``"RGBa"``, ``"RGB"`` with a
  transparent colour key -> alpha composited on white -> ``"RGB"``.
- ``"LA"``, ``"La"``, ``"L"`` with a transparent grey key -> composited on white -> ``"L"``.
- ``"RGBX"``, ``"CMYK"``, ``"YCbCr"``, ``"LAB"``, ``"HSV"`` -> ``"RGB"`` (Pillow's conversions; an embedded
  ICC profile is not applied).
- ``"I;16"``, ``"I;16L"``, ``"I;16B"``, ``"I;16N"`` (16-bit grey) -> ``"L"``, scaled by the uint16 range:
  ``round(v * 255 / 65535)`` (Pillow's own ``convert("L")`` would clip everything above 255 to white).
- ``"I"`` (32-bit int) -> ``"L"``: values that fit in ``[0, 65535]`` are treated as 16-bit data and
  scaled as above; otherwise the actual ``[min, max]`` is stretched to ``[0, 255]``.
- ``"F"`` (32-bit float) -> ``"L"``: non-finite values become 0; values within ``[0, 1]`` are scaled by
  255, otherwise the actual ``[min, max]`` is stretched to ``[0, 255]``. A constant image outside those
  ranges becomes black.

Nothing is written to disk and no global Pillow setting is changed. Warnings Pillow emits while reading
are captured and logged at debug level, with ``DecompressionBombWarning`` turned into an error; this uses
``warnings.catch_warnings``, which (before Python 3.14's context-aware warnings) swaps process-wide warning
state, so another thread that warns at the same moment may see its warning captured here. libtiff and
libjpeg print their own diagnostics for damaged files straight to stderr (C level, not Python warnings);
they are noise, not writes, and cannot be silenced per call.

Examples
--------
>>> from core.uploads import read_upload, image_to_array  # doctest: +SKIP
>>> img = read_upload(uploaded_file.getvalue())           # doctest: +SKIP
>>> x = image_to_array(img, size=(28, 28), channels=1)    # doctest: +SKIP
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
import zlib

import numpy as np
from PIL import Image, ImageFile, ImageOps

__all__ = [
    "ACCEPTED_FORMATS",
    "MAX_BYTES",
    "MAX_PIXELS",
    "UPLOAD_REASONS",
    "UploadError",
    "image_to_array",
    "decode_in_process",
    "read_upload",
]

logger = logging.getLogger(__name__)

MAX_PIXELS: int = 4096 * 4096
"""Default cap on ``width * height`` declared by the header, checked before decoding (16.8 MP: a 12 MP
phone photo fits; the models need at most 342 pixels a side)."""

MAX_BYTES: int = 25 * 1024 * 1024
"""Default cap on the size of the uploaded file in bytes."""

ACCEPTED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
"""Pillow format names that are ever handed to a decoder; nothing else is parsed."""

UPLOAD_REASONS: frozenset[str] = frozenset(
    {
        "empty",
        "not_an_image",
        "truncated",
        "animated",
        "too_large",
        "decompression_bomb",
        "unsupported_mode",
        "too_small",
        "too_slow",
        "decoder_failed",
    }
)
"""Every value :attr:`UploadError.reason` can take."""

MAX_JPEG_SCANS: int = 100
"""Most SOS markers a JPEG may hold (each scan is a pass over the whole image)."""

EXACT_RESIZE_PIXELS: int = 1 << 22
"""Largest intermediate (resized, uncropped) image :func:`image_to_array` makes; beyond it only the crop is
resampled."""

NO_MEMORY_MESSAGE = "There is not enough memory to decode this image; try a smaller one."

_FORMATS_TEXT = "PNG, JPEG, WebP, BMP, GIF or TIFF"

# Exceptions that Pillow's decoders are known to let escape on malformed input. UploadError is raised
# for these only around calls into Pillow, never around our own code, so our bugs still surface.
_PIL_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes UnidentifiedImageError and "image file is truncated"
    SyntaxError,
    struct.error,
    EOFError,
    ValueError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
    RuntimeError,  # includes NotImplementedError
    zlib.error,
)

# File signatures of the accepted formats: (offset, bytes) pieces that must all match (the bytes between
# pieces are free, e.g. the RIFF size of a WebP file).
_SIGNATURES: tuple[tuple[str, tuple[tuple[int, bytes], ...]], ...] = (
    ("PNG", ((0, b"\x89PNG\r\n\x1a\n"),)),
    ("JPEG", ((0, b"\xff\xd8\xff"),)),
    ("GIF", ((0, b"GIF87a"),)),
    ("GIF", ((0, b"GIF89a"),)),
    ("WEBP", ((0, b"RIFF"), (8, b"WEBP"))),
    ("TIFF", ((0, b"II*\x00"),)),
    ("TIFF", ((0, b"MM\x00*"),)),
    ("TIFF", ((0, b"II+\x00"),)),  # BigTIFF
    ("TIFF", ((0, b"MM\x00+"),)),
    ("TIFF", ((0, b"MM*\x00"),)),  # byte-order-confused headers Pillow still reads
    ("TIFF", ((0, b"II\x00*"),)),
    ("BMP", ((0, b"BM"),)),
)
# "BM" alone is a weak signature (any text starting with "BM"); a BMP also has a known DIB header size.
_BMP_DIB_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})  # those Pillow reads


class UploadError(ValueError):
    """A user upload that cannot be used.

    ``str(e)`` is a readable sentence for a UI; :attr:`reason` is a short machine-readable code.

    Parameters
    ----------
    reason : str
        One of :data:`UPLOAD_REASONS`.
    message : str
        A sentence saying what is wrong and, where possible, what to do about it.

    Attributes
    ----------
    reason : str
        The machine-readable code, e.g. ``"truncated"`` or ``"too_large"``.
    """

    def __init__(self, reason: str, message: str) -> None:
        if reason not in UPLOAD_REASONS:
            raise ValueError(f"unknown UploadError reason {reason!r}; expected one of {sorted(UPLOAD_REASONS)}")
        super().__init__(message)
        self.reason: str = reason

    def __reduce__(self) -> tuple[type[UploadError], tuple[str, str]]:
        return (type(self), (self.reason, str(self)))


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
        no reference to the input bytes. The mode mapping is in the module docstring.

    Raises
    ------
    UploadError
        When the upload cannot be used; ``e.reason`` is one of :data:`UPLOAD_REASONS` (policy in the
        module docstring) and ``str(e)`` says why.
    TypeError
        If ``data`` is not bytes-like (a programming error, not a bad upload).
    ValueError
        If ``max_pixels`` or ``max_bytes`` is not a positive integer.

    Notes
    -----
    A damaged EXIF block does not reject an image: its orientation is then ignored (logged at debug).
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
        return _to_rgb_or_l(upright)
    except MemoryError as exc:
        logger.debug("upload: out of memory while decoding: %r", exc)
        raise UploadError("too_large", NO_MEMORY_MESSAGE) from None


def image_to_array(
    img: Image.Image, *, size: tuple[int, int], channels: int, resize: int | None = None
) -> np.ndarray:
    """Resize, centre-crop and convert an image to the ``uint8`` array a model expects.

    As torchvision's ``Resize`` + ``CenterCrop``. With ``resize`` given, the shorter side becomes
    ``resize`` and the longer ``int(resize * long / short)``, then the centre ``size`` is cropped: exactly
    ``Resize(resize) + CenterCrop(size)``, a model's eval transform (e.g. 342 -> 299 for InceptionV3).
    Without it (or if that result would not cover ``size``, where torchvision would pad with black) the
    image is scaled by the one factor that makes it just cover ``size``; for a square target ``(S, S)``
    that is ``Resize(S) + CenterCrop(S)``. Crop offsets are rounded as torchvision does. Downscaling uses
    ``LANCZOS`` (antialiased, as Pillow's resize always is), upscaling ``BICUBIC``; an image already of
    the resized size is not resampled. When the resized image would exceed :data:`EXACT_RESIZE_PIXELS`
    (an extreme aspect ratio), only the source box under the crop is resampled, with the same filter and
    scale: values then differ from resize-then-crop by at most 1 (floating-point rounding), and time and
    memory stay bounded by the output size.

    Parameters
    ----------
    img : PIL.Image.Image
        A decoded image, typically from :func:`read_upload`. Modes other than ``"RGB"``/``"L"`` go
        through the same conversions as :func:`read_upload` first.
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
    """
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
    out_h, out_w = int(size[0]), int(size[1])

    img = _to_rgb_or_l(img)
    img = img.convert("L" if channels == 1 else "RGB")

    w, h = img.size
    new_w = new_h = 0
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


# --------------------------------------------------------------------------------------------- helpers


def _sniff(data: bytes) -> str | None:
    """Return the accepted format whose signature ``data`` matches as far as it goes, else None."""
    for fmt, pieces in _SIGNATURES:
        if all(data[off : off + len(sig)] == sig[: max(0, len(data) - off)] for off, sig in pieces):
            if fmt == "BMP" and len(data) >= 18:
                (dib_size,) = struct.unpack_from("<I", data, 14)
                if dib_size not in _BMP_DIB_SIZES:
                    continue
            return fmt
    return None


def _describe_other(data: bytes) -> str:
    """A short phrase naming a common non-accepted file type, or ``""``."""
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if data[4:8] == b"ftyp":
        return " It looks like a HEIC/AVIF or other ISO media file; convert it to JPEG or PNG first."
    if head.startswith(b"%pdf"):
        return " It looks like a PDF document."
    if b"<svg" in head:
        return " It looks like an SVG (vector) file; export it as PNG first."
    if head.startswith(b"<"):
        return " It looks like an HTML/XML text file."
    sample = data[:1024]
    if sample and sum(32 <= b < 127 or b in (9, 10, 13) for b in sample) >= 0.95 * len(sample):
        return " It looks like a text file."
    return ""


def _not_an_image(data: bytes) -> UploadError:
    return UploadError(
        "not_an_image",
        f"The file is not an image in an accepted format ({_FORMATS_TEXT}).{_describe_other(data)}",
    )


def _truncated(fmt: str) -> UploadError:
    name = {"WEBP": "WebP", "MPO": "JPEG"}.get(fmt, fmt)
    return UploadError(
        "truncated",
        f"The file looks like a {name} image but is truncated or damaged, so it cannot be decoded. "
        "Try uploading it again, or re-save it with an image editor.",
    )


def _bomb(pixel_limit: int, max_pixels: int) -> UploadError:
    """Map Pillow's bomb guard (which fires when pixels > ``pixel_limit``) onto our reasons."""
    if max_pixels <= pixel_limit:
        # The declared size exceeds Pillow's limit, hence ours too: report our (smaller) limit.
        return UploadError(
            "too_large",
            f"The image declares more than {pixel_limit / 1e6:.0f} megapixels; "
            f"uploads are limited to {max_pixels / 1e6:.1f} megapixels.",
        )
    return UploadError(
        "decompression_bomb",
        f"The image declares more than {pixel_limit / 1e6:.0f} megapixels, Pillow's safety limit, "
        "and was refused as a possible decompression bomb.",
    )


def _is_text_bomb(exc: BaseException) -> bool:
    """Whether ``exc`` is PngImagePlugin refusing a text/ICC chunk that inflates too much.

    Pillow raises a plain ValueError for this, so the message is matched (it names the module limit);
    if Pillow rewords it, such a file is reported as ``"truncated"`` instead, still refused.
    """
    msg = str(exc)
    return isinstance(exc, ValueError) and ("MAX_TEXT_CHUNK" in msg or "MAX_TEXT_MEMORY" in msg)


def _text_bomb() -> UploadError:
    return UploadError(
        "decompression_bomb",
        "The PNG file contains a compressed metadata chunk that expands enormously; "
        "it was refused as a possible decompression bomb.",
    )


def _open_and_load(data: bytes, *, max_pixels: int) -> ImageFile.ImageFile:
    """Open with the allow-list, check the header, refuse animations, then decode the first frame."""
    sniffed = _sniff(data)
    try:
        img = Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
    except Image.DecompressionBombError as exc:
        logger.debug("upload refused by Pillow's bomb check at open: %r", exc)
        raise _bomb(2 * (Image.MAX_IMAGE_PIXELS or 0), max_pixels) from exc
    except Image.DecompressionBombWarning as exc:
        logger.debug("upload refused by Pillow's bomb warning at open: %r", exc)
        raise _bomb(Image.MAX_IMAGE_PIXELS or 0, max_pixels) from exc
    except _PIL_ERRORS as exc:
        logger.debug("upload could not be opened (signature: %s): %r", sniffed, exc)
        if _is_text_bomb(exc):
            raise _text_bomb() from exc
        raise (_truncated(sniffed) if sniffed else _not_an_image(data)) from exc

    fmt = img.format or sniffed or "image"
    try:
        if fmt in ("JPEG", "MPO"):
            scans = data.count(b"\xff\xda")  # SOS markers: 0xFF is always escaped in coded data
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
        except _PIL_ERRORS as exc:
            logger.debug("upload: counting frames failed: %r", exc)
            raise _truncated(fmt) from exc
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
        except _PIL_ERRORS as exc:
            logger.debug("upload: decoding failed: %r", exc)
            if _is_text_bomb(exc):
                raise _text_bomb() from exc
            raise _truncated(fmt) from exc
    except BaseException:
        img.close()
        raise
    return img


def _exif_transpose(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (always returns a new, loaded image); ignore unreadable EXIF."""
    try:
        return ImageOps.exif_transpose(img)
    except _PIL_ERRORS as exc:
        logger.debug("upload: EXIF orientation unreadable, ignored: %r", exc)
        return img.copy()


def _to_rgb_or_l(img: Image.Image) -> Image.Image:
    """Convert any decoded mode to ``"RGB"`` or ``"L"`` (mapping in the module docstring)."""
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
    """Scale a 16-bit, 32-bit int or float grey array to uint8 without clipping (see module docstring)."""
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
