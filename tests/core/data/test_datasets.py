"""core.data.datasets on tiny synthetic data: sources, subsets and row ranges, the CSV format, idx files, to_float."""
import csv
import gzip

import numpy as np
import pytest
from PIL import Image

from core.data import datasets as data
from core.data.datasets import (
    ArraySource,
    CsvSource,
    FolderSource,
    Rows,
    find_by_id,
    to_float,
)
from core.errors import DatasetNotFound


def _array(n=10, h=4, w=5, c=1, seed=0) -> ArraySource:
    rng = np.random.default_rng(seed)
    return ArraySource(rng.integers(0, 256, (n, h, w, c), dtype=np.uint8), np.arange(n, dtype=np.int64) % 3)


@pytest.fixture()
def folder(tmp_path):
    """root/<class>/<image>.png: classes b, a (sorted to a, b), 3 images each of varied sizes, plus a non-image."""
    rng = np.random.default_rng(1)
    for name in ("b", "a"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    return tmp_path


def _csv(tmp_path, folder, *, targets: bool):
    flat = tmp_path / "flat"
    flat.mkdir()
    rows = []
    for i, p in enumerate(sorted(folder.rglob("*.png"))):
        Image.open(p).save(flat / f"id{i}.png")
        rows.append({"ImageId": f"id{i}", "TrueLabel": i % 2 + 1, **({"TargetClass": (i + 1) % 2 + 1} if targets else {})})
    with open(tmp_path / "images.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return CsvSource(tmp_path / "images.csv", flat, size=(8, 8), channels=3)


def test_array_source_get_and_len():
    src = _array()
    assert len(src) == 10
    got = src.get(np.array([3, 1]))
    assert got.dtype == np.uint8 and got.shape == (2, 4, 5, 1)
    np.testing.assert_array_equal(got, src.images[[3, 1]])


def test_subset_is_deterministic_sorted_and_keeps_pairs():
    src = _array(n=50)
    a, b, other = src.subset(12, seed=7), src.subset(12, seed=7), src.subset(12, seed=8)
    assert isinstance(a, ArraySource) and len(a) == 12
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, other.images)
    # each kept image still has its own label, in the original order
    rows = [int(np.flatnonzero((src.images == img).all(axis=(1, 2, 3)))[0]) for img in a.images]
    assert rows == sorted(rows)
    np.testing.assert_array_equal(a.labels, src.labels[rows])


@pytest.mark.parametrize("n", [0, 10, 11])
def test_subset_of_everything_is_the_source(n):
    src = _array(n=10)
    assert src.subset(n, seed=0) is src


def test_rows_is_a_view_counting_from_start():
    src = _array(n=10)
    r = src.rows(4, 9)
    assert isinstance(r, Rows) and len(r) == 5
    np.testing.assert_array_equal(r.labels, src.labels[4:9])
    np.testing.assert_array_equal(r.get(np.array([0, 4])), src.images[[4, 8]])


def test_folder_source_reads_sorted_classes_at_model_size(folder):
    src = FolderSource(folder, size=(8, 6), channels=1)
    assert src.classes == ["a", "b"] and len(src) == 6
    np.testing.assert_array_equal(src.labels, [0, 0, 0, 1, 1, 1])
    imgs = src.get(np.arange(6))
    assert imgs.shape == (6, 8, 6, 1) and imgs.dtype == np.uint8


def test_folder_subset_stays_lazy_and_aligned(folder):
    src = FolderSource(folder, size=(8, 8), channels=3)
    sub = src.subset(4, seed=3)
    assert isinstance(sub, FolderSource) and len(sub) == 4 and len(src) == 6
    idx = [src.paths.index(p) for p in sub.paths]
    assert idx == sorted(idx)
    np.testing.assert_array_equal(sub.labels, src.labels[idx])
    np.testing.assert_array_equal(sub.get(np.arange(4)), src.get(np.array(idx)))
    assert src.subset(4, seed=3).paths == sub.paths


def test_folder_source_errors(tmp_path):
    with pytest.raises(DatasetNotFound, match="does not exist"):
        FolderSource(tmp_path / "missing", size=(8, 8), channels=3)
    with pytest.raises(DatasetNotFound, match="no class sub-folders"):
        FolderSource(tmp_path, size=(8, 8), channels=3)
    (tmp_path / "a").mkdir()
    with pytest.raises(DatasetNotFound, match="no images"):
        FolderSource(tmp_path, size=(8, 8), channels=3)


@pytest.mark.parametrize("targets", [True, False])
def test_csv_subset_keeps_ids_targets_and_paths_aligned(tmp_path, folder, targets):
    src = _csv(tmp_path, folder, targets=targets)
    np.testing.assert_array_equal(src.labels, [0, 1, 0, 1, 0, 1])  # TrueLabel - 1
    assert (src.targets is not None) == targets
    sub = src.subset(3, seed=5)
    assert isinstance(sub, CsvSource) and len(sub) == len(sub.ids) == len(sub.paths) == 3
    assert [p.stem for p in sub.paths] == sub.ids  # the id of row r names the image of row r
    rows = [src.ids.index(i) for i in sub.ids]
    np.testing.assert_array_equal(sub.labels, src.labels[rows])
    if targets:
        np.testing.assert_array_equal(sub.targets, src.targets[rows])


def test_csv_source_errors(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "bad.csv").write_text("Id,Label\nx,1\n")
    with pytest.raises(ValueError, match="ImageId,TrueLabel"):
        CsvSource(tmp_path / "bad.csv", tmp_path / "imgs", size=(8, 8), channels=3)
    with pytest.raises(DatasetNotFound, match="labels CSV"):
        CsvSource(tmp_path / "none.csv", tmp_path / "imgs", size=(8, 8), channels=3)


def test_find_by_id(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"")
    assert find_by_id(tmp_path, "x") == tmp_path / "x.jpg"
    with pytest.raises(DatasetNotFound, match="y.png"):
        find_by_id(tmp_path, "y")


def _idx(path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_load_fashion_mnist_from_idx_files(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FMNIST_DIRS", ())
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    _idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 2, 3, 9]))
    src = data.load_fashion_mnist("test", root=tmp_path)
    assert src.images.shape == (5, 28, 28, 1) and src.labels.dtype == np.int64
    np.testing.assert_array_equal(src.images[..., 0], images)
    with pytest.raises(DatasetNotFound, match="apt-get install"):
        data.load_fashion_mnist("train", root=tmp_path)
    with pytest.raises(ValueError, match="split"):
        data.load_fashion_mnist("val", root=tmp_path)


def test_truncated_idx_file_is_refused(tmp_path):
    p = tmp_path / "x.gz"
    with gzip.open(p, "wb") as f:
        f.write(bytes([0, 0, 0x08, 1]) + (10).to_bytes(4, "big") + bytes(3))
    with pytest.raises(ValueError, match="truncated"):
        data._read_idx(p)


def test_to_float_layout_and_range():
    imgs = np.array([[[[0, 255, 51]]]], dtype=np.uint8)  # (1, 1, 1, 3)
    x = to_float(imgs)
    assert x.shape == (1, 3, 1, 1) and x.dtype == np.float32
    np.testing.assert_allclose(x.ravel(), [0.0, 1.0, 0.2], atol=1e-7)
    with pytest.raises(ValueError, match="uint8"):
        to_float(imgs.astype(np.float32))
