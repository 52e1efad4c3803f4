"""ImageNet scale: flat vs IVF vs HNSW on synthetic 1.28 M × 256 float32 features (build time, memory, query
latency at k = 1000, recall@1000 against flat), and on the real run whether approximate search changes detection
(EER accuracy with IVF / HNSW next to the exact index, for one layer).

    python -m benchmarks.scale                          # 1.28 M × 256, IVF 1024 lists; HNSW on a 50 k subsample
    python -m benchmarks.scale --n 500000 --hnsw-n 100000 --queries 50

Synthetic features are shaped like a PCA-256 layer of an ImageNet run: 1000 class centres plus per-image
noise with a decaying spectrum (i.i.d. Gaussians would be the worst case for any partitioning index). The
flat ground truth is computed for a small query sample only (``--queries``), which bounds the time. Memory
is the serialised size of the index (vectors, ids, inverted lists or graph). Flat single-query latency is also
measured on prefixes of the database (``flat_latency``): what ``core.knn.index.AUTO_IVF_MIN`` trades.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from benchmarks import _common as C
from benchmarks.inspect_memory import inspect_memory
from benchmarks.summary import publish

log = logging.getLogger(__name__)

#: ``ivfpq`` settings swept: (nlist (0 = the default), nprobe, refine factor).
IVFPQ_SWEEP = ((1024, 256, 8), (1024, 1024, 8))
#: ``pq`` shortlist factors swept, each with the codes in one shard per core and in one shard (one thread).
PQ_REFINES = (3, 4, 5, 6)


def _index_mb(index) -> float:
    """Size of the index's data in MB (its serialised form: vectors, ids, lists or graph)."""
    import faiss

    return float(faiss.serialize_index(index).nbytes) / 2 ** 20


def synthetic(n: int, d: int = 256, *, n_classes: int = 1000, centre_scale: float = 0.2,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered float32 features (n, d) and their class labels (n,), built in chunks (little scratch).

    Class centres are ``centre_scale`` × N(0, 1) per dimension. At 1.28 M rows and 0.2, half of each point's
    1000 exact neighbours share its class (classes overlap, as real features do); at 0.3 all of them do and IVF
    cells capture whole classes (recall ≈ 1 at any nprobe), at 0.15 an eighth do."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, d), dtype=np.float32) * np.float32(centre_scale)
    scale = (1.0 / np.sqrt(1.0 + np.arange(d) / 8.0)).astype(np.float32)  # decaying spectrum
    x = np.empty((n, d), np.float32)
    y = rng.integers(0, n_classes, n)
    for s in range(0, n, 1 << 17):
        e = min(n, s + (1 << 17))
        x[s:e] = centres[y[s:e]] + rng.standard_normal((e - s, d), dtype=np.float32) * scale
    return x, y


def _recall(I: np.ndarray, Iref: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a[a >= 0], b)) / len(b) for a, b in zip(I, Iref)]))


def _latency(index, xq: np.ndarray, k: int, nq: int) -> dict[str, float]:
    """Per-query latency (one query per call, ms) over ``nq`` queries, and batched throughput (q/s)."""
    from core.knn import index as knn_index

    lat = []
    for i in range(nq):
        t0 = time.perf_counter()
        knn_index.search(index, xq[i:i + 1], k)
        lat.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    knn_index.search(index, xq, k)
    batch_qps = len(xq) / (time.perf_counter() - t0)
    p = C.percentiles(lat)
    return {"single_p50_ms": p["p50"], "single_p95_ms": p["p95"], "batch_qps": batch_qps}


