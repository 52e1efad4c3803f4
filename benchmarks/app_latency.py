"""Server-side time of the app's two interactive paths: a threshold change (Threshold page) and one uploaded
image's inspect (Inspect page), as whole Streamlit script reruns after warm-up (p50 / p95).

    python -m benchmarks.app_latency                    # data/runs/fmnist, 30 reruns each
    python -m benchmarks.app_latency --run /tmp/apprun/fmnist --reruns 50

Targets on 2 CPU cores: a threshold change under 300 ms, an upload's inspect under 100 ms. ``AppTest`` runs the
script in this process as the server would (widgets, caches, pages, element serialisation; no network, no
browser rendering). Each upload is a new random PNG and each threshold a new value, so nothing is a cache hit
except the stored neighbours' scores, as in the app.
"""
from __future__ import annotations

import io
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _common as C
from benchmarks.summary import publish

log = logging.getLogger(__name__)

TARGETS_MS = {"threshold_change": 300, "upload_inspect": 100}


def _png(rng: np.random.Generator) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _times(at, change: Callable[[int], Any], n: int, warmup: int) -> list[float]:
    """Seconds of ``change(i).run()`` for i < warmup + n, warm-up ones left out; raises if the app raised."""
    out = []
    for i in range(warmup + n):
        t0 = time.perf_counter()
        change(i).run()
        dt = time.perf_counter() - t0
        if at.exception:
            raise RuntimeError(f"the app raised: {at.exception[0].value}")
        if i >= warmup:
            out.append(dt)
    return out


def run(run: str | Path = str(C.DEFAULT_RUN), *, reruns: int = 30, warmup: int = 3, threads: int = 0,
        out_dir: str | None = None) -> dict[str, Any]:
    """Time both paths; write and print ``app_latency.json``."""
    from streamlit.testing.v1 import AppTest

    run = Path(run).resolve()
    C.require_run(run)
    nthreads = C.set_threads(threads)
    mach = C.machine()
    os.environ["KNNGUARD_RUNS_DIR"] = str(run.parent)
    at = AppTest.from_file(str(C.ROOT / "app.py"), default_timeout=300)
    at.session_state["run"] = str(run)
    t0 = time.perf_counter()
    at.run()  # imports, model and indexes: reported apart
    cold = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    at.radio(key="inspect_source").set_value("Upload").run()
    upload = _times(at, lambda i: at.file_uploader(key="inspect_upload").set_value(
        (f"u{i}.png", _png(rng), "image/png")), reruns, warmup)
    if at.session_state["current"]["source"] != "your upload":
        raise RuntimeError("the Inspect page does not show the upload")
    at.switch_page("app_pages/threshold.py").run()
    values = rng.uniform(0.05, 0.95, warmup + reruns).round(3)
    threshold = _times(at, lambda i: at.slider(key="th_threshold").set_value(float(values[i])), reruns, warmup)
    s = at.session_state
    result = {"machine": mach, "command": "python -m benchmarks.app_latency",
              "settings": {"run": str(run), "reruns": reruns, "warmup": warmup, "threads": nthreads,
                           "defaults": f"{s['det_mode']}/{s['det_fn']}/k={s['det_k']}"},
              "cold_first_run_s": cold, "threshold_change_ms": C.percentiles(threshold),
              "upload_inspect_ms": C.percentiles(upload), "targets_ms": TARGETS_MS}
    publish("app_latency", result, out_dir)
    return result


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--reruns", type=int, default=30)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    run(a.run, reruns=5 if a.quick else a.reruns, warmup=1 if a.quick else 3, threads=a.threads, out_dir=a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
