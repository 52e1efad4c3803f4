"""What an upload may be: the accepted formats, their file signatures, and the refusals.

:class:`UploadError` is what every refused upload raises; its ``reason`` is one of :data:`UPLOAD_REASONS`:

- ``"empty"``: 0 bytes.
- ``"not_an_image"``: the bytes do not start with the signature of an accepted format.
- ``"truncated"``: they start like an accepted format but cannot be opened or fully decoded.
- ``"animated"``: more than one frame.
- ``"too_large"``: too many bytes, too many pixels declared by the header, or out of memory while decoding.
- ``"decompression_bomb"``: Pillow's own bomb guards fired (a huge declared size or PNG text chunk).
- ``"unsupported_mode"``: a pixel mode with no RGB/L conversion.
- ``"too_small"``: a zero width or height.
- ``"too_slow"``: too many JPEG scans, or the decode worker's time limit.
- ``"decoder_failed"``: the decode worker died any other way.

See docs/design.md#uploads for the policy case by case.

Examples
--------
>>> sniff(b"\\x89PNG\\r\\n\\x1a\\n")
'PNG'
>>> UploadError("empty", "The uploaded file is empty (0 bytes).").reason
'empty'
"""

from __future__ import annotations

import re
import struct
import zlib

from core.errors import KnnguardError

__all__ = [
    "ACCEPTED_FORMATS",
    "MAX_BYTES",
    "MAX_JPEG_SCANS",
    "MAX_PIXELS",
    "NO_MEMORY_MESSAGE",
    "PIL_ERRORS",
    "UPLOAD_REASONS",
    "UploadError",
    "bomb",
    "is_text_bomb",
    "jpeg_scans",
    "not_an_image",
    "sniff",
    "text_bomb",
    "truncated",
]

MAX_PIXELS: int = 4096 * 4096
"""Default cap on ``width * height`` declared by the header, checked before decoding (16.8 MP)."""

MAX_BYTES: int = 25 * 1024 * 1024
"""Default cap on the size of the uploaded file in bytes."""

MAX_JPEG_SCANS: int = 100
"""Most SOS markers a JPEG may hold (each scan is a pass over the whole image)."""

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

NO_MEMORY_MESSAGE = "There is not enough memory to decode this image; try a smaller one."

_FORMATS_TEXT = "PNG, JPEG, WebP, BMP, GIF or TIFF"

#: Exceptions Pillow's decoders let escape on malformed input; caught only around calls into Pillow.
PIL_ERRORS: tuple[type[BaseException], ...] = (
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

# (offset, bytes) pieces that must all match; the bytes between pieces are free (e.g. a WebP's RIFF size).
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
# "BM" alone is a weak signature; a BMP must also carry a DIB header size Pillow reads.
_BMP_DIB_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})


class UploadError(KnnguardError, ValueError):
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

    Raises
    ------
    ValueError
        If ``reason`` is not one of :data:`UPLOAD_REASONS`.
    """

    def __init__(self, reason: str, message: str) -> None:
        if reason not in UPLOAD_REASONS:
            raise ValueError(f"unknown UploadError reason {reason!r}; expected one of {sorted(UPLOAD_REASONS)}")
        super().__init__(message)
        self.reason: str = reason

    def __reduce__(self) -> tuple[type[UploadError], tuple[str, str]]:
        return (type(self), (self.reason, str(self)))


_FF_RUN = re.compile(rb"\xff+")


def jpeg_scans(data: bytes) -> int:
    """Scans (SOS segments) of the first image of a JPEG file: the ones its decoder reads.

    Walks the segments from SOI: a segment's payload is skipped by its length (so a picture embedded in an APP
    segment is not counted), a scan's entropy-coded data runs to the next marker that is not stuffing (``FF 00``),
    a restart (``FF D0``-``D7``) or fill (``FF FF``), and the walk ends at the first EOI: images appended after it
    (camera MPO pictures, concatenated files) are not decoded, so not counted.

    Parameters
    ----------
    data : bytes
        The whole file.

    Returns
    -------
    int
    """
    n, pos, end = 0, 2, len(data)
    while pos + 1 < end:
        if data[pos] != 0xFF:  # bytes between segments: skipped to the next marker, as the decoder does
            pos = data.find(b"\xff", pos)
            if pos < 0:
                break
            continue
        pos = _FF_RUN.match(data, pos).end() - 1  # fill bytes before a marker
        if pos + 1 >= end:
            break
        marker = data[pos + 1]
        if marker == 0xD9:
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD8 or marker == 0x00:  # markers without a length
            pos += 2
            continue
        if pos + 4 > end:
            break
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker != 0xDA:
            continue
        n += 1
        while True:  # entropy-coded data
            pos = data.find(b"\xff", pos)
            if pos < 0 or pos + 1 >= end:
                return n
            nxt = data[pos + 1]
            if nxt == 0xFF:
                pos = _FF_RUN.match(data, pos).end() - 1
                continue
            if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
                pos += 2
                continue
            break
    return n


def sniff(data: bytes) -> str | None:
    """The accepted format whose signature ``data`` matches as far as it goes.

    Parameters
    ----------
    data : bytes
        The file, or its first bytes (a prefix of a signature matches).

    Returns
    -------
    str or None
        A name from :data:`ACCEPTED_FORMATS`, or None.
    """
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


def not_an_image(data: bytes) -> UploadError:
    """The ``"not_an_image"`` refusal of ``data``, naming its type when it is a common one."""
    return UploadError(
        "not_an_image",
        f"The file is not an image in an accepted format ({_FORMATS_TEXT}).{_describe_other(data)}",
    )


def truncated(fmt: str) -> UploadError:
    """The ``"truncated"`` refusal of a file that looks like format ``fmt``."""
    name = {"WEBP": "WebP", "MPO": "JPEG"}.get(fmt, fmt)
    return UploadError(
        "truncated",
        f"The file looks like a {name} image but is truncated or damaged, so it cannot be decoded. "
        "Try uploading it again, or re-save it with an image editor.",
    )


def bomb(pixel_limit: int, max_pixels: int) -> UploadError:
    """Pillow's bomb guard (fired above ``pixel_limit`` pixels) as ``"too_large"`` when our own
    ``max_pixels`` is the smaller limit, else ``"decompression_bomb"``."""
    if max_pixels <= pixel_limit:
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


def is_text_bomb(exc: BaseException) -> bool:
    """Whether ``exc`` is Pillow's PNG plugin refusing a text/ICC chunk that inflates too much.

    See docs/design.md#uploads (matched on the message).
    """
    msg = str(exc)
    return isinstance(exc, ValueError) and ("MAX_TEXT_CHUNK" in msg or "MAX_TEXT_MEMORY" in msg)


def text_bomb() -> UploadError:
    """The ``"decompression_bomb"`` refusal of a PNG metadata chunk that inflates too much."""
    return UploadError(
        "decompression_bomb",
        "The PNG file contains a compressed metadata chunk that expands enormously; "
        "it was refused as a possible decompression bomb.",
    )
