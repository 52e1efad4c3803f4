"""What every benchmark shares: machine facts, thread settings, timers, the run's data and the JSON result files.

Every result file is ``benchmarks/results/<name>.json`` with a ``machine`` block (cores, CPU model, load
average before and after, date, library versions), the ``settings`` used and the figures. Figures measured by
code since removed stay in the file's ``before`` block, which a new result keeps.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ROOT", "RESULTS", "DEFAULT_RUN", "machine", "loadavg", "set_threads", "timeit", "percentiles",
           "write_result", "parser", "run_exists", "require_run", "eval_images"]

ROOT = Path(__file__).resolve().parents[1]
#: Where result files go (``--out`` overrides).
RESULTS = ROOT / "benchmarks" / "results"
#: The default run every benchmark reads (``--run`` overrides).
DEFAULT_RUN = ROOT / "data" / "runs" / "fmnist"


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return [float("nan")] * 3


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine() -> dict[str, Any]:
    """Cores, CPU model, date, load average, thread counts and library versions of this machine, now."""
    import faiss
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("faiss", "torch", "sklearn", "scipy", "streamlit"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:  # e.g. no streamlit on a GPU machine that only runs the precompute
            versions[mod] = None
    return {"cores": _cores(), "cpu_count": os.cpu_count(), "cpu_model": cpu or "unknown",
            "platform": platform.platform(), "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "loadavg": loadavg(), "versions": versions, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "faiss_threads": faiss.omp_get_max_threads(), "faiss_simd": faiss.get_compile_options()}


def set_threads(n: int = 0) -> int:
    """Set torch and faiss CPU threads to ``n`` (0 = every core this process may use); return n."""
    from core._util.threads import set_process_threads

    return set_process_threads(n or _cores())


def timeit(fn: Callable[[], Any], *, repeat: int = 3, warmup: int = 1) -> float:
    """Best wall time in seconds of ``fn()`` over ``repeat`` runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def percentiles(xs: list[float], ps: tuple[int, ...] = (50, 95)) -> dict[str, float]:
    """``{"p50", "p95", "mean", "min"}`` of ``xs``: seconds in, milliseconds out (NaN when empty)."""
    a = np.asarray(xs, dtype=np.float64) * 1e3
    if not len(a):
        return {**{f"p{p}": float("nan") for p in ps}, "mean": float("nan"), "min": float("nan")}
    return {**{f"p{p}": float(np.percentile(a, p)) for p in ps}, "mean": float(a.mean()), "min": float(a.min())}


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


def write_result(name: str, result: dict[str, Any], out_dir: str | Path | None = None) -> Path:
    """Write ``result`` to ``<out_dir>/<name>.json`` (atomically) and return the path.

    The ``machine`` block is added if missing and its end load average read now; the ``before`` block of the
    file being replaced is kept.
    """
    path = Path(out_dir or RESULTS) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, **result}
    result.setdefault("machine", machine())
    result["machine"]["loadavg_end"] = loadavg()
    if "before" not in result and path.exists():
        old = json.loads(path.read_text())
        if "before" in old:
            result["before"] = old["before"]
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


def run_exists(run: str | Path) -> bool:
    """Whether ``run`` holds a run whose neighbours stage is done."""
    p = Path(run) / "manifest.json"
    return p.is_file() and json.loads(p.read_text()).get("stages", {}).get("neighbours", {}).get("status") == "done"


def require_run(run: str | Path) -> None:
    """Exit with how to build ``run`` when it is not a finished run."""
    if not run_exists(run):
        raise SystemExit(f"no finished run at {run}: build it with "
                         "`python -m precompute --config precompute/configs/fmnist.toml`")


def eval_images(run: str | Path, n: int, *, seed: int = 0) -> np.ndarray:
    """``n`` evaluation images uint8 (n, H, W, C) drawn (seeded) from every stored set of ``run``."""
    from core.runs.folder import RunDir

    r = RunDir(run)
    imgs = [r.load_npz(f"evalsets/{s}.npz")["images"] for s in r.manifest["summary"]["sets"]]
    imgs = np.concatenate([i for i in imgs if len(i)])
    return imgs[np.random.default_rng(seed).choice(len(imgs), n, replace=len(imgs) < n)]
