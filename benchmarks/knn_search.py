"""kNN search throughput: ours (``core.index.search``) vs scikit-learn brute force vs plain numpy vs faiss as is,
on a run's real processed features, with the machine's float32 matmul rate as the physical limit.

    python -m benchmarks.knn_search                       # data/runs/fmnist, 1000 queries, k = 1000
    python -m benchmarks.knn_search --run data/runs/other --queries 500 --k 100

For every tapped layer (processed as the run's default mode), the same ``nq`` queries (evaluation images of the
run) are searched by each method; rounds are interleaved and the best time of each kept, so load from other
processes shifts all methods alike. GFLOP/s counts the distance work only (2·N·D per query); the matmul rate is
``xq @ xb.T`` of the same shape (numpy and torch, the better one) measured in the same process. Without a run
the database is synthetic (60 000 × D Gaussian, the dims of the default run) and the result says so.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from benchmarks import _common as C

log = logging.getLogger(__name__)

SYNTH_DIMS = {"conv1": 16, "conv2": 32, "conv3": 64, "conv4": 64, "fc1": 128}


# --------------------------------------------------------------------------------------------- the methods
def _numpy_knn(xb: np.ndarray, xq: np.ndarray, k: int, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The textbook numpy way: matmul, argpartition, sort of the top k."""
    nb = (xb * xb).sum(1)
    D = np.empty((len(xq), k), np.float32)
    I = np.empty((len(xq), k), np.int64)
    for s in range(0, len(xq), block):
        q = xq[s:s + block]
        dd = nb - 2 * (q @ xb.T) + (q * q).sum(1)[:, None]
        p = np.argpartition(dd, k - 1, axis=1)[:, :k]
        v = np.take_along_axis(dd, p, 1)
        o = np.argsort(v, axis=1)
        D[s:s + block], I[s:s + block] = np.take_along_axis(v, o, 1), np.take_along_axis(p, o, 1)
    return D, I


