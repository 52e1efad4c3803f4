"""The upload fuzz corpus: every accepted format cut, mutated, crafted and disguised, each case with the outcome
:func:`core.uploads.read.read_upload` must give."""
from __future__ import annotations

import functools
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image

from core.uploads.policy import (
    UploadError,
)
from core.uploads.read import read_upload
from tests.core.uploads.crafted import (
    FF_FILL,
    FORMATS,
    KNOWN_REASONS,
    OK,
    SEED,
    Case,
    bmp_last_row_padding,
    cases_text,
    craft_png,
    encode,
    exif_rotated_jpeg,
    exp,
    float_tiff,
    gif_with_screen,
    gradient,
    huge_png,
    jpeg_ff_fill,
    jpeg_repeated_scans,
    noise,
    png_chunk,
    png_idat_end,
    sniff,
    tiff_i16b,
    tiff_ifd0_end,
    webp_lossless_blank,
    zlib_bomb,
)


@functools.cache
def format_bases(fmt: str) -> tuple[tuple[str, bytes], ...]:
    """Several small valid single-frame files per format (modes, sizes, compressions)."""
    rng = np.random.default_rng([SEED, 1, FORMATS.index(fmt)])
    out: list[tuple[str, bytes]] = []
    if fmt == "PNG":
        out += [
            ("rgb-23x17", encode(gradient(23, 17), "PNG")),
            ("l-noise-31x5", encode(noise(rng, 31, 5, "L"), "PNG")),
            ("p-16x16", encode(gradient(16, 16, "P"), "PNG")),
            ("rgba-9x13", encode(gradient(9, 13, "RGBA"), "PNG")),
            ("1-40x3", encode(noise(rng, 40, 3, "1"), "PNG")),
            ("i16-7x7", encode(Image.fromarray(rng.integers(0, 65536, (7, 7), dtype=np.uint16)), "PNG")),
        ]
    elif fmt == "JPEG":
        out += [
            ("rgb-24x32", encode(gradient(24, 32), "JPEG", quality=90)),
            ("l-17x9", encode(noise(rng, 17, 9, "L"), "JPEG")),
            ("rgb-prog-30x20", encode(gradient(30, 20), "JPEG", progressive=True)),
            ("cmyk-8x8", encode(gradient(8, 8, "CMYK"), "JPEG")),
        ]
    elif fmt == "WEBP":
        out += [
            ("lossy-20x20", encode(gradient(20, 20), "WEBP", quality=80)),
            ("lossless-rgba-15x9", encode(gradient(15, 9, "RGBA"), "WEBP", lossless=True)),
            ("lossy-noise-33x7", encode(noise(rng, 33, 7), "WEBP")),
        ]
    elif fmt == "BMP":
        out += [
            ("rgb-31x7-pad3", encode(gradient(31, 7), "BMP")),
            ("p-13x5-pad3", encode(gradient(13, 5, "P"), "BMP")),
            ("1-10x4-pad2", encode(noise(rng, 10, 4, "1"), "BMP")),
            ("l-14x6-pad2", encode(noise(rng, 14, 6, "L"), "BMP")),
            ("rgb-8x8-pad0", encode(gradient(8, 8), "BMP")),
        ]
    elif fmt == "GIF":
        out += [
            ("p-16x16", encode(gradient(16, 16, "P"), "GIF")),
            ("l-20x9", encode(noise(rng, 20, 9, "L"), "GIF")),
            ("rgb-33x7", encode(gradient(33, 7), "GIF")),
        ]
    elif fmt == "TIFF":
        out += [
            ("raw-rgb-12x10", encode(gradient(12, 10), "TIFF")),
            ("lzw-rgb-20x6", encode(gradient(20, 6), "TIFF", compression="tiff_lzw")),
            ("deflate-l-9x9", encode(noise(rng, 9, 9, "L"), "TIFF", compression="tiff_adobe_deflate")),
            ("packbits-p-11x4", encode(gradient(11, 4, "P"), "TIFF", compression="packbits")),
            ("raw-i16-6x5", encode(Image.fromarray(rng.integers(0, 65536, (5, 6), dtype=np.uint16)), "TIFF")),
        ]
    return tuple(out)