def synthetic_part(n: int, d: int, *, k: int, n_queries: int, n_single: int, hnsw_n: int, nlists: tuple[int, ...],
                   nprobes: tuple[int, ...], ef_search: int, seed: int,
                   flat_sizes: tuple[int, ...] = (), ivfpq: tuple[tuple[int, int, int], ...] = (),
                   pq_refines: tuple[int, ...] = (), layers: int = 12) -> dict[str, Any]:
    """Flat / IVF (each nlist, nprobe sweep) / IVF-PQ re-ranked (each ``(nlist, nprobe, refine)`` of ``ivfpq``;
    ``nlist`` 0 = the default) / PQ scan re-ranked (each factor of ``pq_refines``, sharded over the cores and on
    one thread) / HNSW (on ``hnsw_n`` rows) on synthetic features, and the inspect-time memory of ``layers``
    indexes of the kind ``auto`` picks at this size (``pq`` above ``AUTO_IVF_MIN``) with the default settings."""
    import faiss

    from core.knn import index as knn_index

    t0 = time.perf_counter()
    xb, y = synthetic(n + n_queries, d, seed=seed)
    xq, xb, yq, y = xb[:n_queries].copy(), xb[n_queries:], y[:n_queries], y[n_queries:]
    gen_s = time.perf_counter() - t0
    rows: list[dict[str, Any]] = []

    def build(kind: str, data: np.ndarray, **kw: Any):
        t = time.perf_counter()
        idx = knn_index.build(data, kind=kind, seed=seed, **kw)
        return idx, time.perf_counter() - t

    # exact: the ground truth, and flat's own figures
    flat, t_flat = build("flat", xb)
    t = time.perf_counter()
    D_gt, I_gt = knn_index.search(flat, xq, k)
    gt_s = time.perf_counter() - t
    agreement = float((y[I_gt] == yq[:, None]).mean())  # share of the exact k neighbours in the query's class
    rows.append({"kind": "flat", "n": n, "params": "-", "build_s": t_flat, "memory_mb": _index_mb(flat),
                 **_latency(flat, xq, k, n_single), "recall": 1.0})
    del flat
    flat_p50 = rows[0]["single_p50_ms"]
    built: dict[int, Any] = {}
    for nlist, nprobe, refine in ivfpq:
        if nlist not in built:
            built.clear()
            built[nlist] = build("ivfpq", xb, nlist=nlist or None)
        idx, t_pq = built[nlist]
        idx.coarse.nprobe, idx.factor = nprobe, refine
        _, I = knn_index.search(idx, xq, k)
        lat = _latency(idx, xq, k, n_single)
        probes = f"{nprobe}" if idx.nprobe(k) == nprobe else f"{nprobe}→{idx.nprobe(k)}"  # raised for the shortlist
        rows.append({"kind": "ivfpq", "n": n, "params": f"nlist={idx.coarse.nlist} nprobe={probes} refine={refine}k "
                     f"pq={idx.coarse.code_size}B", "build_s": t_pq, "memory_mb": _index_mb(idx.coarse), **lat,
                     "recall": _recall(I, I_gt), "found_k": float((I >= 0).sum(1).mean()),
                     "speedup": flat_p50 / lat["single_p50_ms"], "loadavg": C.loadavg()[0]})
    built.clear()
    memory = None
    if pq_refines:
        idx, t_pq = build("pq", xb)
        for shards in dict.fromkeys((len(idx.shards), 1)):
            sh = idx if shards == len(idx.shards) else knn_index.PQScan(idx.coarse, idx.xb16, shards=shards)
            for refine in pq_refines:
                sh.factor = refine
                _, I = knn_index.search(sh, xq, k)
                lat = _latency(sh, xq, k, n_single)
                rows.append({"kind": "pq", "n": n, "params": f"pq={idx.code_size}B refine={refine}k "
                             f"shards={shards}", "build_s": t_pq, "memory_mb": _index_mb(idx.coarse), **lat,
                             "recall": _recall(I, I_gt), "found_k": float((I >= 0).sum(1).mean()),
                             "speedup": flat_p50 / lat["single_p50_ms"], "threads": shards,
                             "loadavg": C.loadavg()[0]})
            del sh
        kind = knn_index.choose_kind(n)
        if kind == "pq":
            idx.factor = knn_index.PQ_REFINE
            memory = inspect_memory(idx, xq, k, n_single, layers)
        del idx
    flat_latency = []
    for m in sorted({min(m, n) for m in flat_sizes}):
        sub = faiss.IndexFlatL2(d)
        sub.add(xb[:m])
        flat_latency.append({"n": m, "d": d, **{key.replace("single_", ""): v
                                                  for key, v in _latency(sub, xq, k, n_single).items()}})
        del sub
    for nlist in nlists:
        ivf, t_ivf = build("ivf", xb, nlist=nlist)
        for nprobe in nprobes:
            ivf.nprobe = nprobe
            _, I = knn_index.search(ivf, xq, k)
            rows.append({"kind": "ivf", "n": n, "params": f"nlist={nlist} nprobe={nprobe}", "build_s": t_ivf,
                         "memory_mb": _index_mb(ivf), **_latency(ivf, xq, k, n_single), "recall": _recall(I, I_gt),
                         "found_k": float((I >= 0).sum(1).mean())})
        del ivf
    hnsw_n = min(hnsw_n, n)
    sub = xb[:hnsw_n]
    if hnsw_n < n:  # ground truth on the subsample
        f2 = faiss.IndexFlatL2(d)
        f2.add(sub)
        _, I_sub = knn_index.search(f2, xq, k)
        del f2
    else:
        I_sub = I_gt
    hn, t_h = build("hnsw", sub, ef_search=ef_search)
    _, I = knn_index.search(hn, xq, k)
    rows.append({"kind": "hnsw", "n": hnsw_n, "params": f"M=32 efSearch={ef_search}", "build_s": t_h,
                 "memory_mb": _index_mb(hn), **_latency(hn, xq, k, n_single), "recall": _recall(I, I_sub),
                 "found_k": float((I >= 0).sum(1).mean())})
    del hn
    return {"n": n, "d": d, "n_queries": n_queries, "n_single": n_single, "hnsw_n": hnsw_n,
            "generate_s": gen_s, "ground_truth_s": gt_s, "label_agreement": agreement, "rows": rows,
            "flat_latency": flat_latency, "pq_memory": memory}


