"""One uploaded image, all layers, k = 1000: ``Detector.inspect`` latency after warm-up, p50 / p95 over 200 calls,
split into its stages (``Inspection.timings``: prepare, forward pass, processing, search, scoring).

    python -m benchmarks.inspect_latency                 # data/runs/fmnist, 200 calls, k = 1000
    python -m benchmarks.inspect_latency --calls 500 --k 100
"""
from __future__ import annotations

import logging
import time
from typing import Any

from benchmarks import _common as C
from benchmarks.summary import publish

log = logging.getLogger(__name__)

STAGES = ("prepare", "forward", "processing", "search", "scoring")


def run(run: str = str(C.DEFAULT_RUN), *, calls: int = 200, k: int = 1000, warmup: int = 10, threads: int = 0,
        seed: int = 0, out_dir: str | None = None) -> dict[str, Any]:
    """Time ``calls`` inspections of evaluation images; write and print ``inspect_latency.json``."""
    from core.detector import Detector

    nthreads = C.set_threads(threads)
    mach = C.machine()
    C.require_run(run)
    t0 = time.perf_counter()
    det = Detector.load(run, verify="none")
    load_s = time.perf_counter() - t0
    k = min(k, det.k_max, len(det.train_labels))
    images = C.eval_images(run, max(calls, 1), seed=seed)
    for i in range(warmup):
        det.inspect(images[i % len(images)], k=k)
    walls, timings = [], []
    for image in images[:calls]:
        t0 = time.perf_counter()
        timings.append(det.inspect(image, k=k).timings)
        walls.append(time.perf_counter() - t0)
    latency = {"total": C.percentiles(walls), **{s: C.percentiles([t.get(s, 0.0) for t in timings]) for s in STAGES}}
    mode = det.defaults["mode"]
    result = {"machine": mach,
              "settings": {"run": str(run), "calls": calls, "k": k, "mode": mode, "fn": det.defaults["fn"],
                           "layers": det.layers, "dims": {la: int(det.processing_and_index(la, mode)[1].d) for la in det.layers},
                           "n_train": int(len(det.train_labels)), "threads": nthreads},
              "load_seconds": load_s, "variants": {"ours": latency},
              "rows": [{"variant": "ours", "p50_ms": latency["total"]["p50"], "p95_ms": latency["total"]["p95"],
                        **{f"{s}_p50": latency[s]["p50"] for s in STAGES}}],
              "targets": {"p50<50ms": latency["total"]["p50"] < 50, "p50<20ms (aim)": latency["total"]["p50"] < 20}}
    publish("inspect_latency", result, out_dir)
    return result


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--k", type=int, default=1000)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    run(a.run, calls=20 if a.quick else a.calls, k=a.k, threads=a.threads, out_dir=a.out, warmup=2 if a.quick else 10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