def expected_after_cut(fmt: str, data: bytes, cut: int) -> frozenset[str]:
    """Outcome of uploading ``data[:cut]`` (0 < cut < len(data)) of a valid single-frame file.

    Only the complete file decodes, except where the cut removes bytes that carry no pixel data:
    - PNG: everything after the zlib stream's pixel bytes (its Adler-32, the last IDAT's CRC, IEND).
      A cut at or past the end of the last IDAT payload decodes; a cut more than 8 bytes before it
      (Adler-32 + up to 3 bytes of end-of-block code / empty final block) is truncated; between: either.
    - GIF: the final block terminator and the trailer (the last 2 bytes).
    - BMP: the padding of the last stored row (rows are stored bottom-up, padded to 4 bytes).
    - JPEG: the EOI marker (last 2 bytes) sometimes: libjpeg may finish before reading it.
    - TIFF: when the first IFD is the last thing in the file (libtiff-compressed files, written after
      their strips), its final 4-byte next-IFD offset: a short read there means "no more pages".
    - WebP: only the complete file (libwebp wants the whole RIFF).
    """
    n = len(data)
    if fmt == "PNG":
        end = png_idat_end(data)
        if cut >= end:
            return exp(OK)
        return exp("truncated") if cut < end - 8 else exp(OK, "truncated")
    if fmt == "GIF":
        assert data.endswith(b"\x00;")
        return exp(OK) if cut >= n - 2 else exp("truncated")
    if fmt == "BMP":
        return exp(OK) if cut >= n - bmp_last_row_padding(data) else exp("truncated")
    if fmt == "JPEG":
        return exp(OK, "truncated") if cut >= n - 2 else exp("truncated")
    if fmt == "TIFF":
        return exp(OK) if tiff_ifd0_end(data) == n and cut >= n - 4 else exp("truncated")
    return exp("truncated")


def cases_truncated(fmt: str) -> list[Case]:
    rng = np.random.default_rng([SEED, 2, FORMATS.index(fmt)])
    cases = []
    for label, data in format_bases(fmt):
        n = len(data)
        cuts = set(rng.integers(1, n, 12).tolist()) | {1, 2, n // 2, n - 1}
        if fmt == "PNG":
            end = png_idat_end(data)
            cuts |= {end - 9, end - 4, end}
        elif fmt in ("GIF", "JPEG"):
            cuts |= {n - 2, n - 3}
        elif fmt == "BMP":
            pad = bmp_last_row_padding(data)
            cuts |= {n - pad, n - pad - 1}
        elif fmt == "TIFF":
            cuts |= {n - 4, n - 5, tiff_ifd0_end(data) - 1}
        for cut in sorted(c for c in cuts if 0 < c < n):
            cases.append(Case(f"{fmt}/{label}[:{cut}/{n}]", data[:cut], expected_after_cut(fmt, data, cut)))
    return cases


def cases_random() -> list[Case]:
    rng = np.random.default_rng([SEED, 3])
    lengths = sorted({int(x) for x in np.geomspace(1, 300_000, 120)} | set(range(1, 12)))
    cases = []
    for n in lengths:
        data = rng.bytes(n)
        fmt = sniff(data)
        cases.append(Case(f"random[{n}]", data, exp("truncated") if fmt else exp("not_an_image")))
    # Random bytes behind a real signature: the decoder is tried and must fail cleanly.
    signatures = {
        "PNG": b"\x89PNG\r\n\x1a\n", "JPEG": b"\xff\xd8\xff", "GIF": b"GIF89a",
        "WEBP": b"RIFF\x20\x00\x00\x00WEBPVP8 ", "TIFF": b"II*\x00", "BMP": b"BM",
    }
    for i in range(40):
        fmt = FORMATS[i % len(FORMATS)]
        sig = signatures[fmt]
        data = sig + rng.bytes(int(rng.integers(1, 3000)))
        # BMP: random bytes rarely give a valid DIB header size, so most are not BMPs at all. GIF: the
        # random logical-screen size is read before the (random) blocks fail, so "too_large" can win.
        want = exp("truncated") if sniff(data) else exp("not_an_image")
        if fmt == "GIF":
            want = exp("truncated", "too_large")
        cases.append(Case(f"signature+random/{fmt}/{i}", data, want))
    return cases


def cases_other_formats() -> list[Case]:
    """Real images in formats Pillow knows but the allow-list excludes: never decoded."""
    img = gradient(16, 16)
    makers: dict[str, Callable[[], bytes]] = {
        "ICO": lambda: encode(img, "ICO"),
        "PPM": lambda: encode(img, "PPM"),
        "PGM": lambda: encode(img.convert("L"), "PPM"),
        "TGA": lambda: encode(img, "TGA"),
        "PCX": lambda: encode(img, "PCX"),
        "SGI": lambda: encode(img, "SGI"),
        "PDF": lambda: encode(img, "PDF"),
        "JPEG2000": lambda: encode(img, "JPEG2000"),
        "AVIF": lambda: encode(img, "AVIF"),
        "QOI": lambda: encode(img, "QOI"),
        "DDS": lambda: encode(img.convert("RGBA"), "DDS"),
        "ICNS": lambda: encode(gradient(16, 16), "ICNS"),
        "XBM": lambda: encode(img.convert("1"), "XBM"),
        "EPS-header": lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
        "PSD-header": lambda: b"8BPS\x00\x01" + b"\x00" * 60,
    }
    cases = []
    for name, make in makers.items():
        try:
            data = make()
        except (OSError, KeyError, ValueError):  # writer not built into this Pillow
            continue
        assert sniff(data) is None, name
        cases.append(Case(f"other-format/{name}", data, exp("not_an_image")))
    assert len(cases) >= 10
    return cases


def animated(fmt: str, **kw) -> bytes:
    frames = [gradient(12, 10), gradient(12, 10).rotate(90), Image.new("RGB", (12, 10), "blue")]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], **kw)


