"""Crafted image files for the upload tests: encoders, hand-built PNG/TIFF/JPEG/GIF/WebP structures, and the
bombs (zlib, CPU, memory) with their bounds."""
from __future__ import annotations

import functools
import io
import struct
import sys
import zlib
from dataclasses import dataclass, field

import numpy as np
import pytest
from PIL import Image

from core.uploads.policy import (
    UploadError,
)
from core.uploads.read import read_upload
from core.uploads.sandbox import DECODE_WALL_SECONDS

SEED = 20261125


KNOWN_REASONS = frozenset(
    {
        "empty", "not_an_image", "truncated", "animated",
        "too_large", "decompression_bomb", "unsupported_mode", "too_small", "too_slow", "decoder_failed",
    }
)


OK = "ok"


FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


# The upload policy's signature table, restated independently of the module: a file that does not
# match one of these (as far as its bytes go) must be refused as "not_an_image"; one that matches but
# cannot be decoded is "truncated".
SIGNATURES: dict[str, list[list[tuple[int, bytes]]]] = {
    "PNG": [[(0, b"\x89PNG\r\n\x1a\n")]],
    "JPEG": [[(0, b"\xff\xd8\xff")]],
    "GIF": [[(0, b"GIF87a")], [(0, b"GIF89a")]],
    "WEBP": [[(0, b"RIFF"), (8, b"WEBP")]],
    "TIFF": [[(0, p)] for p in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+", b"MM*\x00", b"II\x00*")],
    "BMP": [[(0, b"BM")]],
}


BMP_DIB_SIZES = {12, 40, 52, 56, 64, 108, 124}


def sniff(data: bytes) -> str | None:
    """The accepted format whose signature ``data`` matches as far as it goes (BMP: plus DIB size)."""
    for fmt, variants in SIGNATURES.items():
        for pieces in variants:
            if all(data[o : o + len(s)] == s[: max(0, len(data) - o)] for o, s in pieces):
                if fmt == "BMP" and len(data) >= 18 and struct.unpack_from("<I", data, 14)[0] not in BMP_DIB_SIZES:
                    continue
                return fmt
    return None


@dataclass(frozen=True)
class Case:
    """One generated upload: ``expect`` is the set of allowed outcomes, None = any (invariant only)."""

    name: str
    data: bytes
    expect: frozenset[str] | None
    kwargs: dict = field(default_factory=dict)


def exp(*outcomes: str) -> frozenset[str]:
    assert set(outcomes) <= KNOWN_REASONS | {OK}, outcomes
    return frozenset(outcomes)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(w: int, h: int, mode: str = "RGB") -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) * 7 % 256], -1).astype(np.uint8)
    return Image.fromarray(arr).convert(mode)


def noise(rng: np.random.Generator, w: int, h: int, mode: str = "RGB") -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


def png_chunk(ctype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def craft_png(
    w: int, h: int, *, bit_depth: int, color_type: int, idat: bytes, before: bytes = b"", after: bytes = b""
) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + before
        + png_chunk(b"IDAT", idat)
        + after
        + png_chunk(b"IEND", b"")
    )


