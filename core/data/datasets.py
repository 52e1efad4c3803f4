"""Dataset readers: Fashion-MNIST idx files and class-per-folder image trees, as uint8 image sources.

Every source yields images as uint8 arrays shaped ``(n, H, W, C)`` (what the run stores and what
:meth:`core.detector.Detector.score` takes) with integer labels ``(n,)``. User uploads are read by
:func:`read_upload` (re-exported from :mod:`core.uploads.read`).
"""
from __future__ import annotations

import copy
import gzip
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from core.errors import DatasetNotFound

__all__ = ["ImageSource", "SourceBase", "ArraySource", "FolderSource", "CsvSource", "Rows", "find_by_id",
           "DatasetNotFound", "load_fashion_mnist", "FMNIST_DIRS", "to_float"]

log = logging.getLogger(__name__)

#: Where Fashion-MNIST's gzipped idx files are looked for, in order (Debian's package first).
FMNIST_DIRS = ("/usr/share/datasets/fashion-mnist", "data/datasets/FashionMNIST/raw")
_FMNIST_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}



class ImageSource(Protocol):
    """Anything that yields labelled uint8 images by index."""

    labels: np.ndarray  # int64 (N,)

    def __len__(self) -> int: ...

    def get(self, idx: np.ndarray) -> np.ndarray:
        """uint8 images (len(idx), H, W, C)."""
        ...


class SourceBase:
    """Subsetting shared by the sources: :meth:`subset` (a seeded sample) and :meth:`rows` (a contiguous range)."""

    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: np.ndarray) -> SourceBase:
        """The rows ``idx`` (int array, sorted) as a source of the same kind."""
        raise NotImplementedError

    def subset(self, n: int, seed: int) -> SourceBase:
        """``n`` rows drawn without replacement by ``seed``, kept in their original order.

        Parameters
        ----------
        n : int
            Rows to keep; 0 or at least ``len(self)`` keeps every row (returns ``self``).
        seed : int
            Seed of ``numpy.random.default_rng``; the same seed picks the same rows.

        Returns
        -------
        SourceBase
            Of the same kind as ``self``, ``min(n, len(self))`` rows.
        """
        if not n or n >= len(self):
            return self
        return self.take(np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False)))

    def rows(self, start: int, stop: int) -> Rows:
        """Rows ``[start, stop)`` as a source (a view: nothing is read until :meth:`Rows.get`)."""
        return Rows(self, start, stop)


@dataclass
class Rows:
    """Rows ``[start, stop)`` of ``source``, as a source."""

    source: ImageSource
    start: int
    stop: int

    @property
    def labels(self) -> np.ndarray:
        """int64 (stop - start,)."""
        return self.source.labels[self.start:self.stop]

    def __len__(self) -> int:
        return self.stop - self.start

    def get(self, idx: np.ndarray) -> np.ndarray:
        """uint8 images (len(idx), H, W, C); ``idx`` counts from ``start``."""
        return self.source.get(np.asarray(idx) + self.start)