def real_part(run: str, *, layer: str | None, fn: str | None, nprobes: tuple[int, ...], ef_search: int,
              seed: int, kinds: tuple[str, ...] = ("ivf", "ivfpq", "pq", "hnsw")) -> dict[str, Any]:
    """EER accuracy (aggregated over attacks, and errors) with IVF / HNSW next to the stored exact neighbours."""
    from core.detector import Detector
    from core.evaluation.paper_figures import detection_row
    from core.evaluation.rundata import RunData, SetNeighbours
    from core.evaluation.setting_figures import operating_layer
    from core.knn import index as knn_index
    from core.knn import processing
    from core.models.features import extract

    det = Detector.load(run, verify="none")
    mode, fn = det.defaults["mode"], fn or det.defaults["fn"]
    k = int(det.defaults["k"])
    if layer is None:  # the layer of the report's operating point when there is one
        report = det.run.load_json("report.json") if det.run.is_recorded("report.json") else None
        layer = operating_layer(report, det.layers)
    params = det.run.load_npz(f"processing/{layer}-{mode}.npz")
    xb = processing.apply(params, det.run.load_npy(f"features/{layer}.npy", mmap=True))
    exact = RunData(run, verify=False)
    feats = {}
    for s in exact.set_names:
        imgs = exact.evalset(s)["images"]
        feats[s] = processing.apply(params, extract(det.model, [layer], imgs, batch_size=500)[1][layer]) \
            if len(imgs) else np.empty((0, xb.shape[1]), np.float32)
    k_max = det.k_max

    def approx(index) -> RunData:
        """The run's data with neighbours searched in ``index`` instead of the stored exact ones."""
        def search(name: str, _layer: str, _mode: str) -> SetNeighbours:
            if not len(feats[name]):
                return SetNeighbours(np.empty((0, k_max), np.int64), np.empty((0, k_max), np.float32))
            D, I = knn_index.search(index, feats[name], k_max)
            return SetNeighbours(I, D)

        return RunData(run, verify=False, neighbours_from=search)

    def summary(data: RunData) -> dict[str, Any]:
        row = detection_row(data, layer, mode, fn, k)
        found = [float((nb.I[:, :k] >= 0).sum(1).mean()) for _, nb in data.loaded_neighbours() if len(nb.I)]
        return {"aggr": row["aggr"], "errors": row.get("errors", {}).get("eer_acc"),
                "attacks": {a: v["eer_acc"] for a, v in row["attacks"].items()},
                "found_k": float(np.mean(found)) if found else float("nan")}

    ref = summary(exact)
    rows = [{"index": "flat (stored, exact)", "build_s": float("nan"), **_flat(ref)}]
    n = len(xb)
    nlist = max(1, int(4 * math.sqrt(n)))
    t = time.perf_counter()
    ivf = knn_index.build(xb, kind="ivf", nlist=nlist, seed=seed) if "ivf" in kinds else None
    t_ivf = time.perf_counter() - t
    for nprobe in nprobes if ivf is not None else ():
        ivf.nprobe = nprobe
        t = time.perf_counter()
        s = summary(approx(ivf))
        rows.append({"index": f"ivf nlist={nlist} nprobe={nprobe}", "build_s": t_ivf,
                     "search_s": time.perf_counter() - t, **_flat(s), "delta_aggr": s["aggr"] - ref["aggr"]})
    t = time.perf_counter()
    pq = knn_index.build(xb, kind="ivfpq", seed=seed) if "ivfpq" in kinds else None
    if pq is None:
        return {"run": str(run), "layer": layer, "mode": mode, "fn": fn, "k": k, "n_train": n,
                "d": int(xb.shape[1]), "n_eval": {s: int(len(f)) for s, f in feats.items()}, "rows": rows}
    t_pq = time.perf_counter() - t
    t = time.perf_counter()
    s = summary(approx(pq))
    rows.append({"index": f"ivfpq nlist={pq.coarse.nlist} nprobe={pq.coarse.nprobe}→{pq.nprobe(k)} refine={pq.factor}k",
                 "build_s": t_pq, "search_s": time.perf_counter() - t, **_flat(s), "delta_aggr": s["aggr"] - ref["aggr"],
                 "loadavg": C.loadavg()[0]})
    del pq
    if "pq" in kinds:
        t = time.perf_counter()
        pq = knn_index.build(xb, kind="pq", seed=seed)
        t_pq = time.perf_counter() - t
        t = time.perf_counter()
        s = summary(approx(pq))
        rows.append({"index": f"pq {pq.code_size}B refine={pq.factor}k shards={len(pq.shards)}",
                     "build_s": t_pq, "search_s": time.perf_counter() - t, **_flat(s),
                     "delta_aggr": s["aggr"] - ref["aggr"], "loadavg": C.loadavg()[0]})
        del pq
    if "hnsw" not in kinds:
        return {"run": str(run), "layer": layer, "mode": mode, "fn": fn, "k": k, "n_train": n,
                "d": int(xb.shape[1]), "n_eval": {s: int(len(f)) for s, f in feats.items()}, "rows": rows}
    t = time.perf_counter()
    hn = knn_index.build(xb, kind="hnsw", ef_search=ef_search, seed=seed)
    t_h = time.perf_counter() - t
    t = time.perf_counter()
    s = summary(approx(hn))
    rows.append({"index": f"hnsw M=32 efSearch={ef_search}", "build_s": t_h, "search_s": time.perf_counter() - t,
                 **_flat(s), "delta_aggr": s["aggr"] - ref["aggr"]})
    return {"run": str(run), "layer": layer, "mode": mode, "fn": fn, "k": k, "n_train": n, "d": int(xb.shape[1]),
            "n_eval": {s: int(len(f)) for s, f in feats.items()}, "rows": rows}


