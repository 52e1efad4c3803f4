"""Unit tests of core.detector.Detector on the session's tiny run: loading, shapes, inputs, settings, threads."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from core._util.threads import (
    SINGLE_THREAD_MAX_INPUT,
    one_torch_thread,
    single_image_threads,
)
from core.detector import Detector
from core.evaluation.rundata import RunData
from core.results import Inspection, Scores
from core.uploads.policy import UploadError
from core.uploads.read import read_upload


@pytest.fixture(scope="module")
def det(tiny_run) -> Detector:
    return Detector.load(tiny_run, verify="full")


@pytest.fixture(scope="module")
def images(tiny_run) -> np.ndarray:
    data = RunData(tiny_run, verify=False)
    return np.stack([data.train_image(i) for i in range(6)])


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0]).save(buf, format="PNG")
    return buf.getvalue()


def test_load_reads_the_runs_parts(det: Detector) -> None:
    assert det.layers == ["conv2", "fc1"]
    assert len(det.classes) == 10
    assert det.input_spec.size == (1, 28, 28)
    assert det.defaults["k"] == 20 and det.k_max == 50
    assert det.train_labels.shape == (1200,)
    assert not det.model.training and not any(p.requires_grad for p in det.model.parameters())


def test_score_shapes_and_types(det: Detector, images: np.ndarray) -> None:
    s = det.score(images, k=5)
    assert isinstance(s, Scores)
    assert s.predicted.shape == (6,) and s.predicted.dtype == np.int64
    assert s.probs.shape == (6, 10) and s.probs.dtype == np.float32
    np.testing.assert_allclose(s.probs.sum(1), 1.0, rtol=1e-5)
    assert set(s.scores) == {"conv2", "fc1"}
    assert all(v.shape == (6,) for v in s.scores.values())
    assert s.settings == {"mode": det.defaults["mode"], "fn": det.defaults["fn"], "k": 5}
    assert set(det.score(images, layers=["fc1"]).scores) == {"fc1"}


def test_inspect_result(det: Detector, images: np.ndarray) -> None:
    r = det.inspect(images[0], n_neighbours=4)
    assert isinstance(r, Inspection)
    assert r.image.shape == (28, 28, 1) and r.image.dtype == np.uint8
    assert r.predicted.shape == (1,) and all(v.shape == (1,) for v in r.scores.values())
    assert len(r.top5) == 5 and r.top5[0][0] == int(r.predicted[0])
    assert set(r.timings) == {"prepare", "forward", "processing", "search", "scoring"}
    for layer in det.layers:
        assert len(r.neighbours[layer].ids) == 4
        assert np.all(np.diff(r.neighbours[layer].distances) >= 0)
        assert np.all(r.class_neighbours[layer].labels == r.predicted[0])
    # the batch path gives the same scores for the same image
    s = det.score(images[:1])
    for layer in det.layers:
        np.testing.assert_array_equal(s.scores[layer], r.scores[layer])


def test_inspect_takes_array_pil_and_upload_bytes_alike(det: Detector, images: np.ndarray) -> None:
    arr = images[1]
    by_array = det.inspect(arr)
    by_pil = det.inspect(Image.fromarray(arr[..., 0]))
    by_bytes = det.inspect(png_bytes(arr))
    by_bytearray = det.inspect(bytearray(png_bytes(arr)))
    for r in (by_pil, by_bytes, by_bytearray):
        np.testing.assert_array_equal(r.image, by_array.image)
        np.testing.assert_array_equal(r.predicted, by_array.predicted)
        np.testing.assert_array_equal(r.probs, by_array.probs)
        for layer in det.layers:
            np.testing.assert_array_equal(r.scores[layer], by_array.scores[layer])
            np.testing.assert_array_equal(r.neighbours[layer].ids, by_array.neighbours[layer].ids)
    np.testing.assert_array_equal(det.score(png_bytes(arr)).scores["fc1"], by_array.scores["fc1"])


def test_inspect_resizes_a_larger_upload(det: Detector, images: np.ndarray) -> None:
    big = Image.fromarray(images[2][..., 0]).resize((84, 112))
    buf = io.BytesIO()
    big.convert("RGB").save(buf, format="PNG")
    r = det.inspect(buf.getvalue())
    assert r.image.shape == (28, 28, 1)
    np.testing.assert_array_equal(r.scores["fc1"], det.inspect(read_upload(buf.getvalue())).scores["fc1"])


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty"),
    (b"hello, this is not an image\n" * 4, "not_an_image"),
    (None, "truncated"),
])
def test_inspect_refuses_bad_bytes_as_read_upload_does(det: Detector, images: np.ndarray, data, reason) -> None:
    if data is None:
        data = png_bytes(images[0])[:40]
    with pytest.raises(UploadError) as got:
        det.inspect(data)
    with pytest.raises(UploadError) as want:
        read_upload(data)
    assert got.value.reason == want.value.reason == reason
    assert str(got.value) == str(want.value)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"k": True}, TypeError, "k must be an int"),
    ({"k": 2.0}, TypeError, "k must be an int"),
    ({"k": "5"}, TypeError, "k must be an int"),
    ({"k": 0}, ValueError, r"k must be in \[1, 50\], got 0"),
    ({"k": 51}, ValueError, r"k must be in \[1, 50\], got 51"),
    ({"fn": "nope"}, ValueError, "unknown score function 'nope'"),
    ({"mode": "nope"}, ValueError, "unknown layer/mode"),
])
def test_settings_are_validated(det: Detector, images: np.ndarray, kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        det.score(images[:2], **kwargs)
    with pytest.raises(error, match=match):
        det.inspect(images[0], **kwargs)


def test_k_accepts_numpy_ints(det: Detector, images: np.ndarray) -> None:
    assert det.score(images[:1], k=np.int64(7)).settings["k"] == 7


@pytest.mark.parametrize(("bad", "match"), [
    (np.zeros((28, 28, 1), np.float32), "expected uint8 pixels"),
    (np.zeros((32, 32, 1), np.uint8), r"expected images shaped \(N, 28, 28, 1\)"),
    (np.zeros((2, 28, 28, 3), np.uint8), r"expected images shaped \(N, 28, 28, 1\)"),
])
def test_prepare_refuses_arrays_not_of_the_models_input(det: Detector, bad, match) -> None:
    with pytest.raises(ValueError, match=match):
        det.inspect(bad)


def test_inspect_takes_one_image(det: Detector, images: np.ndarray) -> None:
    with pytest.raises(ValueError, match="inspect takes one image, got 2"):
        det.inspect(images[:2])


def test_single_small_image_runs_on_one_torch_thread(det: Detector, images: np.ndarray) -> None:
    seen: list[int] = []
    handle = det._extractor.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        det.inspect(images[0])
        det.score(images[:3])
        assert torch.get_num_threads() == 2
    finally:
        handle.remove()
        torch.set_num_threads(old)
    assert seen == [1, 2]


def test_thread_rule_helpers() -> None:
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_torch_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        side = int(np.sqrt(SINGLE_THREAD_MAX_INPUT // 3)) + 1
        with single_image_threads(np.zeros((1, side, side, 3), np.uint8)):
            assert torch.get_num_threads() == 2
        with single_image_threads(np.zeros((2, 28, 28, 1), np.uint8)):
            assert torch.get_num_threads() == 2
        with single_image_threads(np.zeros((1, 28, 28, 1), np.uint8)):
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(old)
