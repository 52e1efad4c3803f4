"""Exact kNN search on a GPU (core.knn.torch_search) against the CPU paths, on clustered synthetic features.

    python -m benchmarks.gpu_search                 # needs CUDA; sizes of the default run and of ImageNet
    python -m benchmarks.gpu_search --quick         # small sizes (also runs on torch's CPU backend)

For each (N, d): queries/s of 1000 queries at k = 1000 through ``core.knn.index.search`` with ``device="cuda"``
(chunked matmul + ``torch.topk``), through ``core.knn.index.search`` on the CPU (faiss flat index, our blocked
path, every core), and through torch on the CPU; recall@k of the GPU result against float64 brute force on a
sample of queries. Writes ``benchmarks/results/gpu_search.json``.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks import _common as C
from benchmarks.scale import synthetic
from core.knn import index as knn_index
from core.knn.torch_search import exact_knn


def _recall(I: np.ndarray, Iref: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) / len(b) for a, b in zip(I, Iref)]))


def _brute64(xb: np.ndarray, xq: np.ndarray, k: int) -> np.ndarray:
    xb64 = xb.astype(np.float64)
    d = (xq.astype(np.float64) ** 2).sum(1)[:, None] - 2 * xq.astype(np.float64) @ xb64.T + (xb64 ** 2).sum(1)
    return np.argpartition(d, k - 1, axis=1)[:, :k]


def _time(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(n: int, d: int, *, nq: int, k: int, device: str, cpu_nq: int, n_check: int) -> dict:
    """Queries/s of each path at one size (best of a few rounds) and the GPU result's recall."""
    xb, _ = synthetic(n + nq, d, n_classes=min(1000, max(10, n // 60)), seed=d)
    xb, xq = xb[:n], xb[n:]
    index = knn_index.build(xb, kind="flat")
    row = {"n": n, "d": d, "nq": nq, "k": k}
    D, I = knn_index.search(index, xq, k, device=device)
    row["gpu_qps"] = nq / _time(lambda: knn_index.search(index, xq, k, device=device), 3)
    sub = xq[:cpu_nq]
    row["faiss_cpu_qps"] = cpu_nq / _time(lambda: knn_index.search(index, sub, k), 1)
    row["torch_cpu_qps"] = cpu_nq / _time(lambda: exact_knn(xb, sub, k, device="cpu"), 1)
    row["recall_vs_float64"] = _recall(I[:n_check], _brute64(xb, xq[:n_check], k))
    row["gpu_x_faiss_cpu"] = row["gpu_qps"] / row["faiss_cpu_qps"]
    print(f"N={n:>8} d={d:>4}: gpu {row['gpu_qps']:9.0f} q/s, faiss cpu {row['faiss_cpu_qps']:7.0f}, "
          f"torch cpu {row['torch_cpu_qps']:7.0f}, x{row['gpu_x_faiss_cpu']:.1f}, "
          f"recall {row['recall_vs_float64']:.4f}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    C.set_threads(a.threads)
    quick = a.quick
    sizes = [(5000, 16), (5000, 64)] if quick else \
        [(60_000, d) for d in (16, 32, 64, 128, 256)] + [(1_281_167, 256)]
    rows = []
    for n, d in sizes:
        big = n > 100_000
        rows.append(measure(n, d, nq=100 if quick else 1000, k=100 if quick else 1000, device=a.device,
                            cpu_nq=50 if quick or big else 500, n_check=10 if big else 50))
    name = torch.cuda.get_device_name() if a.device.startswith("cuda") else "torch CPU"
    C.write_result("gpu_search", {"device_name": name, "device": a.device, "rows": rows}, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