def _flat(s: dict[str, Any]) -> dict[str, Any]:
    return {"aggr_eer_acc": s["aggr"], "errors_eer_acc": s["errors"], "found_k": s["found_k"],
            **{f"eer_{a}": v for a, v in s["attacks"].items()}}


def run(run: str = str(C.DEFAULT_RUN), *, n: int = 1_280_000, d: int = 256, k: int = 1000, n_queries: int = 100,
        n_single: int = 20, hnsw_n: int = 50_000, nlists: tuple[int, ...] = (1024,),
        nprobes: tuple[int, ...] = (16, 64, 256), real_nprobes: tuple[int, ...] = (16, 64, 256),
        flat_sizes: tuple[int, ...] = (60_000, 200_000, 500_000), ivfpq: tuple[tuple[int, int, int], ...] = IVFPQ_SWEEP,
        pq_refines: tuple[int, ...] = PQ_REFINES, ef_search: int = 1200, layer: str | None = None, threads: int = 0, seed: int = 0,
        out_dir: str | None = None) -> dict[str, Any]:
    """Both parts; print the tables; write ``scale.json``."""
    from core.knn import index as knn_index

    nthreads = C.set_threads(threads)
    mach = C.machine()
    t0 = time.perf_counter()
    syn = synthetic_part(n, d, k=k, n_queries=n_queries, n_single=n_single, hnsw_n=hnsw_n, nlists=nlists,
                         nprobes=nprobes, ef_search=ef_search, seed=seed, flat_sizes=flat_sizes, ivfpq=ivfpq,
                         pq_refines=pq_refines)
    syn["seconds"] = time.perf_counter() - t0
    real = None
    if C.run_exists(run):
        t0 = time.perf_counter()
        real = real_part(run, layer=layer, fn=None, nprobes=real_nprobes, ef_search=ef_search, seed=seed)
        real["seconds"] = time.perf_counter() - t0
    result = {"machine": mach, "auto": _auto_note(syn, real, knn_index.AUTO_IVF_MIN),
              "settings": {"n": n, "d": d, "k": k, "n_queries": n_queries, "hnsw_n": hnsw_n, "nlists": nlists,
                           "nprobes": nprobes, "ef_search": ef_search, "threads": nthreads,
                           "auto_ivf_min": knn_index.AUTO_IVF_MIN},
              "synthetic": syn, "real": real, "targets": _targets(syn, real),
              "note": None if real else f"no finished run at {run}: real-run part skipped"}
    publish("scale", result, out_dir)
    return result