def cases_special() -> list[Case]:
    rng = np.random.default_rng([SEED, 4])
    cases = [Case("empty", b"", exp("empty"))]
    ok = exp(OK)

    # Animation / multiple frames.
    cases += [
        Case("animated.gif", animated("GIF", duration=50, loop=0), exp("animated")),
        Case("animated.webp", animated("WEBP", duration=50), exp("animated")),
        Case("animated.png (APNG)", animated("PNG"), exp("animated")),
        Case("multipage.tiff", animated("TIFF"), exp("animated")),
        # Pillow's GIF writer merges identical consecutive frames: the file has one frame.
        Case("gif-2-identical-frames",
             encode(gradient(8, 8), "GIF", save_all=True, append_images=[gradient(8, 8)]), ok),
        Case("single-frame.gif", encode(gradient(8, 8, "P"), "GIF"), ok),
        # A camera JPEG with an extra (preview/depth) picture opens as MPO: a still photo.
        Case("mpo.jpg", encode(gradient(8, 8), "MPO", save_all=True, append_images=[gradient(4, 4)]), ok),
    ]

    # 1x1 in every format and several modes.
    for fmt in FORMATS:
        for mode in ("RGB", "L", "RGBA", "P", "1"):
            img = Image.new(mode, (1, 1), 1 if mode in ("1", "P", "L") else (10, 20, 30, 40)[: len(mode)])
            try:
                data = encode(img, fmt)
            except OSError:  # e.g. JPEG cannot hold RGBA/P/1
                continue
            cases.append(Case(f"1x1/{fmt}/{mode}", data, ok))

    # Modes that need a conversion.
    pal_trns = gradient(6, 6, "P")
    cases += [
        Case("png-16bit-grey", encode(Image.fromarray(rng.integers(0, 65536, (9, 11), dtype=np.uint16)), "PNG"), ok),
        Case("tiff-16bit-be", tiff_i16b(np.array([[0, 25700, 65535]], np.uint16)), ok),
        Case("tiff-float", encode(Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)), "TIFF"), ok),
        Case("tiff-int32", encode(Image.fromarray(np.array([[-5, 0, 70000]], np.int32)), "TIFF"), ok),
        Case("cmyk.jpg", encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"), ok),
        Case("palette.png", encode(gradient(6, 6, "P"), "PNG"), ok),
        Case("palette-transparent.png", encode(pal_trns, "PNG", transparency=0), ok),
        Case("la.png", encode(gradient(6, 6, "LA"), "PNG"), ok),
        Case("rgba.png", encode(gradient(6, 6, "RGBA"), "PNG"), ok),
        Case("rgba.webp", encode(gradient(6, 6, "RGBA"), "WEBP", lossless=True), ok),
        Case("bilevel.tiff", encode(gradient(6, 6, "1"), "TIFF", compression="group4"), ok),
        Case("exif-orientation-6.jpg", exif_rotated_jpeg(), ok),
        # Only the bytes are seen, so a "wrong extension" cannot matter.
        Case("photo.png (JPEG bytes)", encode(gradient(10, 7), "JPEG"), ok),
        Case("photo.jpg (PNG bytes)", encode(gradient(10, 7), "PNG"), ok),
    ]

    # Size limits.
    small = encode(gradient(100, 100), "PNG")
    # 60000x60000 RGB declared, 100 bytes of pixel data: refused before the missing data matters.
    header_only = craft_png(60000, 60000, bit_depth=8, color_type=2, idat=zlib.compress(b"\0" * 100))
    cases += [
        Case("max_bytes-1", small, exp("too_large"), {"max_bytes": len(small) - 1}),
        Case("max_bytes", small, ok, {"max_bytes": len(small)}),
        Case("max_pixels-1", small, exp("too_large"), {"max_pixels": 100 * 100 - 1}),
        Case("max_pixels", small, ok, {"max_pixels": 100 * 100}),
        Case("png-20000x20000", huge_png(20000, 20000), exp("too_large")),
        Case("png-7000x7000 (our cap only)", huge_png(7000, 7000), exp("too_large")),
        Case("png-10000x10000 (PIL warns)", huge_png(10000, 10000), exp("too_large")),
        # With our cap raised, Pillow's own guards refuse: its error (> 2 x MAX_IMAGE_PIXELS) ...
        Case("bomb-png-20000x20000", huge_png(20000, 20000), exp("decompression_bomb"), {"max_pixels": 10**10}),
        # ... and its warning (> MAX_IMAGE_PIXELS), escalated to an error.
        Case("bomb-png-10000x10000", huge_png(10000, 10000), exp("decompression_bomb"), {"max_pixels": 10**10}),
        Case("bomb-png-header-only", header_only, exp("decompression_bomb"), {"max_pixels": 10**10}),
        Case("header-only-60000x60000", header_only, exp("too_large")),
        Case("gif-65535x65535-screen", gif_with_screen(65535, 65535), exp("too_large")),
    ]

    # Bounded decoding: extreme aspect ratios, small files of many pixels, CPU bombs.
    cases += [
        Case("png-1x1000000", huge_png(1, 1_000_000), exp(OK, "too_slow")),
        Case("png-1x39999999", huge_png(1, 39_999_999), exp("too_large")),
        Case("webp-16383x2441-rgba", webp_lossless_blank(16383, 2441), exp("too_large")),
        Case("tiff-float32-6000x6000", float_tiff(6000, 6000), exp("too_large")),
        Case("gif-6000x6000-screen", gif_with_screen(6000, 6000), exp("too_large")),
        Case("jpeg-300-scans", jpeg_repeated_scans(300), exp("too_slow")),
        # About 4 CPU s here and under the worker's 2-3 s on a CPU 2.5x faster: either answer, in bounded time
        # (test_realistic_cpu_bombs_cost_at_most_the_bound); the limit itself: test_far_beyond_the_cpu_limit_...
        Case("jpeg-24MB-0xFF-fill", jpeg_ff_fill(FF_FILL), exp(OK, "too_slow")),
    ]

    # Metadata decompression bombs (small file, multi-megabyte zTXt / iCCP).
    tiny = zlib.compress(b"\x00\x00")
    ztxt = png_chunk(b"zTXt", b"k\x00\x00" + zlib_bomb())
    iccp = png_chunk(b"iCCP", b"p\x00\x00" + zlib_bomb())
    bomb = exp("decompression_bomb")
    cases += [
        Case("ztxt-bomb-before-idat", craft_png(1, 1, bit_depth=8, color_type=0, idat=tiny, before=ztxt), bomb),
        Case("ztxt-bomb-after-idat", craft_png(1, 1, bit_depth=8, color_type=0, idat=tiny, after=ztxt), bomb),
        Case("iccp-bomb", craft_png(1, 1, bit_depth=8, color_type=0, idat=tiny, before=iccp), bomb),
        Case("png-valid-crafted-1x1", craft_png(1, 1, bit_depth=8, color_type=0, idat=tiny), ok),
        # Zero-sized headers: Pillow refuses them while opening, i.e. a damaged file.
        Case("png-width-0", craft_png(0, 1, bit_depth=8, color_type=0, idat=tiny), exp("truncated")),
        Case("png-height-0", craft_png(1, 0, bit_depth=8, color_type=0, idat=zlib.compress(b"")), exp("truncated")),
        Case("png-bad-crc", small[:29] + bytes([small[29] ^ 0xFF]) + small[30:], exp("truncated")),
    ]
    return cases