@dataclass
class ArraySource(SourceBase):
    """Images held in memory: ``images`` uint8 (N, H, W, C), ``labels`` int64 (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def get(self, idx: np.ndarray) -> np.ndarray:
        return np.asarray(self.images[idx])

    def take(self, idx: np.ndarray) -> ArraySource:
        return ArraySource(self.get(idx), self.labels[idx])


class FolderSource(SourceBase):
    """A class-per-folder image tree (torchvision ImageFolder layout), decoded and resized on demand.

    Parameters
    ----------
    root : path
        ``root/<class>/<image>``; classes are the sorted folder names.
    size : (H, W)
        Model input size; images are resized (shorter side to ``resize``) and centre-cropped.
    channels : int
        1 (grayscale) or 3 (RGB).
    resize : int, optional
        Shorter side before the crop (default: max(size)).
    """

    EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".jpe")

    def __init__(self, root: str | os.PathLike, *, size: tuple[int, int], channels: int, resize: int | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetNotFound(f"image folder {self.root} does not exist")
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        if not self.classes:
            raise DatasetNotFound(f"{self.root} has no class sub-folders (expected root/<class>/<image>)")
        paths, labels = [], []
        for c, name in enumerate(self.classes):
            for p in sorted((self.root / name).rglob("*")):
                if p.suffix.lower() in self.EXTENSIONS:
                    paths.append(p)
                    labels.append(c)
        if not paths:
            raise DatasetNotFound(f"{self.root}: no images with extensions {self.EXTENSIONS}")
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)
        self.size, self.channels, self.resize = tuple(size), channels, resize

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, idx: np.ndarray) -> np.ndarray:
        from core.uploads.read import read_upload
        from core.uploads.transforms import image_to_array

        out = np.empty((len(idx), *self.size, self.channels), np.uint8)
        for j, i in enumerate(np.asarray(idx).ravel()):
            img = read_upload(self.paths[int(i)].read_bytes())
            out[j] = image_to_array(img, size=self.size, channels=self.channels, resize=self.resize)
        return out

    def take(self, idx: np.ndarray) -> FolderSource:
        """The rows ``idx``, still read lazily (paths kept, for thumbnails)."""
        sub = copy.copy(self)
        sub.paths = [self.paths[i] for i in idx]
        sub.labels = self.labels[idx]
        return sub


def find_by_id(folder: Path, image_id: str) -> Path:
    """``folder/<image_id>.png`` (or .jpg/.jpeg); :class:`DatasetNotFound` naming the id if absent."""
    for ext in (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG"):
        p = Path(folder) / f"{image_id}{ext}"
        if p.is_file():
            return p
    raise DatasetNotFound(f"image {image_id}.png not found in {folder}")


class CsvSource(FolderSource):
    """Evaluation images listed in a CSV (the NIPS 2017 DEV set's format), read from a flat folder.

    The CSV has a header with at least ``ImageId`` and ``TrueLabel`` (and optionally ``TargetClass``); the
    image of row ``r`` is ``folder/<ImageId>.png`` (or .jpg/.jpeg). Labels are ``TrueLabel - label_offset``.

    Attributes
    ----------
    ids : list of str
        ImageId of each row.
    targets : int64 ndarray (N,) or None
        ``TargetClass - label_offset`` when the CSV has that column (attacks aim at it).
    """

    def __init__(self, csv_path: str | os.PathLike, folder: str | os.PathLike, *, size: tuple[int, int],
                 channels: int, resize: int | None = None, label_offset: int = 1):
        import csv

        csv_path, folder = Path(csv_path), Path(folder)
        if not csv_path.is_file():
            raise DatasetNotFound(f"labels CSV {csv_path} does not exist")
        if not folder.is_dir():
            raise DatasetNotFound(f"image folder {folder} does not exist")
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or "ImageId" not in rows[0] or "TrueLabel" not in rows[0]:
            raise ValueError(f"{csv_path}: expected a header with ImageId,TrueLabel[,TargetClass]")
        self.root = folder
        self.ids = [r["ImageId"] for r in rows]
        self.paths = [find_by_id(folder, i) for i in self.ids]
        self.labels = np.asarray([int(r["TrueLabel"]) - label_offset for r in rows], dtype=np.int64)
        self.targets = (np.asarray([int(r["TargetClass"]) - label_offset for r in rows], dtype=np.int64)
                        if "TargetClass" in rows[0] else None)
        self.classes = []
        self.size, self.channels, self.resize = tuple(size), channels, resize

    def take(self, idx: np.ndarray) -> CsvSource:
        sub = super().take(idx)
        sub.ids = [self.ids[i] for i in idx]
        if self.targets is not None:
            sub.targets = self.targets[idx]
        return sub


def _read_idx(path: Path) -> np.ndarray:
    """Read one gzipped idx file (images: uint8 (N, H, W); labels: uint8 (N,))."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path}: not a uint8 idx file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path}: truncated idx file ({arr.size} values, header says {dims})")
    return arr.reshape(dims)


def load_fashion_mnist(split: str, *, root: str | os.PathLike | None = None, download: bool = False) -> ArraySource:
    """Fashion-MNIST ``split`` ("train": 60 000 images, "test": 10 000) as an :class:`ArraySource`.

    Images are uint8 (N, 28, 28, 1), labels int64 (N,). Looks in ``root``, then :data:`FMNIST_DIRS`;
    with ``download=True`` falls back to torchvision's downloader into ``data/datasets``.

    Raises
    ------
    DatasetNotFound
        With the command that installs the files.
    """
    if split not in _FMNIST_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    img_name, lab_name = _FMNIST_FILES[split]
    dirs = ([Path(root)] if root else []) + [Path(d) for d in FMNIST_DIRS]
    for d in dirs:
        if (d / img_name).exists() and (d / lab_name).exists():
            images = _read_idx(d / img_name)[..., None]
            labels = _read_idx(d / lab_name).astype(np.int64)
            log.info("Fashion-MNIST %s: %d images from %s", split, len(labels), d)
            return ArraySource(np.ascontiguousarray(images), labels)
    if download:
        from torchvision.datasets import FashionMNIST

        FashionMNIST("data/datasets", train=split == "train", download=True)
        return load_fashion_mnist(split, root="data/datasets/FashionMNIST/raw")
    raise DatasetNotFound(
        f"Fashion-MNIST files not found in {', '.join(map(str, dirs))}. Install them with "
        "`sudo apt-get install -y dataset-fashion-mnist` (Debian), or rerun with --set dataset_download=true")


def __getattr__(name: str):
    """Re-export the upload reader (:mod:`core.uploads.read`) lazily: ``core.data.datasets.read_upload`` etc."""
    if name in ("read_upload", "UploadError", "image_to_array"):
        from core.uploads import read as uploads

        return getattr(uploads, name)
    raise AttributeError(f"module 'core.data.datasets' has no attribute {name!r}")


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W, C) -> float32 (N, C, H, W) in [0, 1]."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images (N, H, W, C), got {images.dtype} {images.shape}")
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)