@functools.cache
def huge_png(w: int, h: int) -> bytes:
    """A real, complete 1-bit greyscale PNG of ``w`` x ``h`` (all black), built row block by row block."""
    row = b"\x00" * (1 + (w + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(6)
    block = row * 256
    parts = [comp.compress(block) for _ in range(h // 256)]
    parts += [comp.compress(row * (h % 256)), comp.flush()]
    return craft_png(w, h, bit_depth=1, color_type=0, idat=b"".join(parts))


def png_idat_end(data: bytes) -> int:
    """Offset just past the payload of the last IDAT chunk."""
    pos, end = 8, None
    while pos + 8 <= len(data):
        length, ctype = struct.unpack_from(">I4s", data, pos)
        if ctype == b"IDAT":
            end = pos + 8 + length
        pos += 12 + length
    assert end is not None
    return end


def bmp_last_row_padding(data: bytes) -> int:
    (width,) = struct.unpack_from("<i", data, 18)
    (bpp,) = struct.unpack_from("<H", data, 28)
    stride = (bpp * width + 31) // 32 * 4
    return stride - (bpp * width + 7) // 8


def tiff_ifd0_end(data: bytes) -> int:
    """Offset just past the first IFD (entry count, 12-byte entries, next-IFD offset)."""
    order = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack_from(order + "I", data, 4)
    (entries,) = struct.unpack_from(order + "H", data, offset)
    return offset + 2 + 12 * entries + 4


def zlib_bomb(n: int = 4 * 1024 * 1024) -> bytes:
    return zlib.compress(b"\x00" * n, 9)


def tiff_i16b(arr: np.ndarray) -> bytes:
    img = Image.new("I;16B", (arr.shape[1], arr.shape[0]))
    img.frombytes(arr.astype(">u2").tobytes())
    return encode(img, "TIFF")


def exif_rotated_jpeg() -> bytes:
    """40x20 stored pixels, red block at the stored top-left, EXIF orientation 6 (rotate 90° CW)."""
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", exif=exif.tobytes(), quality=95)


def gif_with_screen(w: int, h: int) -> bytes:
    data = bytearray(encode(Image.new("P", (4, 4)), "GIF"))
    data[6:10] = struct.pack("<HH", w, h)
    return bytes(data)


def jpeg_segments(data: bytes) -> list[bytes]:
    """Split a JPEG into its segments: SOI, each marker segment (a scan with its entropy-coded data), EOI."""
    out, pos = [data[:2]], 2
    while pos < len(data):
        marker = data[pos + 1]
        if marker == 0xD9:
            out.append(data[pos : pos + 2])
            break
        (length,) = struct.unpack_from(">H", data, pos + 2)
        end = pos + 2 + length
        if marker == 0xDA:  # entropy-coded data runs to the next marker other than stuffing / RSTn
            while not (data[end] == 0xFF and data[end + 1] not in (0x00, *range(0xD0, 0xD8))):
                end += 1
        out.append(data[pos:end])
        pos = end
    return out


@functools.cache
def jpeg_repeated_scans(scans: int, side: int = 2048) -> bytes:
    """A flat grey progressive JPEG whose last scan (a few bytes of data) is repeated ``scans`` times."""
    segs = jpeg_segments(encode(Image.new("L", (side, side), 128), "JPEG", progressive=True))
    assert segs[-2][:2] == b"\xff\xda" and segs[-1] == b"\xff\xd9"
    return b"".join(segs[:-1]) + segs[-2] * scans + segs[-1]


@functools.cache
def jpeg_ff_fill(n: int) -> bytes:
    """A small valid JPEG with ``n`` 0xFF fill bytes before its EOI marker."""
    data = encode(gradient(64, 64), "JPEG")
    return data[:-2] + b"\xff" * n + data[-2:]


@functools.cache
def jpeg_many_markers(n: int) -> bytes:
    """A small valid JPEG with ``n`` empty COM segments after SOI."""
    data = encode(gradient(16, 16), "JPEG")
    return data[:2] + b"\xff\xfe\x00\x02" * n + data[2:]


@functools.cache
def png_many_chunks(n: int) -> bytes:
    """A 1x1 PNG with ``n`` small tEXt chunks (distinct keys) before its IDAT."""
    text = b"".join(png_chunk(b"tEXt", b"k%d\x00v" % i) for i in range(n))
    return craft_png(1, 1, bit_depth=8, color_type=0, idat=zlib.compress(b"\x00\x00"), before=text)


@functools.cache
def webp_lossless_blank(w: int, h: int) -> bytes:
    """A lossless transparent WebP of ``w`` x ``h`` (1 to 16384 a side): a small file of any size."""
    data = bytearray(encode(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "WEBP", lossless=True))
    assert data[12:16] == b"VP8L" and data[20] == 0x2F
    (bits,) = struct.unpack_from("<I", data, 21)
    bits = (bits & ~((1 << 28) - 1)) | (w - 1) | ((h - 1) << 14)
    struct.pack_into("<I", data, 21, bits)
    return bytes(data)


@functools.cache
def float_tiff(w: int, h: int) -> bytes:
    """A complete deflate-compressed 32-bit float greyscale TIFF of ``w`` x ``h`` zeros, built in blocks."""
    comp = zlib.compressobj(9)
    block = b"\x00" * (4 * w * 256)
    parts = [comp.compress(block) for _ in range(h // 256)]
    parts += [comp.compress(b"\x00" * (4 * w * (h % 256))), comp.flush()]
    strip = b"".join(parts)
    tags = [  # tag, type (3 SHORT, 4 LONG), value
        (256, 4, w), (257, 4, h), (258, 3, 32), (259, 3, 8), (262, 3, 1), (273, 4, 8),
        (277, 3, 1), (278, 4, h), (279, 4, len(strip)), (339, 3, 3),
    ]
    ifd = struct.pack("<H", len(tags))
    for tag, typ, value in tags:
        ifd += struct.pack("<HHI", tag, typ, 1) + struct.pack("<HH" if typ == 3 else "<I", *((value, 0) if typ == 3 else (value,)))
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8 + len(strip)) + strip + ifd


def reason_of(data: bytes, **kwargs) -> str:
    with pytest.raises(UploadError) as info:
        read_upload(data, **kwargs)
    assert type(info.value) is UploadError and isinstance(info.value, ValueError)
    return info.value.reason


LIMITED_READ = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from core.uploads.transforms import image_to_array
from core.uploads.policy import UploadError
from core.uploads.read import read_upload
limit = int(sys.argv[2])
data = sys.stdin.buffer.read()
kwargs = {"max_bytes": int(sys.argv[4])} if sys.argv[4] != "-" else {}
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
def cpu(who):
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime
t0, c0 = time.perf_counter(), cpu(resource.RUSAGE_SELF)
try:
    img = read_upload(data, **kwargs)
    out = "ok"
    if sys.argv[3] == "array":
        assert image_to_array(img, size=(299, 299), channels=3, resize=342).shape == (299, 299, 3)
        assert image_to_array(img, size=(28, 28), channels=1).shape == (28, 28, 1)
except UploadError as e:
    out = e.reason
except MemoryError:
    out = "MemoryError"
seconds, mine = time.perf_counter() - t0, cpu(resource.RUSAGE_SELF) - c0
try:
    from core.uploads import sandbox as upload_sandbox
    upload_sandbox.shutdown()  # reaps the workers, so their CPU time is counted below
except ImportError:
    pass
print(json.dumps({"outcome": out, "seconds": seconds, "cpu": mine + cpu(resource.RUSAGE_CHILDREN)}))
"""


def limited_read(data: bytes, *, memory: int = 1 << 30, array: bool = False, timeout: float = 300,
                 max_bytes: int | None = None) -> tuple[str, float]:
    """Read ``data`` in a fresh interpreter whose address space is limited to ``memory`` bytes (the decode
    worker inherits the limit): ``(outcome, cpu_seconds)``. Wall-clock time is checked against the worker's
    limit; CPU time (reader and its workers, start-up included) is what the bounds below assert, as it does
    not depend on how loaded the machine is. ``max_bytes`` raises the upload size limit."""
    import json
    import subprocess

    from tests.conftest import ROOT

    warm = "read_upload(" + repr(encode(gradient(4, 4), "PNG")) + ")\n"
    code = LIMITED_READ.replace("t0 = time.perf_counter()", warm + "t0 = time.perf_counter()")
    proc = subprocess.run(
        [sys.executable, "-c", code, str(ROOT), str(memory), "array" if array else "read",
         "-" if max_bytes is None else str(max_bytes)],
        input=data, capture_output=True, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    res = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert res["seconds"] < DECODE_WALL_SECONDS + 3, res
    return res["outcome"], res["cpu"]


BOUND_S = 5.0  # CPU seconds: the worker's limit (2-3 s) plus the start-up of two workers


# Sizes of the CPU bombs that fit under the upload limit (MAX_BYTES): in-process, on the 2-core machine the suite
# was written on, 4 (0xFF fill), 15 (COM markers) and 7 (tEXt chunks) CPU seconds; a CPU 2.5x faster decodes the
# first inside the worker's limit. Whether one is refused depends on the CPU; that it costs at most BOUND_S does not.
FF_FILL = 24 << 20


COM_MARKERS = 6_000_000


TEXT_CHUNKS = 1_000_000


#: A fill ten times the upload limit (the limit raised for the test): about 40 CPU s in-process on that machine,
#: so far beyond the worker's limit on any CPU of our kind; its bytes and their copy fit the worker's memory.
FAR_FILL = 240 << 20


ARRAY_OF_BLANK = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from PIL import Image
from core.uploads.transforms import image_to_array
img = Image.new("L", (int(sys.argv[2]), int(sys.argv[3])), 77)
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
t0 = time.process_time()
try:
    a = image_to_array(img, size=(299, 299), channels=3, resize=342)
    b = image_to_array(img, size=(28, 28), channels=1)
    out = "ok" if a.shape == (299, 299, 3) and b.shape == (28, 28, 1) and a.min() == b.max() == 77 else "wrong"
except MemoryError:
    out = "MemoryError"
print(json.dumps({"outcome": out, "cpu": time.process_time() - t0}))
"""


TEXTS = {
    "plain.txt": b"Hello, this is not an image.\n" * 20,
    "svg-with-decl.png": b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b'<rect width="10" height="10" fill="red"/></svg>\n',
    "svg-bare.png": b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 1 1"><circle r="1"/></svg>',
    "svg-bom.png": b"\xef\xbb\xbf  <svg></svg>",
    "html.png": b"<!DOCTYPE html><html><head><title>x</title></head><body><img src=x></body></html>",
    "html-error-page.jpg": b"<html><body><h1>404 Not Found</h1></body></html>\r\n",
    "json.png": b'{"image": "iVBORw0KGgo=", "width": 10}',
    "csv.png": b"a,b,c\n1,2,3\n",
    "base64-png.png": b"iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kg"
    b"AAAABJRU5ErkJggg==",
    "data-uri.png": b"data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB",
    "utf16-text.png": "\ufeffnot an image at all".encode("utf-16-le"),
    "whitespace.png": b" \n\t\r\n ",
    "nul-bytes.png": b"\x00" * 64,
    "pdf.png": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
    "zip.png": b"PK\x03\x04" + b"\x00" * 40,
    "heic.jpg": b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64,
    "wav-riff.webp": b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40,
    "elf.png": b"\x7fELF\x02\x01\x01" + b"\x00" * 60,
    "BM-text.bmp": b"BMW is a car maker, and this text starts with BM." * 3,
}


def cases_text() -> list[Case]:
    return [Case(f"text/{name}", data, exp("not_an_image")) for name, data in TEXTS.items()]
