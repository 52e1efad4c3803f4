""":func:`core.uploads.read.read_upload` and the in-process decode: refusals from the header, pixel modes, EXIF, messages."""
from __future__ import annotations

import io
import logging
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from core.uploads.policy import (
    MAX_BYTES,
    MAX_PIXELS,
    UploadError,
)
from core.uploads.read import read_upload
from tests.core.uploads.corpus import animated
from tests.core.uploads.crafted import (
    FORMATS,
    TEXTS,
    encode,
    exif_rotated_jpeg,
    gradient,
    huge_png,
    reason_of,
    tiff_i16b,
)


@pytest.mark.parametrize(
    ("size", "kwargs", "reason"),
    [
        ((20000, 20000), {}, "too_large"),  # Pillow's bomb error fires first; our cap is the smaller
        ((7000, 7000), {}, "too_large"),  # under Pillow's limits: our own header check
        ((20000, 20000), {"max_pixels": 10**10}, "decompression_bomb"),
        ((10000, 10000), {"max_pixels": 10**10}, "decompression_bomb"),
    ],
)
def test_huge_png_refused_from_header_without_decoding(size: tuple[int, int], kwargs: dict, reason: str) -> None:
    data = huge_png(*size)
    assert len(data) < 200_000  # a small file ...
    inflated = 0  # ... that is a real, complete PNG of that size: count its inflated IDAT bytes
    dec = zlib.decompressobj()
    stream = data[33 + 8 : -12 - 4]
    for i in range(0, len(stream), 4096):
        chunk = dec.decompress(stream[i : i + 4096], 0)
        inflated += len(chunk)
    assert inflated == size[1] * (1 + (size[0] + 7) // 8)

    read_upload(encode(gradient(2, 2), "PNG"))  # a decode worker started: its start-up is not this file's time
    stats_before = Image.core.get_stats()
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        got = reason_of(data, **kwargs)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got == reason
    assert peak < 50 * 2**20, peak
    # tracemalloc cannot see Pillow's C image buffers; Pillow's own counter shows none was allocated
    # (and the counter does count: decoding a tiny image moves it).
    assert Image.core.get_stats()["new_count"] == stats_before["new_count"]
    read_upload(encode(gradient(2, 2), "PNG"))
    assert Image.core.get_stats()["new_count"] > stats_before["new_count"]
    assert elapsed < 5.0, elapsed  # a header check: decoding 49-400 megapixels would take far longer


def test_16bit_png_scales_by_dtype_range_not_clipping() -> None:
    values = np.array([[0, 257, 1000, 25700, 32768, 65535]], np.uint16)
    src = Image.fromarray(values)
    assert src.mode == "I;16"
    img = read_upload(encode(src, "PNG"))
    assert img.mode == "L"
    assert np.asarray(img).tolist() == [[0, 1, 4, 100, 128, 255]]  # round(v * 255 / 65535)
    # What a naive convert would have done: everything above 255 clipped to white.
    assert np.asarray(src.convert("L")).tolist()[0][3] == 255
    img_be = read_upload(tiff_i16b(values))
    assert np.asarray(img_be).tolist() == [[0, 1, 4, 100, 128, 255]]


def test_float_and_int32_tiffs_map_to_grey() -> None:
    f = read_upload(encode(Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], np.float32)), "TIFF"))
    assert (f.mode, np.asarray(f).tolist()) == ("L", [[0, 128, 255, 0]])
    f2 = read_upload(encode(Image.fromarray(np.array([[-1.0, 0.0, 4.0]], np.float32)), "TIFF"))
    assert np.asarray(f2).tolist() == [[0, 51, 255]]  # outside [0, 1]: [min, max] stretched
    i = read_upload(encode(Image.fromarray(np.array([[0, 257, 65535]], np.int32)), "TIFF"))
    assert np.asarray(i).tolist() == [[0, 1, 255]]  # fits 16 bits: 16-bit scaling
    i2 = read_upload(encode(Image.fromarray(np.array([[-50, 0, 200]], np.int32)), "TIFF"))
    assert np.asarray(i2).tolist() == [[0, 51, 255]]  # negative: [min, max] stretched


def test_exif_orientation_6_is_applied() -> None:
    img = read_upload(exif_rotated_jpeg())
    assert img.size == (20, 40)  # transposed from the stored 40x20
    r, g, b = img.getpixel((17, 2))  # stored top-left red block -> top-right after 90° clockwise
    assert r > 200 and b < 60
    r, g, b = img.getpixel((2, 2))
    assert b > 200 and r < 60


def test_cmyk_jpeg_becomes_rgb() -> None:
    img = read_upload(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))
    assert img.mode == "RGB"
    assert np.allclose(img.getpixel((4, 4)), (255, 0, 0), atol=6)


