"""``streamlit run app.py`` with the app's heavy imports made before the server listens, so that the first page
does not pay them (torch alone takes about 2 s on 2 cores; the first page's script run then starts from warm
modules). The server answers its health check a little later instead.

    python -m app_ui.launch                              # what scripts/run.sh runs
    python -m app_ui.launch --server.port 8502           # any `streamlit run` option
"""
from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path

#: Modules the pages need, all imported before the server starts. Scikit-learn's metrics (1.3 s here) were
#: imported on a background thread from the server's start until 2026-11-29: that thread held the interpreter
#: during the first page (py-spy: its script run 3.6 s instead of 0.75 s, the frontend's files served in
#: 1.5 s instead of 0.6 s); the server now answers 1.3 s later and the first page runs alone.
PRELOAD = ("torch", "faiss", "PIL.Image", "pandas", "sklearn.metrics", "pyarrow", "core.detector",
           "core.evaluation.paper_figures", "core.evaluation.verdict", "core.peers", "core.evaluation.setting_figures", "core.evaluation.metrics", "precompute.runner",
           "app_ui.cache", "app_ui.charts.bars", "app_ui.current_image", "app_ui.widgets.detector_verdicts",
           "app_ui.widgets.downloads", "app_ui.widgets.images", "app_ui.operating_point", "app_ui.selection", "app_ui.url_state")
APP = Path(__file__).resolve().parents[1] / "app.py"
#: Seconds the server's start waits for the default run's detector (a large run, e.g. ImageNet's, goes on loading
#: in the background instead: the user sees the app, and its first page waits for that same load).
PRELOAD_WAIT_S = 20.0
logger = logging.getLogger(__name__)


def preload_default_run() -> str | None:
    """Load the run the sidebar opens on (the first of :func:`app_ui.selection.list_runs`, when finished) into the
    process's caches: its detector (model, faiss indexes, every file hash-checked), evaluation data and
    distribution references, waiting at most :data:`PRELOAD_WAIT_S` for the detector. Returns its path, or None
    when there is none, it fails to load (the page then loads it and shows the error as it always does) or it is
    still loading."""
    from app_ui import cache, selection
    from core.runs.folder import RunDir

    runs = selection.list_runs(selection.runs_root())
    if not runs:
        return None
    path = str(runs[0])
    try:
        if selection.unfinished_stages(RunDir(path).manifest):
            return None
        if not cache.preload(path, timeout=PRELOAD_WAIT_S):
            logger.info("still loading %s after %.0f s: the server starts, the load goes on", path, PRELOAD_WAIT_S)
            return None
    except Exception as e:  # a damaged run: the page reports it to the user with the file and the fix
        logger.warning("not preloaded: %s (%s: %s)", path, type(e).__name__, e)
        return None
    return path


def main(argv: list[str] | None = None) -> int:
    """Import :data:`PRELOAD`, then run Streamlit's command line as ``streamlit run app.py <argv>``."""
    from core._util.lazy_import import import_locked

    for name in PRELOAD:
        import_locked(name)  # under the lock the attacks import ART with (ART imports scikit-learn too)
    from PIL import Image
    from streamlit import delta_generator
    from streamlit.web import cli

    # Streamlit's first element of a process asks whether it runs in a REPL (to warn about `python app.py`) with
    # inspect.stack(), which resolves the file of every loaded module and reads the source of every frame of the
    # script thread: 0.23 s of the first page (cProfile), still 70 ms with those files resolved here first (py-spy,
    # 2026-11-29). This process is `streamlit run`: the warning is marked as given.
    delta_generator._use_warning_has_been_displayed = True

    Image.preinit()  # PIL's common format plugins: the page icon and the first image of the first page open with them

    # The default run's detector and data, loaded before the server answers: the first page's script run then only
    # uses them (it waited 0.3-1 s for them, on the same 2 cores as the browser drawing it).
    preload_default_run()
    # The imports leave some 330,000 objects that live as long as the server; a full collection walks them all
    # (0.27 s here), and the first page's allocations trigger one: py-spy caught 0.75 s of it inside the parse of
    # report.json (2026-11-29). Frozen, collections skip them for the life of the process.
    gc.collect()
    gc.freeze()

    sys.argv = ["streamlit", "run", str(APP), *(sys.argv[1:] if argv is None else argv)]
    return cli.main(prog_name="streamlit")


if __name__ == "__main__":
    raise SystemExit(main())