def cases_mutated() -> list[Case]:
    """Random byte mutations of valid files. Outcome unknown, but never a decode of more than 1 MP."""
    rng = np.random.default_rng([SEED, 5])
    bases = [(f"{fmt}/{label}", data) for fmt in FORMATS for label, data in format_bases(fmt)]
    cases = []
    for i in range(200):
        label, data = bases[i % len(bases)]
        buf = bytearray(data)
        for _ in range(int(rng.integers(1, 6))):
            pos = int(rng.integers(0, len(buf)))
            op = int(rng.integers(0, 4))
            if op == 0:
                buf[pos] = int(rng.integers(0, 256))
            elif op == 1:
                buf[pos] ^= 1 << int(rng.integers(0, 8))
            elif op == 2:
                buf[pos : pos + 4] = rng.bytes(4)
            else:
                del buf[pos : pos + int(rng.integers(1, 16))]
        mutated = bytes(buf)
        want = None if sniff(mutated) else exp("not_an_image")
        cases.append(Case(f"mutated/{label}/{i}", mutated, want, {"max_pixels": 2**20}))
    return cases


@functools.cache
def corpus() -> dict[str, tuple[Case, ...]]:
    cats: dict[str, list[Case]] = {f"truncated-{fmt}": cases_truncated(fmt) for fmt in FORMATS}
    cats["random"] = cases_random()
    cats["text"] = cases_text()
    cats["other-formats"] = cases_other_formats()
    cats["special"] = cases_special()
    cats["mutated"] = cases_mutated()
    return {k: tuple(v) for k, v in cats.items()}