def _targets(syn: dict[str, Any], real: dict[str, Any] | None) -> dict[str, bool]:
    """Issue targets for the large-database index (``pq``): recall@k ≥ 0.95 at ≥ 10× flat's single-query speed
    at its default shortlist (sharded over the cores, and on one thread: flat searches one query on one thread),
    ≤ 2 GB resident for 12 layers, |Δ Aggr. EER accuracy| < 0.5 point on the real run."""
    from core.knn.pq_scan import PQ_REFINE

    out = {}
    pq = [r for r in syn["rows"] if r["kind"] == "pq" and f"refine={PQ_REFINE}k " in r["params"]]
    for r in pq:
        where = "one thread" if r["threads"] == 1 else f"{r['threads']} threads"
        out[f"pq recall ≥ 0.95 at ≥ 10× flat (1 query, {where})"] = r["recall"] >= 0.95 and r["speedup"] >= 10
    if syn.get("pq_memory"):
        m = syn["pq_memory"]
        out[f"pq ≤ 2 GB for {m['layers']} layers"] = m["resident_gb"] <= 2
    d = [r["delta_aggr"] for r in (real or {}).get("rows", []) if r["index"].startswith("pq")]
    if d:
        out["pq EER shift < 0.5 point"] = abs(d[0]) < 0.005
    return out


def _auto_note(syn: dict[str, Any], real: dict[str, Any] | None, auto_min: int) -> str:
    """What the figures say about ``kind = "auto"`` (flat below ``AUTO_IVF_MIN`` rows, ``pq`` above)."""
    lat = {r["n"]: r["p50_ms"] for r in syn.get("flat_latency", [])}
    flat = next(r for r in syn["rows"] if r["kind"] == "flat")
    lat[flat["n"]] = flat["single_p50_ms"]
    ivf = [r for r in syn["rows"] if r["kind"] == "ivf"]
    parts = [f"auto = flat below {auto_min} rows, pq above. Flat single-query p50 at d={syn['d']}: "
             + ", ".join(f"{n}: {v:.0f} ms" for n, v in sorted(lat.items()))]
    if ivf:
        parts.append(f"IVF at {syn['n']}: " + ", ".join(f"{r['params']}: {r['single_p50_ms']:.0f} ms, recall "
                                                          f"{r['recall']:.2f}" for r in ivf))
    from core.knn.pq_scan import PQ_REFINE

    pq = [r for r in syn["rows"] if r["kind"] == "pq" and f"refine={PQ_REFINE}k " in r["params"]]
    if pq:
        parts.append(f"pq at {syn['n']}: " + ", ".join(f"{r['params']}: {r['single_p50_ms']:.1f} ms, recall "
                                                         f"{r['recall']:.3f}" for r in pq))
    if real:
        rows = real["rows"]
        parts.append(f"on the real run ({real['n_train']} rows), Aggr. EER accuracy exact {rows[0]['aggr_eer_acc']:.4f}, "
                     + ", ".join(f"{r['index']}: {r['aggr_eer_acc']:.4f} ({r['found_k']:.0f} of k found)"
                                 for r in rows[1:]))
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_280_000, help="synthetic database rows")
    p.add_argument("--hnsw-n", type=int, default=50_000, help="rows of the HNSW subsample")
    p.add_argument("--nlist", type=int, action="append", help="IVF lists (repeatable; default 1024)")
    p.add_argument("--queries", type=int, default=100, help="queries with a flat ground truth")
    p.add_argument("--layer", help="layer of the real-run part (default: the report's best)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if a.quick:
        run(a.run, n=50_000, hnsw_n=10_000, n_queries=20, n_single=5, k=100, nlists=(128,), nprobes=(16, 64),
            flat_sizes=(20_000,), ivfpq=((0, 64, 8),), pq_refines=(5,), threads=a.threads, out_dir=a.out,
            layer=a.layer)
    else:
        run(a.run, n=a.n, hnsw_n=a.hnsw_n, n_queries=a.queries, threads=a.threads, out_dir=a.out, layer=a.layer,
            nlists=tuple(a.nlist or (1024,)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
