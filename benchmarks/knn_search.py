"""kNN search throughput: ours (``core.index.search``) vs scikit-learn brute force vs faiss's own search, on a
run's real processed features, with the machine's float32 matmul rate as the physical limit.

    python -m benchmarks.knn_search                       # data/runs/fmnist, 1000 queries, k = 1000
    python -m benchmarks.knn_search --run data/runs/other --queries 500 --k 100

For every tapped layer (processed as the run's default mode) the same queries (evaluation images of the run)
are searched by each method; rounds are interleaved and the best time kept. GFLOP/s counts the distance work
(2·N·D per query); the matmul rate is ``xq @ xb.T`` of the same shape (numpy or torch, the better). Without a
run the database is synthetic (Gaussian, the default run's dims) and the result says so.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from benchmarks import _common as C
from benchmarks.summary import publish

log = logging.getLogger(__name__)

SYNTH_DIMS = {"conv1": 16, "conv2": 32, "conv3": 64, "conv4": 64, "fc1": 128}
METHODS = ("ours", "faiss", "sklearn")


def _recall(I: np.ndarray, Iref: np.ndarray) -> float:
    """Mean share of the reference ids found (ties at the k-th distance make 1.0 unreachable by a hair)."""
    return float(np.mean([len(np.intersect1d(a, b, assume_unique=True)) / len(b) for a, b in zip(I, Iref)]))


def gflops(a: np.ndarray, b: np.ndarray, rounds: int) -> float:
    """Best float32 rate of ``a @ b.T`` in GFLOP/s, numpy or torch."""
    import torch

    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    t = min(C.timeit(lambda: a @ b.T, repeat=rounds), C.timeit(lambda: torch.mm(ta, tb.T), repeat=rounds))
    return 2.0 * len(a) * len(b) * a.shape[1] / t / 1e9


def layers_data(run: str, n_queries: int, seed: int, n_synth: int) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Per layer ``{"xb", "xq", "index", "mode"}``: the run's processed features, queries and index, or synthetic
    ones (with a note saying so) when ``run`` is not a finished run."""
    from core import index as knn_index
    from core import processing
    from core.detector import Detector
    from core.features import extract

    if not C.run_exists(run):
        rng = np.random.default_rng(seed)
        out = {}
        for layer, d in SYNTH_DIMS.items():
            xb = rng.standard_normal((n_synth, d), dtype=np.float32)
            out[layer] = {"xb": xb, "xq": rng.standard_normal((n_queries, d), dtype=np.float32),
                          "index": knn_index.build(xb, kind="flat"), "mode": "synthetic"}
        return out, f"no finished run at {run}: synthetic Gaussian {n_synth}×D features with the default run's dims"
    det = Detector.load(run, verify="none", modes=[])
    mode = det.defaults["mode"]
    _, feats = extract(det.model, det.layers, C.eval_images(run, n_queries, seed=seed), batch_size=500)
    out = {}
    for layer in det.layers:
        params, index = det._get(layer, mode)
        out[layer] = {"xb": processing.apply(params, det.run.load_npy(f"features/{layer}.npy", mmap=True)),
                      "xq": processing.apply(params, feats[layer]), "index": index, "mode": mode}
    return out, None


def run(run: str = str(C.DEFAULT_RUN), *, n_queries: int = 1000, k: int = 1000, rounds: int = 2,
        threads: int = 0, n_synth: int = 60_000, seed: int = 0, out_dir: str | None = None) -> dict[str, Any]:
    """Measure every method on every layer, write and print ``knn_search.json``; return the result."""
    from sklearn.neighbors import NearestNeighbors

    from core import index as knn_index

    nthreads = C.set_threads(threads)
    mach = C.machine()
    data, note = layers_data(run, n_queries, seed, n_synth)
    sq = np.random.default_rng(0).standard_normal((2048, 2048), dtype=np.float32)
    peak = gflops(sq, sq, rounds)
    rows = []
    for layer, dd in data.items():
        xb, xq, index = dd["xb"], dd["xq"], dd["index"]
        (n, d), kk = xb.shape, min(k, len(xb))
        nn = NearestNeighbors(n_neighbors=kk, algorithm="brute", n_jobs=-1).fit(xb)
        methods = {"ours": lambda: knn_index.search(index, xq, kk), "faiss": lambda: index.search(xq, kk),
                   "sklearn": lambda: nn.kneighbors(xq, kk, return_distance=True)}
        best, res = dict.fromkeys(methods, float("inf")), {}
        for _ in range(rounds):
            for m, fn in methods.items():
                t0 = time.perf_counter()
                res[m] = fn()
                best[m] = min(best[m], time.perf_counter() - t0)
        blk = xq[:256] @ xb.T  # the top-k selection alone on a distance block: the floor at this k
        t_sel = C.timeit(lambda: knn_index._topk_rows(blk, kk), repeat=rounds)
        qps = {m: len(xq) / t for m, t in best.items()}
        row = {"layer": layer, "mode": dd["mode"], "n": n, "d": d, "nq": len(xq), "k": kk,
               **{f"qps_{m}": v for m, v in qps.items()},
               "ours_vs_sklearn": qps["ours"] / qps["sklearn"], "ours_vs_faiss": qps["ours"] / qps["faiss"],
               "gflops_ours": 2.0 * n * d * qps["ours"] / 1e9, "gflops_matmul": gflops(xq, xb, rounds),
               "qps_select_only": len(blk) / t_sel,
               "recall_ours_vs_sklearn": _recall(res["ours"][1], res["sklearn"][1]),
               "recall_faiss_vs_sklearn": _recall(res["faiss"][1], res["sklearn"][1]),
               "max_abs_dist_diff_vs_sklearn": float(np.abs(res["ours"][0] - res["sklearn"][0] ** 2).max())}
        row["frac_of_matmul"] = row["gflops_ours"] / row["gflops_matmul"]
        rows.append(row)
        log.info("%s done", layer)
    total = {m: sum(r["nq"] for r in rows) / sum(r["nq"] / r[f"qps_{m}"] for r in rows) for m in METHODS}
    result = {"machine": mach, "note": note,
              "settings": {"run": str(run), "n_queries": n_queries, "k": k, "rounds": rounds, "threads": nthreads,
                           "blocked_min_k": knn_index.BLOCKED_MIN_K},
              "peak_gflops": {"sgemm_2048": peak}, "rows": rows,
              "all_layers": {"qps": total, "ours_vs_sklearn": total["ours"] / total["sklearn"],
                             "ours_vs_faiss": total["ours"] / total["faiss"],
                             "min_ours_vs_sklearn": min(r["ours_vs_sklearn"] for r in rows),
                             "mean_frac_of_matmul": float(np.mean([r["frac_of_matmul"] for r in rows]))},
              "targets": {"all layers >=3x sklearn": total["ours"] / total["sklearn"] >= 3,
                          "every layer >=3x sklearn": min(r["ours_vs_sklearn"] for r in rows) >= 3,
                          "every layer >=50% of matmul": min(r["frac_of_matmul"] for r in rows) >= 0.5}}
    publish("knn_search", result, out_dir)
    return result


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if a.quick:
        a.queries, a.k, a.rounds = min(a.queries, 200), min(a.k, 100), 1
    run(a.run, n_queries=a.queries, k=a.k, rounds=a.rounds, threads=a.threads, out_dir=a.out,
        n_synth=10_000 if a.quick else 60_000)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