CATEGORIES = [f"truncated-{fmt}" for fmt in FORMATS] + ["random", "text", "other-formats", "special", "mutated"]


def outcome_of(case: Case) -> tuple[str, str | None]:
    """Run one case: (outcome, problem or None)."""
    try:
        img = read_upload(case.data, **case.kwargs)
    except UploadError as exc:
        if type(exc) is not UploadError:
            return "error", f"raised subclass {type(exc).__name__}"
        if exc.reason not in KNOWN_REASONS:
            return "error", f"unknown reason {exc.reason!r}"
        if not str(exc).strip():
            return exc.reason, "empty message"
        outcome = exc.reason
    except BaseException as exc:  # the harness reports whatever escaped  # noqa: BLE001
        return "error", f"escaped {type(exc).__name__}: {exc}"
    else:
        if not isinstance(img, Image.Image):
            return "error", f"returned {type(img).__name__}"
        if img.mode not in ("RGB", "L") or img.width < 1 or img.height < 1:
            return OK, f"returned mode {img.mode} size {img.size}"
        if getattr(img, "fp", None) is not None or img.im is None:
            return OK, "returned image not fully loaded"
        outcome = OK
    if case.expect is not None and outcome not in case.expect:
        return outcome, f"expected {sorted(case.expect)}"
    return outcome, None
