"""Memory of one inspected image at scale: the process's resident set before and after a search, for the scale
benchmark (:mod:`benchmarks.scale`)."""
from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks import _common as C


def _rss_mb() -> dict[str, float]:
    """This process's resident memory in MB: anonymous (heap) and file-backed (mapped files) pages."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def inspect_memory(idx: Any, xq: np.ndarray, k: int, n_single: int, layers: int) -> dict[str, Any]:
    """Memory of ``layers`` PQ indexes as an inspecting app holds them: each read back from its own faiss file
    (its codes resident, in shards) with its float16 vectors memory-mapped, then searched one query at a time.

    Returns
    -------
    dict
        Resident heap growth (RssAnon) and touched mapped pages (RssFile) after the searches, the serialised
        index size × ``layers``, and the files' size on disk × ``layers``.
    """
    import gc
    import tempfile
    from pathlib import Path

    import faiss

    from core.knn import index as knn_index

    with tempfile.TemporaryDirectory() as tmp:
        fi, fv = Path(tmp) / "layer.faiss", Path(tmp) / knn_index.refine_rel("layer.faiss")
        faiss.write_index(idx.coarse, str(fi))
        np.save(fv, idx.xb16)
        gc.collect()
        before = _rss_mb()
        held = []
        for _ in range(layers):
            held.append(knn_index.open_refined(faiss.read_index(str(fi)), np.load(fv, mmap_mode="r")))
            for i in range(n_single):
                knn_index.search(held[-1], xq[i:i + 1], k)
        after = _rss_mb()
        index_mb, f16_mb = fi.stat().st_size / 2 ** 20, fv.stat().st_size / 2 ** 20
        del held
    anon = after["RssAnon"] - before["RssAnon"]
    resident_gb = max(anon, layers * index_mb) / 1024
    return {"layers": layers, "rss_anon_growth_mb": anon, "rss_file_growth_mb": after["RssFile"] - before["RssFile"],
            "index_file_mb": index_mb, "f16_file_mb": f16_mb, "resident_gb": resident_gb,
            "disk_gb": layers * (index_mb + f16_mb) / 1024, "loadavg": C.loadavg()[0]}


# ----------------------------------------------------------------------------- approximate search on the run
