"""App: server-side time of a widget change, on the Threshold page in detail and on every page.

    python -m benchmarks.app                 # data/runs/fmnist, 10 changes of each
    python -m benchmarks.app --changes 20

Three measurements:

* ``library``: the library calls the page makes, without Streamlit: the stored neighbours' scores of every set
  (``core.evaluation.paper_figures.RunData.scores``; a k change recomputes them, a threshold change finds them in
  ``st.cache_data``), then on ``core.evaluation.paper_figures.Separation`` its ROC, ``at`` (the operating point),
  ``densities`` and ``trusted_shares`` (``curves``), and the test-split figures with bootstrap intervals
  (``core.evaluation.setting_figures.LiveFigures.at``, ``live_at``: scores kept per setting, the bootstrap drawn once per run).
* ``apptest``: ``streamlit.testing.v1.AppTest`` on ``app.py``, Threshold page selected, timing
  ``slider.set_value(..).run()`` end to end (the whole script rerun: sidebar, page, charts serialised) for the
  threshold slider and the sidebar's k slider, each change to a value not seen before (no cache hit).
* ``pages``: the same on every page of the app: the sidebar's k slider (every page recomputes with it) and the
  page's own first widget where it has one (Inspect's image index, Attack's seed, Layers' k box, Failure cases'
  images per side, Compare's detectors), each change a value not seen before.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _common as C
from benchmarks.summary import publish

log = logging.getLogger(__name__)

TARGET_MS = 300.0
PAGE = "app_pages/threshold.py"


def _page_calls(data, layer: str, mode: str, fn: str, k: int, negs: list[str], th: float,
                cache: dict | None, live=None) -> dict[str, float]:
    """The library calls of one rerun of the page; ``cache`` holds the scores of a previous run (threshold
    change); ``live`` is the run's :class:`core.evaluation.setting_figures.LiveFigures` (None: not timed)."""
    from core.evaluation.paper_figures import Separation
    from core.evaluation.rundata import POSITIVE_SETS

    t: dict[str, float] = {}
    t0 = time.perf_counter()
    if cache is None:
        score = live.score if live is not None else data.scores
        cache = {s: score(s, layer, mode, fn, k) for s in [*POSITIVE_SETS, *negs] if s in data.set_names}
    sep = Separation([cache[s] for s in POSITIVE_SETS if s in cache], {s: cache[s] for s in negs})
    t["scores"] = time.perf_counter() - t0
    for key, call in (("roc", lambda: sep.roc), ("rates_at", lambda: sep.at(th)), ("densities", sep.densities),
                      ("curves", sep.trusted_shares),
                      ("live_at", lambda: live is not None and live.at((layer, mode, fn, k), th))):
        t0 = time.perf_counter()
        call()
        t[key] = time.perf_counter() - t0
    t["total"] = sum(t.values())
    return t


