"""One uploaded image, all layers, k = 1000: ``Detector.inspect`` latency after warm-up, p50 / p95 over 200 calls,
split into forward pass, processing, search and scoring (``Inspection.timings``).

    python -m benchmarks.inspect_latency                 # data/runs/fmnist, 200 calls, k = 1000
    python -m benchmarks.inspect_latency --calls 500 --k 100

Next to ours, the same calls with what it replaced, interleaved in chunks so load hits all alike: ``before``
(faiss's own search on every thread and the forward pass on every torch thread: the code before issue 5),
``faiss_all_threads`` and ``torch_all_threads`` (one of the two put back), and ``blocked_path`` (one query
through the sgemm + partition path of batched searches instead of faiss on one thread).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from benchmarks import _common as C

log = logging.getLogger(__name__)

STAGES = ("prepare", "forward", "processing", "search", "scoring")
VARIANTS = ("ours", "before", "faiss_all_threads", "torch_all_threads", "blocked_path")


@contextmanager
def _variant(name: str) -> Iterator[None]:
    """Patch the library into variant ``name`` for the block."""
    from core import detector
    from core import index as knn_index

    orig_search, orig_max = knn_index.search, detector.SINGLE_THREAD_MAX_INPUT

    def plain(index, xq, k):  # faiss as is, every thread
        return index.search(np.ascontiguousarray(xq, np.float32), min(int(k), index.ntotal))

    def blocked(index, xq, k):
        k = min(int(k), index.ntotal)
        if knn_index._is_flat_l2(index):
            return knn_index._flat_l2_blocked(index, np.ascontiguousarray(xq, np.float32), k)
        return orig_search(index, xq, k)

    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; use one of {VARIANTS}")
    try:
        if name in ("before", "faiss_all_threads"):
            knn_index.search = plain
        if name in ("before", "torch_all_threads"):
            detector.SINGLE_THREAD_MAX_INPUT = 0
        if name == "blocked_path":
            knn_index.search = blocked
        yield
    finally:
        knn_index.search = orig_search
        detector.SINGLE_THREAD_MAX_INPUT = orig_max


def _summary(timings: list[dict[str, float]], walls: list[float]) -> dict[str, Any]:
    out: dict[str, Any] = {"total": C.percentiles(walls)}
    for s in STAGES:
        out[s] = C.percentiles([t.get(s, 0.0) for t in timings])
    return out


def run(run: str = str(C.DEFAULT_RUN), *, calls: int = 200, k: int = 1000, variants: tuple[str, ...] = VARIANTS, chunk: int = 20, warmup: int = 10,
        threads: int = 0, seed: int = 0, out_dir: str | None = None) -> dict[str, Any]:
    """Time ``calls`` inspections per variant; print the table; write ``inspect_latency.json``."""
    from core.detector import Detector

    nthreads = C.set_threads(threads)
    mach = C.machine()
    if not C.run_exists(run):
        raise SystemExit(f"no finished run at {run}: build it with "
                         "`python -m precompute --config precompute/configs/fmnist.toml`")
    t0 = time.perf_counter()
    det = Detector.load(run, verify="none")
    load_s = time.perf_counter() - t0
    k = min(k, det.k_max if k > det.k_max else k, len(det.train_labels))
    images = C.eval_images(run, max(calls, 1), seed=seed)
    for i in range(warmup):
        for v in variants:
            with _variant(v):
                det.inspect(images[i % len(images)], k=k)
    timings: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    walls: dict[str, list[float]] = {v: [] for v in variants}
    for start in range(0, calls, chunk):
        for v in variants:
            with _variant(v):
                for i in range(start, min(start + chunk, calls)):
                    t = time.perf_counter()
                    r = det.inspect(images[i], k=k)
                    walls[v].append(time.perf_counter() - t)
                    timings[v].append(r.timings)
    summ = {v: _summary(timings[v], walls[v]) for v in variants}
    rows = []
    for v in variants:
        s = summ[v]
        rows.append({"variant": v, "p50_ms": s["total"]["p50"], "p95_ms": s["total"]["p95"],
                     **{f"{st}_p50": s[st]["p50"] for st in STAGES},
                     "vs_ours_p50": s["total"]["p50"] / summ["ours"]["total"]["p50"]})
    speedup = {v: summ[v]["total"]["p50"] / summ["ours"]["total"]["p50"] for v in variants if v != "ours"}
    layers = det.layers
    dims = {la: int(det._get(la, det.defaults["mode"])[1].d) for la in layers}
    result = {"benchmark": "inspect_latency", "machine": mach,
              "settings": {"run": str(run), "calls": calls, "k": k, "mode": det.defaults["mode"],
                           "fn": det.defaults["fn"], "layers": layers, "dims": dims,
                           "n_train": int(len(det.train_labels)), "threads": nthreads, "chunk": chunk},
              "load_seconds": load_s, "variants": summ, "rows": rows, "p50_vs_ours": speedup,
              "targets": {"p50<50ms": summ["ours"]["total"]["p50"] < 50,
                          "p50<20ms (aim)": summ["ours"]["total"]["p50"] < 20}}
    C.publish("inspect_latency", result, out_dir)
    return result


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--k", type=int, default=1000)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    run(a.run, calls=20 if a.quick else a.calls, k=a.k, threads=a.threads, out_dir=a.out,
        chunk=5 if a.quick else 20, warmup=2 if a.quick else 10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