def test_palette_and_alpha_are_composited_on_white() -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    plain = read_upload(encode(pal, "PNG"))
    assert (plain.mode, plain.getpixel((0, 0)), plain.getpixel((1, 0))) == ("RGB", (10, 20, 30), (200, 100, 50))
    keyed = read_upload(encode(pal, "PNG", transparency=0))
    assert (keyed.mode, keyed.getpixel((0, 0)), keyed.getpixel((1, 0))) == ("RGB", (255, 255, 255), (200, 100, 50))

    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(0, 0, 0, 0), (0, 0, 0, 255), (0, 0, 0, 128)])
    out = read_upload(encode(rgba, "PNG"))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 0)) == (0, 0, 0)
    assert all(abs(c - 127) <= 1 for c in out.getpixel((2, 0)))

    grey = Image.new("L", (2, 1))
    grey.putdata([7, 90])
    keyed_grey = read_upload(encode(grey, "PNG", transparency=7))  # tRNS grey key
    assert (keyed_grey.mode, keyed_grey.getpixel((0, 0)), keyed_grey.getpixel((1, 0))) == ("L", 255, 90)

    la = Image.new("LA", (2, 1))
    la.putdata([(0, 0), (40, 255)])
    out = read_upload(encode(la, "PNG"))
    assert (out.mode, out.getpixel((0, 0)), out.getpixel((1, 0))) == ("L", 255, 40)


def test_one_by_one_and_bilevel_images() -> None:
    for fmt in FORMATS:
        img = read_upload(encode(Image.new("RGB", (1, 1), (9, 99, 199)), fmt))
        assert img.size == (1, 1) and img.mode in ("RGB", "L")
    bilevel = read_upload(encode(Image.new("1", (3, 2), 1), "PNG"))
    assert bilevel.mode == "L" and set(np.asarray(bilevel).ravel().tolist()) == {255}


def test_grey_sources_stay_grey_and_colour_sources_rgb() -> None:
    assert read_upload(encode(gradient(5, 5, "L"), "JPEG")).mode == "L"
    assert read_upload(encode(gradient(5, 5, "L"), "PNG")).mode == "L"
    assert read_upload(encode(gradient(5, 5), "WEBP")).mode == "RGB"
    assert read_upload(encode(gradient(5, 5), "BMP")).mode == "RGB"


def test_messages_are_readable_and_name_the_accepted_formats() -> None:
    with pytest.raises(UploadError) as info:
        read_upload(TEXTS["svg-bare.png"])
    assert info.value.reason == "not_an_image"
    assert "SVG" in str(info.value) and "PNG, JPEG, WebP, BMP, GIF or TIFF" in str(info.value)
    with pytest.raises(UploadError) as info:
        read_upload(encode(gradient(9, 9), "PNG")[:40])
    assert info.value.reason == "truncated" and "PNG" in str(info.value)
    with pytest.raises(UploadError) as info:
        read_upload(animated("GIF"))
    assert "frame" in str(info.value)
    with pytest.raises(UploadError) as info:
        read_upload(huge_png(7000, 7000))
    assert "7000×7000" in str(info.value)


def test_original_exception_is_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="core.uploads"):
        reason_of(encode(gradient(9, 9), "PNG")[:60])
    assert any("OSError" in r.getMessage() or "truncated" in r.getMessage() for r in caplog.records)


def test_bytes_like_inputs_and_bad_arguments() -> None:
    data = encode(gradient(4, 3), "PNG")
    assert read_upload(bytearray(data)).size == (4, 3)
    assert read_upload(memoryview(data)).size == (4, 3)
    with pytest.raises(TypeError):
        read_upload(data.decode("latin-1"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        read_upload(io.BytesIO(data))  # type: ignore[arg-type]
    for bad in ({"max_pixels": 0}, {"max_bytes": -1}, {"max_pixels": 1.5}, {"max_bytes": True}):
        with pytest.raises(ValueError):
            read_upload(data, **bad)
    assert MAX_PIXELS == 4096 * 4096 and MAX_BYTES == 25 * 1024 * 1024
    with pytest.raises(ValueError):
        UploadError("no-such-reason", "x")


def test_memory_error_while_converting_is_too_large() -> None:
    """MemoryError anywhere in the read (here: the RGBA -> RGB compositing) is reported as ``"too_large"``."""
    import core.uploads.decode as uploads
    import core.uploads.transforms as transforms

    data = encode(gradient(64, 64, "RGBA"), "PNG")
    real = transforms._flatten

    def no_memory(img: Image.Image) -> Image.Image:
        raise MemoryError

    try:
        transforms._flatten = no_memory
        with pytest.raises(UploadError) as info:
            uploads.decode_in_process(data)
    finally:
        transforms._flatten = real
    assert info.value.reason == "too_large"
