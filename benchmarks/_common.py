"""What every benchmark shares: machine facts, thread settings, timers, tables and the JSON result files.

Every result file is ``benchmarks/results/<name>.json`` with a ``machine`` block (cores, CPU model, load
average before and after, date, library versions), the ``settings`` used and the figures; figures that are
compared are always measured in the same process, so a loaded machine shifts them together.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ROOT", "RESULTS", "DEFAULT_RUN", "machine", "set_threads", "timeit", "percentiles",
           "table", "write_result", "publish", "parser", "loadavg", "Timer"]

log = logging.getLogger("benchmarks")

ROOT = Path(__file__).resolve().parents[1]
#: Where result files go (``--out`` overrides).
RESULTS = ROOT / "benchmarks" / "results"
#: The default run every benchmark reads (``--run`` overrides).
DEFAULT_RUN = ROOT / "data" / "runs" / "fmnist"


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages (``os.getloadavg``)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return [float("nan")] * 3


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("faiss", "torch", "sklearn", "scipy", "streamlit"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional library is just not listed
            pass
    return out


def machine() -> dict[str, Any]:
    """Cores, CPU model, date, load average and library versions of this machine, now."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cores": cores, "cpu_count": os.cpu_count(), "cpu_model": _cpu_model(), "platform": platform.platform(),
            "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "loadavg": loadavg(),
            "versions": _versions()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001
        pass
    try:
        import faiss

        info["faiss_threads"] = faiss.omp_get_max_threads()
        info["faiss_simd"] = faiss.get_compile_options()
    except Exception:  # noqa: BLE001
        pass
    return info


def set_threads(n: int = 0) -> int:
    """Set torch and faiss CPU threads to ``n`` (0 = every core this process may use); returns n."""
    import faiss
    import torch

    n = n or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()) or 1
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    return n


class Timer:
    """``with Timer() as t: ...; t.s`` -> seconds (perf_counter)."""

    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.s = time.perf_counter() - self.t0


def timeit(fn: Callable[[], Any], *, repeat: int = 3, min_time: float = 0.0, warmup: int = 1) -> float:
    """Best wall time in seconds of ``fn()`` over ``repeat`` runs (after ``warmup`` untimed runs).

    The best, not the mean: on a shared machine, other processes only ever add time.
    """
    for _ in range(warmup):
        fn()
    best = float("inf")
    t_end = time.perf_counter() + min_time
    i = 0
    while i < repeat or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        i += 1
    return best


def percentiles(xs: list[float], ps: tuple[int, ...] = (50, 95)) -> dict[str, float]:
    """``{"p50": .., "p95": .., "mean": ..}`` of ``xs`` (seconds in, milliseconds out)."""
    a = np.asarray(xs, dtype=np.float64) * 1e3
    out = {f"p{p}": float(np.percentile(a, p)) for p in ps}
    out["mean"] = float(a.mean()) if len(a) else float("nan")
    out["min"] = float(a.min()) if len(a) else float("nan")
    return out


def table(rows: list[dict[str, Any]], cols: list[str] | None = None, *, floatfmt: str = ".3g") -> str:
    """A plain-text (Markdown) table of ``rows`` (dicts), columns ``cols`` (default: keys of the first row)."""
    if not rows:
        return "(no rows)"
    cols = cols or list(rows[0])

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if v != v:
                return "nan"
            return format(v, ".0f") if abs(v) >= 1000 else format(v, floatfmt)
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.rjust(w) for v, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float) and (o != o or o in (float("inf"), float("-inf"))):
        return None  # strict JSON
    return o


def publish(name: str, result: dict[str, Any], out_dir: str | Path | None = None) -> Path:
    """Write ``result`` (:func:`write_result`) and print it as its README section (``summary.section``, the one
    renderer of each result) with the file's path."""
    from benchmarks.summary import section

    path = write_result(name, result, out_dir)
    print(section(name, result))
    print(f"-> {path}")
    return path


def write_result(name: str, result: dict[str, Any], out_dir: str | Path | None = None) -> Path:
    """Write ``result`` (with the machine block added, load average re-read now) to ``<out_dir>/<name>.json``."""
    out = Path(out_dir) if out_dir else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    result = dict(result)
    result.setdefault("benchmark", name)
    result.setdefault("machine", machine())
    result["machine"]["loadavg_end"] = loadavg()
    path = out / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_jsonable(result), indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def parser(description: str) -> argparse.ArgumentParser:
    """Arguments every benchmark takes: ``--run``, ``--out``, ``--quick``, ``--threads``."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=str(DEFAULT_RUN), help="run folder (default data/runs/fmnist)")
    p.add_argument("--out", default=str(RESULTS), help="folder for the JSON result (default benchmarks/results)")
    p.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run, figures not comparable)")
    p.add_argument("--threads", type=int, default=0, help="torch + faiss threads (0 = every core)")
    return p


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def run_exists(run: str | Path) -> bool:
    """Whether ``run`` holds a finished precompute run."""
    p = Path(run) / "manifest.json"
    if not p.is_file():
        return False
    m = json.loads(p.read_text())
    return m.get("stages", {}).get("neighbours", {}).get("status") == "done"


def eval_images(run: str | Path, n: int, *, seed: int = 0) -> np.ndarray:
    """``n`` evaluation images uint8 (n, H, W, C) drawn at random (seeded) from every stored set of ``run``."""
    from core.artefacts import RunDir

    r = RunDir(run)
    imgs = [r.load_npz(f"evalsets/{s}.npz")["images"] for s in r.manifest["summary"]["sets"]]
    imgs = np.concatenate([i for i in imgs if len(i)])
    idx = np.random.default_rng(seed).choice(len(imgs), n, replace=len(imgs) < n)
    return imgs[idx]


def run_features(run: str | Path, *, mode: str | None = None, n_queries: int = 1000, seed: int = 0,
                 layers: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per layer: processed training features ``xb``, processed queries ``xq`` (evaluation images) and the
    run's faiss ``index``, for processing ``mode`` (default: the run's)."""
    from core import processing
    from core.detector import Detector
    from core.features import extract

    det = Detector.load(run, verify="none", modes=[])
    mode = mode or det.defaults["mode"]
    layers = layers or det.layers
    images = eval_images(run, n_queries, seed=seed)
    _, feats = extract(det.model, layers, images, batch_size=500)
    out = {}
    for layer in layers:
        params, index = det._get(layer, mode)
        xb = processing.apply(params, det.run.load_npy(f"features/{layer}.npy", mmap=True))
        out[layer] = {"xb": xb, "xq": processing.apply(params, feats[layer]), "index": index, "mode": mode}
    return out
