"""kNN search throughput: ours (``core.knn.index.search``) vs scikit-learn brute force vs faiss's own search, on a
run's real processed features, with the machine's float32 matmul rate as the physical limit.

    python -m benchmarks.knn_search                       # data/runs/fmnist, 1000 queries, k = 1000
    python -m benchmarks.knn_search --run data/runs/other --queries 500 --k 100

For every tapped layer (processed as the run's default mode) the same queries (evaluation images of the run)
are searched by each method; rounds are interleaved and the best time kept. GFLOP/s counts the distance work
(2·N·D per query); the matmul rate is ``xq @ xb.T`` of the same shape (numpy or torch, the better). Without a
run the database is synthetic (Gaussian, the default run's dims) and the result says so. Clustered synthetic
features (``benchmarks.scale.synthetic``, N = 60 000) at every D in ``FLOOR_DIMS`` are measured beside the run's.

The floor of a row is the time of the distance sgemm (``xq @ xb.T`` in ours' query blocks) plus the fastest
top-k selection primitive on blocks of those distances (numpy ``argpartition`` over the same threads as ours,
torch ``topk``, faiss's heap ``ResultHeap``), each measured in the same process.
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
#: Dims of the clustered synthetic rows (N = ``n_synth``), and the targets.
FLOOR_DIMS = (16, 32, 64, 128, 256)
TARGET_VS_SKLEARN = 4.0
TARGET_VS_FLOOR = 1.5


def _recall(I: np.ndarray, Iref: np.ndarray) -> float:
    """Mean share of the reference ids found (ties at the k-th distance make 1.0 unreachable by a hair)."""
    return float(np.mean([len(np.intersect1d(a, b, assume_unique=True)) / len(b) for a, b in zip(I, Iref)]))


def gflops(a: np.ndarray, b: np.ndarray, rounds: int) -> float:
    """Best float32 rate of ``a @ b.T`` in GFLOP/s, numpy or torch."""
    import torch

    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    t = min(C.timeit(lambda: a @ b.T, repeat=rounds), C.timeit(lambda: torch.mm(ta, tb.T), repeat=rounds))
    return 2.0 * len(a) * len(b) * a.shape[1] / t / 1e9


def clustered_data(dims: tuple[int, ...], n: int, n_queries: int, seed: int) -> dict[str, dict[str, Any]]:
    """Per D: clustered anisotropic synthetic features (``benchmarks.scale.synthetic``), queries drawn alike."""
    from benchmarks.scale import synthetic
    from core.knn import index as knn_index

    out = {}
    for d in dims:
        x, _ = synthetic(n + n_queries, d, n_classes=100, centre_scale=0.5, seed=seed)
        xb = x[n_queries:].copy()
        out[f"synthetic-{d}"] = {"xb": xb, "xq": x[:n_queries].copy(), "index": knn_index.build(xb, kind="flat"),
                                 "mode": "clustered"}
    return out


def floor(xb: np.ndarray, xq: np.ndarray, k: int, rounds: int) -> dict[str, float]:
    """Seconds of the distance sgemm over all queries (in ours' blocks) and of each top-k primitive on the same
    distances (timed on one block, scaled to all queries); ``floor_s`` = sgemm + the fastest primitive."""
    import faiss
    import torch

    from core.knn import flat_search

    nt = max(1, min(faiss.omp_get_max_threads(), 16))
    n = len(xb)
    bs = int(min(max(flat_search.BLOCK_ENTRIES // max(n, 1), 16 * nt), 1024))
    t_gemm = C.timeit(lambda: [xq[s:s + bs] @ xb.T for s in range(0, len(xq), bs)], repeat=rounds)
    blk = xq[:bs] @ xb.T
    cuts = np.linspace(0, len(blk), nt + 1).astype(int)
    pool = flat_search.executor(nt)
    ids = np.arange(n, dtype=np.int64)

    def argpartition():
        list(pool.map(lambda ab: np.argpartition(blk[ab[0]:ab[1]], k - 1, axis=1)[:, :k], zip(cuts[:-1], cuts[1:])))

    def heap():
        rh = faiss.ResultHeap(len(blk), k)
        rh.add_result_subset(np.arange(len(blk)), blk, ids)
        rh.finalize()

    tb = torch.from_numpy(blk)
    prims = {"argpartition": argpartition, "torch_topk": lambda: torch.topk(tb, k, dim=1, largest=False),
             "faiss_heap": heap}
    scale = len(xq) / len(blk)
    sel = {name: C.timeit(fn, repeat=rounds) * scale for name, fn in prims.items()}
    best = min(sel, key=sel.get)
    return {"sgemm_s": t_gemm, **{f"select_{m}_s": v for m, v in sel.items()}, "select_best": best,
            "floor_s": t_gemm + sel[best]}


def layers_data(run: str, n_queries: int, seed: int, n_synth: int) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Per layer ``{"xb", "xq", "index", "mode"}``: the run's processed features, queries and index, or synthetic
    ones (with a note saying so) when ``run`` is not a finished run."""
    from core.detector import Detector
    from core.knn import index as knn_index
    from core.knn import processing
    from core.models.features import extract

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
        params, index = det.processing_and_index(layer, mode)
        out[layer] = {"xb": processing.apply(params, det.run.load_npy(f"features/{layer}.npy", mmap=True)),
                      "xq": processing.apply(params, feats[layer]), "index": index, "mode": mode}
    return out, None


def run(run: str = str(C.DEFAULT_RUN), *, n_queries: int = 1000, k: int = 1000, rounds: int = 2,
        threads: int = 0, n_synth: int = 60_000, seed: int = 0, out_dir: str | None = None,
        floor_dims: tuple[int, ...] = FLOOR_DIMS) -> dict[str, Any]:
    """Measure every method on every layer, write and print ``knn_search.json``; return the result."""
    from sklearn.neighbors import NearestNeighbors

    from core.knn import flat_search
    from core.knn import index as knn_index

    nthreads = C.set_threads(threads)
    mach = C.machine()
    data, note = layers_data(run, n_queries, seed, n_synth)
    data.update(clustered_data(floor_dims, n_synth, n_queries, seed))
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
        load = C.loadavg()
        for _ in range(rounds):
            for m, fn in methods.items():
                t0 = time.perf_counter()
                res[m] = fn()
                best[m] = min(best[m], time.perf_counter() - t0)
        blk = xq[:256] @ xb.T  # the top-k selection alone on a distance block: the floor at this k
        t_sel = C.timeit(lambda: flat_search.topk_rows(blk, kk), repeat=rounds)
        qps = {m: len(xq) / t for m, t in best.items()}
        fl = floor(xb, xq, kk, rounds)
        row = {"layer": layer, "mode": dd["mode"], "n": n, "d": d, "nq": len(xq), "k": kk, "loadavg": load,
               "ours_s": best["ours"], **fl, "ours_vs_floor": best["ours"] / fl["floor_s"],
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
              "targets": {f"every row >={TARGET_VS_SKLEARN:g}x sklearn":
                          min(r["ours_vs_sklearn"] for r in rows) >= TARGET_VS_SKLEARN,
                          f"every row within {TARGET_VS_FLOOR:g}x of the floor":
                          max(r["ours_vs_floor"] for r in rows) <= TARGET_VS_FLOOR}}
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
        n_synth=10_000 if a.quick else 60_000, floor_dims=(16, 64) if a.quick else FLOOR_DIMS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