def library(run: str, *, changes: int) -> dict[str, Any]:
    """Time ``changes`` threshold changes and ``changes`` k changes of the page's library calls."""
    import json

    from core.evaluation.rundata import RunData
    from core.evaluation.setting_figures import LiveFigures, operating_layer

    data = RunData(run, verify=False)
    d = data.summary["defaults"]
    mode, fn, k0 = d["mode"], d["fn"], min(int(d["k"]), int(data.summary["k_max"]))
    report = json.loads((Path(run) / "report.json").read_text()) if (Path(run) / "report.json").exists() else None
    layer = operating_layer(report, data.layers)
    negs = [a for a in data.attack_sets if data.summary["sets"].get(a, {}).get("n", 0)]
    for s in data.set_names:  # the stored neighbours are loaded once per session (st.cache_resource)
        data.neighbours(s, layer, mode)
        data.evalset(s)
    memo: dict = {}  # the page's st.cache_data of scores, shared by the live figures

    def scores(*args):
        if args not in memo:
            memo[args] = data.scores(*args)
        return memo[args]

    t0 = time.perf_counter()
    try:
        live = LiveFigures.for_run(data, scores=scores)
    except ValueError:  # a run without a split
        live = None
    live_build = time.perf_counter() - t0
    base = _page_calls(data, layer, mode, fn, k0, negs, 0.5, None, live)
    cache = {s: data.scores(s, layer, mode, fn, k0) for s in data.set_names}
    th_runs = [_page_calls(data, layer, mode, fn, k0, negs, float(th), cache, live)
               for th in np.linspace(0.1, 0.9, changes)]
    ks = [max(1, k0 - 1 - i) for i in range(changes)]
    k_runs = [_page_calls(data, layer, mode, fn, kk, negs, 0.5, None, live) for kk in ks]

    def summ(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
        return {key: C.percentiles([r[key] for r in runs]) for key in runs[0]}

    n = {s: int(len(data.evalset(s)["predicted"])) for s in data.set_names}
    return {"layer": layer, "mode": mode, "fn": fn, "k": k0, "negatives": negs, "set_sizes": n,
            "live_build_s": live_build, "first": base, "threshold_change": summ(th_runs), "k_change": summ(k_runs)}


def apptest(run: str, *, changes: int, timeout: float = 300) -> dict[str, Any]:
    """End-to-end reruns of the Threshold page with ``AppTest`` (None when the app or the page is absent)."""
    from streamlit.testing.v1 import AppTest

    app = C.ROOT / "app.py"
    if not app.exists() or not (C.ROOT / PAGE).exists():
        return {"skipped": f"{app} or {PAGE} not found"}
    run_path = Path(run).resolve()
    old = os.environ.get("KNNGUARD_RUNS_DIR")
    os.environ["KNNGUARD_RUNS_DIR"] = str(run_path.parent)
    try:
        at = AppTest.from_file(str(app), default_timeout=timeout)
        at.session_state["run"] = str(run_path)
        t0 = time.perf_counter()
        at.run()
        first_app = time.perf_counter() - t0
        t0 = time.perf_counter()
        at.switch_page(PAGE).run()
        first_page = time.perf_counter() - t0
        if at.exception:
            return {"skipped": f"the page raised: {[e.value for e in at.exception]}"}
        k0 = int(at.slider(key="det_k").value)
        th_times, k_times = [], []
        for th in np.linspace(0.11, 0.89, changes):
            t0 = time.perf_counter()
            at.slider(key="th_threshold").set_value(round(float(th), 3)).run()
            th_times.append(time.perf_counter() - t0)
        for i in range(changes):
            t0 = time.perf_counter()
            at.slider(key="det_k").set_value(max(1, k0 - 2 - i)).run()
            k_times.append(time.perf_counter() - t0)
        errors = [e.value for e in at.exception]
        return {"first_run_s": first_app, "first_page_s": first_page, "threshold_change": C.percentiles(th_times),
                "k_change": C.percentiles(k_times), "errors": errors}
    finally:
        if old is None:
            os.environ.pop("KNNGUARD_RUNS_DIR", None)
        else:
            os.environ["KNNGUARD_RUNS_DIR"] = old


#: page key (app_ui.selection.PAGES) -> its own widget: (AppTest getter, key, i -> value of the i-th change).
PAGE_WIDGETS = {
    "inspect": ("number_input", "inspect_index", lambda i, at: 1 + i),
    "attack": ("number_input", "atk_seed", lambda i, at: 1 + i),
    "threshold": ("slider", "th_threshold", lambda i, at: round(0.11 + 0.07 * i, 3)),
    "layers": ("number_input", "layers_k", lambda i, at: max(1, int(at.slider(key="det_k").value) - 3 - i)),
    "failures": ("slider", "fail_n", lambda i, at: 2 + i % 15),
    "compare": ("multiselect", "compare_detectors",
                lambda i, at: at.multiselect(key="compare_detectors").options[: 1 + i % 3]),
}


def every_page(run: str, *, changes: int, timeout: float = 300) -> dict[str, Any]:
    """Per page: ``changes`` sidebar k changes and ``changes`` changes of its own widget, timed with AppTest."""
    from streamlit.testing.v1 import AppTest

    from app_ui.navigation import PAGES

    run_path = Path(run).resolve()
    old = os.environ.get("KNNGUARD_RUNS_DIR")
    os.environ["KNNGUARD_RUNS_DIR"] = str(run_path.parent)
    out: dict[str, Any] = {}
    try:
        at = AppTest.from_file(str(C.ROOT / "app.py"), default_timeout=timeout)
        at.session_state["run"] = str(run_path)
        at.run()
        k_next = int(at.slider(key="det_k").value) - 1
        for name, page in PAGES.items():
            at.switch_page(page).run()
            if at.exception:
                out[name] = {"error": str(at.exception[0].value)}
                continue
            k_times, own = [], []
            for _ in range(changes):
                k_next = max(1, k_next - 1)
                t0 = time.perf_counter()
                at.slider(key="det_k").set_value(k_next).run()
                k_times.append(time.perf_counter() - t0)
            kind, key, value = PAGE_WIDGETS.get(name, (None, None, None))
            for i in range(changes if kind else 0):
                widget = getattr(at, kind)(key=key)
                v = value(i, at)
                t0 = time.perf_counter()
                widget.set_value(v).run()
                own.append(time.perf_counter() - t0)
            out[name] = {"k_change": C.percentiles(k_times), "widget": key,
                         "widget_change": C.percentiles(own) if own else None,
                         "errors": [str(e.value) for e in at.exception]}
        return out
    finally:
        if old is None:
            os.environ.pop("KNNGUARD_RUNS_DIR", None)
        else:
            os.environ["KNNGUARD_RUNS_DIR"] = old


def run(run: str = str(C.DEFAULT_RUN), *, changes: int = 10, with_apptest: bool = True, threads: int = 0,
        out_dir: str | None = None) -> dict[str, Any]:
    """Both measurements; print the table; write ``app.json``."""
    nthreads = C.set_threads(threads)
    mach = C.machine()
    if not C.run_exists(run):
        raise SystemExit(f"no finished run at {run}: build it with "
                         "`python -m precompute --config precompute/configs/fmnist.toml`")
    lib = library(run, changes=changes)
    e2e = apptest(run, changes=changes) if with_apptest else {"skipped": "not asked"}
    pages = every_page(run, changes=changes) if with_apptest else {}
    worst = max(lib["k_change"]["total"]["p50"], lib["threshold_change"]["total"]["p50"],
                *(e2e[c]["p50"] for c in ("threshold_change", "k_change") if c in e2e))
    page_p50 = [v[c]["p50"] for v in pages.values() for c in ("k_change", "widget_change") if v.get(c)]
    targets = {"p50<300ms": worst < TARGET_MS}
    if pages:
        targets["every page p50<300ms"] = bool(page_p50) and max(page_p50) < TARGET_MS and \
            not any(v.get("error") or v.get("errors") for v in pages.values())
    result = {"benchmark": "app", "machine": mach,
              "settings": {"run": str(run), "changes": changes, "page": PAGE, "threads": nthreads},
              "library": lib, "apptest": e2e, "pages": pages, "targets": targets}
    publish("app", result, out_dir)
    return result


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--changes", type=int, default=10)
    p.add_argument("--no-apptest", action="store_true", help="library timings only")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    run(a.run, changes=3 if a.quick else a.changes, with_apptest=not a.no_apptest, threads=a.threads,
        out_dir=a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