def _torch_knn(xb: np.ndarray, xq: np.ndarray, k: int, block: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """torch: addmm + topk by blocks of queries."""
    import torch

    tb = torch.from_numpy(xb)
    nb = (tb * tb).sum(1)
    D, I = [], []
    for s in range(0, len(xq), block):
        q = torch.from_numpy(xq[s:s + block])
        dd = torch.addmm(nb, q, tb.T, alpha=-2) + (q * q).sum(1, keepdim=True)
        v, i = torch.topk(dd, k, dim=1, largest=False, sorted=True)
        D.append(v.numpy())
        I.append(i.numpy())
    return np.concatenate(D), np.concatenate(I)


def _recall(I: np.ndarray, Iref: np.ndarray) -> float:
    """Mean share of the reference ids found (ties at the k-th distance make 1.0 unreachable by a hair)."""
    return float(np.mean([len(np.intersect1d(a, b, assume_unique=True)) / len(b) for a, b in zip(I, Iref)]))


def _matmul_gflops(xb: np.ndarray, xq: np.ndarray, rounds: int) -> dict[str, float]:
    import torch

    flops = 2.0 * len(xb) * xb.shape[1] * len(xq)
    tq, tb = torch.from_numpy(xq), torch.from_numpy(xb)
    t_np = C.timeit(lambda: xq @ xb.T, repeat=rounds)
    t_t = C.timeit(lambda: torch.mm(tq, tb.T), repeat=rounds)
    return {"numpy": flops / t_np / 1e9, "torch": flops / t_t / 1e9}


def peak_gflops(n: int = 2048, rounds: int = 3) -> dict[str, float]:
    """float32 GEMM rate of a square ``n``×``n``×``n`` product (numpy and torch): the machine's best case."""
    import torch

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    ta = torch.from_numpy(a)
    flops = 2.0 * n ** 3
    return {"numpy": flops / C.timeit(lambda: a @ a, repeat=rounds) / 1e9,
            "torch": flops / C.timeit(lambda: torch.mm(ta, ta), repeat=rounds) / 1e9}


# ------------------------------------------------------------------------------------------------ the run
def _data(run: str, n_queries: int, seed: int, n_synth: int) -> tuple[dict[str, dict[str, Any]], str | None]:
    if C.run_exists(run):
        return C.run_features(run, n_queries=n_queries, seed=seed), None
    from core import index as knn_index

    rng = np.random.default_rng(seed)
    out = {}
    for layer, d in SYNTH_DIMS.items():
        xb = rng.standard_normal((n_synth, d), dtype=np.float32)
        out[layer] = {"xb": xb, "xq": rng.standard_normal((n_queries, d), dtype=np.float32),
                      "index": knn_index.build(xb, kind="flat"), "mode": "synthetic"}
    return out, f"no finished run at {run}: synthetic Gaussian {n_synth}×D features with the default run's dims"


def run(run: str = str(C.DEFAULT_RUN), *, n_queries: int = 1000, k: int = 1000, rounds: int = 2,
        sklearn_rounds: int = 1, threads: int = 0, n_synth: int = 60_000, seed: int = 0,
        out_dir: str | None = None) -> dict[str, Any]:
    """Measure every method on every layer; print the table; write ``knn_search.json``; return the result."""
    import faiss
    from sklearn.neighbors import NearestNeighbors

    from core import index as knn_index

    nthreads = C.set_threads(threads)
    mach = C.machine()
    data, note = _data(run, n_queries, seed, n_synth)
    peak = peak_gflops(rounds=rounds)
    rows = []
    for layer, dd in data.items():
        xb, xq, index = dd["xb"], dd["xq"], dd["index"]
        n, d = xb.shape
        kk = min(k, n)
        nn = NearestNeighbors(n_neighbors=kk, algorithm="brute", n_jobs=-1).fit(xb)
        methods = {
            "ours": lambda: knn_index.search(index, xq, kk),
            "faiss": lambda: index.search(xq, kk),  # faiss as is: what core.index.search did before
            "numpy": lambda: _numpy_knn(xb, xq, kk),
            "torch": lambda: _torch_knn(xb, xq, kk),
            "sklearn": lambda: nn.kneighbors(xq, kk, return_distance=True),
        }
        best = {m: float("inf") for m in methods}
        res: dict[str, Any] = {}
        for r in range(max(rounds, sklearn_rounds)):
            for m, fn in methods.items():
                if r >= (sklearn_rounds if m == "sklearn" else rounds):
                    continue
                t0 = time.perf_counter()
                res[m] = fn()
                best[m] = min(best[m], time.perf_counter() - t0)
        mm = _matmul_gflops(xb, xq, rounds)
        # the selection alone, on a precomputed distance block: the floor no method beats at this k
        blk = xq[:256] @ xb.T
        t_sel = C.timeit(lambda: knn_index._topk_rows(blk, kk), repeat=rounds)
        flops = 2.0 * n * d
        qps = {m: len(xq) / t for m, t in best.items()}
        Isk = res["sklearn"][1]
        row = {"layer": layer, "mode": dd["mode"], "n": n, "d": d, "nq": len(xq), "k": kk,
               **{f"qps_{m}": v for m, v in qps.items()},
               "ours_vs_sklearn": qps["ours"] / qps["sklearn"], "ours_vs_numpy": qps["ours"] / qps["numpy"],
               "ours_vs_faiss": qps["ours"] / qps["faiss"], "ours_vs_torch": qps["ours"] / qps["torch"],
               "gflops_ours": flops * qps["ours"] / 1e9, "gflops_matmul": max(mm.values()),
               "gflops_matmul_numpy": mm["numpy"], "gflops_matmul_torch": mm["torch"],
               "qps_matmul_only": max(mm.values()) * 1e9 / flops, "qps_select_only": min(256, len(xq)) / t_sel,
               "recall_ours_vs_sklearn": _recall(res["ours"][1], Isk),
               "recall_faiss_vs_sklearn": _recall(res["faiss"][1], Isk),
               "max_abs_dist_diff_vs_sklearn": float(np.abs(res["ours"][0] - res["sklearn"][0] ** 2).max())}
        row["frac_of_matmul"] = row["gflops_ours"] / row["gflops_matmul"]
        rows.append(row)
        log.info("%s done", layer)
    total = {m: sum(r["nq"] for r in rows) / sum(r["nq"] / r[f"qps_{m}"] for r in rows)
             for m in ("ours", "faiss", "numpy", "torch", "sklearn")}
    result = {"benchmark": "knn_search", "machine": mach, "note": note,
              "settings": {"run": str(run), "n_queries": n_queries, "k": k, "rounds": rounds,
                           "sklearn_rounds": sklearn_rounds, "threads": nthreads,
                           "blas_threshold": int(faiss.cvar.distance_compute_blas_threshold),
                           "blocked_min_k": knn_index.BLOCKED_MIN_K},
              "peak_gflops": peak, "rows": rows,
              "all_layers": {"qps": total, "ours_vs_sklearn": total["ours"] / total["sklearn"],
                             "ours_vs_numpy": total["ours"] / total["numpy"],
                             "ours_vs_faiss": total["ours"] / total["faiss"],
                             "min_ours_vs_sklearn": min(r["ours_vs_sklearn"] for r in rows),
                             "mean_frac_of_matmul": float(np.mean([r["frac_of_matmul"] for r in rows]))},
              "targets": {"all layers >=3x sklearn": total["ours"] / total["sklearn"] >= 3,
                          "every layer >=3x sklearn": min(r["ours_vs_sklearn"] for r in rows) >= 3,
                          "every layer >=50% of matmul": min(r["frac_of_matmul"] for r in rows) >= 0.5}}
    C.publish("knn_search", result, out_dir)
    return result


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if a.quick:
        run(a.run, n_queries=min(a.queries, 200), k=min(a.k, 100), rounds=1, threads=a.threads, n_synth=10_000,
            out_dir=a.out)
    else:
        run(a.run, n_queries=a.queries, k=a.k, rounds=a.rounds, threads=a.threads, out_dir=a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
