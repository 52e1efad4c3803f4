""":func:`core.uploads.transforms.image_to_array`: shapes, filters, torchvision's resize and crop, time and memory."""
from __future__ import annotations

import sys
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from core.uploads.transforms import image_to_array
from tests.core.uploads.crafted import ARRAY_OF_BLANK, SEED, gradient, noise


@pytest.mark.parametrize(
    ("src_size", "src_mode", "size", "channels"),
    [
        ((37, 19), "RGB", (28, 28), 1),
        ((37, 19), "L", (28, 28), 3),
        ((101, 77), "L", (299, 299), 3),  # upscale
        ((33, 17), "RGB", (24, 40), 3),  # non-square target
        ((5, 301), "RGBA", (16, 8), 1),
        ((1, 1), "RGB", (3, 5), 3),
        ((28, 28), "L", (28, 28), 1),  # identity
    ],
)
def test_image_to_array_shapes_and_dtypes(src_size, src_mode, size, channels) -> None:
    arr = image_to_array(gradient(*src_size, src_mode), size=size, channels=channels)
    assert arr.shape == (*size, channels) and arr.dtype == np.uint8
    assert arr.flags.c_contiguous and arr.flags.writeable
    if channels == 3 and src_mode == "L":
        assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])


@pytest.mark.parametrize("mode", Image.MODES)
def test_every_pillow_mode_has_a_conversion(mode: str) -> None:
    arr = image_to_array(Image.new(mode, (5, 3)), size=(4, 4), channels=3)
    assert arr.shape == (4, 4, 3) and arr.dtype == np.uint8


def test_image_to_array_identity_and_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    img = gradient(28, 28, "L")
    assert np.array_equal(image_to_array(img, size=(28, 28), channels=1)[..., 0], np.asarray(img))

    seen: list[int] = []
    original = Image.Image.resize

    def spy(self, size, resample=None, *args, **kwargs):
        seen.append(resample)
        return original(self, size, resample, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    image_to_array(gradient(90, 60), size=(28, 28), channels=3)
    image_to_array(gradient(9, 6), size=(28, 28), channels=3)
    assert seen == [Image.Resampling.LANCZOS, Image.Resampling.BICUBIC]


def test_image_to_array_centre_crops() -> None:
    # 60x20: red | green | blue thirds. Target 10x10: scale 1/2 -> 30x10, centre 10 columns = green.
    img = Image.new("RGB", (60, 20), (255, 0, 0))
    img.paste((0, 255, 0), (20, 0, 40, 20))
    img.paste((0, 0, 255), (40, 0, 60, 20))
    arr = image_to_array(img, size=(10, 10), channels=3)
    assert arr[:, 2:8, 1].min() > 200 and arr[:, 2:8, 0].max() < 60 and arr[:, 2:8, 2].max() < 60


def test_image_to_array_matches_torchvision_resize_centercrop() -> None:
    tvf = pytest.importorskip("torchvision.transforms.functional")
    from torchvision.transforms import InterpolationMode

    rng = np.random.default_rng([SEED, 6])
    for w, h, s in [(37, 19, 28), (64, 48, 32), (13, 29, 57)]:
        img = noise(rng, w, h)
        mode = InterpolationMode.LANCZOS if s < min(w, h) else InterpolationMode.BICUBIC
        ref = tvf.center_crop(tvf.resize(img, s, interpolation=mode), [s, s])
        assert np.array_equal(image_to_array(img, size=(s, s), channels=3), np.asarray(ref)), (w, h, s)


def test_image_to_array_resize_then_crop_matches_torchvision_eval_transform() -> None:
    tvf = pytest.importorskip("torchvision.transforms.functional")
    from torchvision.transforms import InterpolationMode

    rng = np.random.default_rng([SEED, 7])
    # (w, h, resize, crop): InceptionV3-like 342 -> 299 (down- and upscaling sources), VGG-like 256 -> 224.
    for w, h, resize, crop in [(500, 380, 342, 299), (200, 260, 342, 299), (300, 300, 256, 224)]:
        img = noise(rng, w, h)
        mode = InterpolationMode.LANCZOS if resize < min(w, h) else InterpolationMode.BICUBIC
        ref = tvf.center_crop(tvf.resize(img, resize, interpolation=mode), [crop, crop])
        got = image_to_array(img, size=(crop, crop), channels=3, resize=resize)
        assert np.array_equal(got, np.asarray(ref)), (w, h, resize, crop)


def test_image_to_array_resize_edge_cases() -> None:
    img = gradient(28, 28, "L")
    assert np.array_equal(image_to_array(img, size=(28, 28), channels=1, resize=28)[..., 0], np.asarray(img))
    # A resize too small to cover the crop is not padded with black: the image is scaled to cover instead.
    arr = image_to_array(gradient(40, 30), size=(20, 20), channels=3, resize=10)
    assert arr.shape == (20, 20, 3) and arr.mean() > 20
    assert image_to_array(gradient(31, 47), size=(8, 6), channels=1, resize=9).shape == (8, 6, 1)


@pytest.mark.parametrize(
    "bad",
    [
        {"size": (0, 5), "channels": 3},
        {"size": (5,), "channels": 3},
        {"size": (5, 5), "channels": 4},
        {"size": (5, 5), "channels": 3, "resize": 0},
        {"size": (5, 5), "channels": 3, "resize": 2.5},
    ],
)
def test_image_to_array_rejects_bad_arguments(bad: dict) -> None:
    with pytest.raises(ValueError):
        image_to_array(gradient(4, 4), **bad)


@pytest.mark.parametrize("size", [(1, 4_000_000), (4_000_000, 1), (3, 5_000_000)])
def test_extreme_aspect_ratio_is_cropped_before_resizing(size: tuple[int, int]) -> None:
    """Finding 7: a 1xN image was resized (short side up) before the crop: gigabytes, MemoryError."""
    import json
    import subprocess

    from tests.conftest import ROOT

    proc = subprocess.run([sys.executable, "-c", ARRAY_OF_BLANK, str(ROOT), *map(str, size)],
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    res = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert res["outcome"] == "ok" and res["cpu"] < 3.0, res


def test_image_to_array_time_and_memory_follow_the_output_size() -> None:
    img = Image.new("L", (1, 1_000_000), 77)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        arr = image_to_array(img, size=(299, 299), channels=3, resize=342)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert arr.shape == (299, 299, 3) and int(arr.min()) == int(arr.max()) == 77
    assert elapsed < 3.0 and peak < 20 * 2**20, (elapsed, peak)
