"""Write a small ImageFolder of coloured circles, squares and triangles (the worked example's data).

    python -m examples.make_shapes                       # data/shapes/{train,test}/<class>/*.png
    python -m examples.make_shapes --out /tmp/shapes --train 50 --test 20

Each image is ``size``×``size`` RGB: a bright shape of random colour, size, position and rotation on a
noisy dark background of another random colour. The same ``--seed`` writes the same images.
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["CLASSES", "draw", "write_folder", "main"]

log = logging.getLogger(__name__)

CLASSES = ("circle", "square", "triangle")


def _polygon(cx: float, cy: float, r: float, sides: int, angle: float) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(angle + 2 * math.pi * i / sides), cy + r * math.sin(angle + 2 * math.pi * i / sides))
            for i in range(sides)]


def draw(shape: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One image of ``shape`` (one of :data:`CLASSES`), uint8 (size, size, 3)."""
    bg, fg = rng.integers(0, 96, 3), rng.integers(160, 256, 3)  # a bright shape on a dark background
    noise = rng.normal(0, 12, (size, size, 3))
    img = Image.fromarray(np.clip(bg + noise, 0, 255).astype(np.uint8))
    r = rng.uniform(0.22, 0.4) * size
    cx, cy = rng.uniform(r, size - r, 2)
    angle = rng.uniform(0, 2 * math.pi)
    d, colour = ImageDraw.Draw(img), tuple(int(v) for v in fg)
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        d.polygon(_polygon(cx, cy, r * 1.1, 4, angle), fill=colour)
    elif shape == "triangle":
        d.polygon(_polygon(cx, cy, r * 1.2, 3, angle), fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}; use one of {CLASSES}")
    return np.asarray(img)


def write_folder(out: str | Path, *, n_train: int = 200, n_test: int = 50, size: int = 32, seed: int = 0) -> Path:
    """Write ``out/{train,test}/<class>/<i>.png``: ``n_train`` and ``n_test`` images per class; return ``out``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for shape in CLASSES:
            folder = out / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(draw(shape, rng, size)).save(folder / f"{i:04d}.png")
    log.info("wrote %d training and %d test images per class under %s", n_train, n_test, out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m examples.make_shapes", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="data/shapes", help="output folder (default: data/shapes)")
    p.add_argument("--train", type=int, default=200, help="training images per class (default: 200)")
    p.add_argument("--test", type=int, default=50, help="test images per class (default: 50)")
    p.add_argument("--size", type=int, default=32, help="image side in pixels (default: 32)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_folder(args.out, n_train=args.train, n_test=args.test, size=args.size, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
