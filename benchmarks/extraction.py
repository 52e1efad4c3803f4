"""Feature-extraction throughput (images/s) of the ImageNet zoo models, with their default taps.

    python -m benchmarks.extraction                          # cuda when present, else cpu
    python -m benchmarks.extraction --device cpu --n 64 --models vgg16

Random weights (``weights=None``: nothing to download) and random uint8 images at each model's input size;
the time is that of :func:`core.models.features.extract` (forward pass, global average pooling of every tap, copy to
host), after one warm-up batch. Writes ``benchmarks/results/extraction.json``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks import _common as C
from core.models import zoo
from core.models.features import extract


def measure(name: str, *, n: int, batch_size: int, device: str, amp: bool) -> dict:
    """Images/s of ``extract`` for zoo model ``name`` on ``n`` random images."""
    model = zoo.build(name, weights=None).to(device)
    c, h, w = zoo.entry(name).input_size
    images = np.random.default_rng(0).integers(0, 256, (n, h, w, c), dtype=np.uint8)
    layers = zoo.layers(name)
    extract(model, layers, images[:batch_size], batch_size=batch_size, device=device, amp=amp)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    extract(model, layers, images, batch_size=batch_size, device=device, amp=amp)
    seconds = time.perf_counter() - t0
    return {"model": name, "device": device, "amp": amp, "n": n, "batch_size": batch_size, "layers": len(layers),
            "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="+", default=["inception_v3", "vgg16"])
    p.add_argument("--n", type=int, default=None, help="images per model (default 2048 on cuda, 32 on cpu)")
    p.add_argument("--batch-size", type=int, default=None, help="default 256 on cuda, 16 on cpu")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (cuda)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    a = p.parse_args(argv)
    cuda = a.device.startswith("cuda")
    n = a.n or (2048 if cuda else 32)
    bs = a.batch_size or (256 if cuda else 16)
    rows = [measure(m, n=n, batch_size=bs, device=a.device, amp=a.amp) for m in a.models]
    name = torch.cuda.get_device_name() if cuda else f"{torch.get_num_threads()} CPU threads"
    for r in rows:
        print(f"{r['model']:>14} on {name}: {r['images_per_s']:8.1f} images/s "
              f"({r['n']} images, batch {r['batch_size']}, {r['layers']} taps, amp={r['amp']})")
    C.write_result("extraction", {"device_name": name, "rows": rows}, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
