"""``streamlit run app.py`` with the app's heavy imports made before the server listens, so that the first page
does not pay them (torch alone takes about 2 s on 2 cores; the first page's script run then starts from warm
modules). The server answers its health check a little later instead.

    python -m app_pages.launch                              # what scripts/run.sh runs
    python -m app_pages.launch --server.port 8502           # any `streamlit run` option
"""
from __future__ import annotations

import importlib
import logging
import sys
import threading
from pathlib import Path

#: Modules the first page's script run needs, imported before the server starts (its first table needs pandas).
PRELOAD = ("torch", "faiss", "plotly.graph_objects", "pandas", "core.detector", "core.evaluation", "core.verdict",
           "core.detectors", "app_pages.loaders", "app_pages.charts", "app_pages.current",
           "app_pages.detector_verdicts", "app_pages.images", "app_pages.operating", "app_pages.state",
           "app_pages.url_state")
#: Modules the other pages need, imported on a background thread from the start of the server (under the lock
#: the attacks import ART with): imported by the first page's run instead, they cost it about 2 s of imports and
#: of a background import holding the interpreter (py-spy on a fresh server, 2026-11-29).
BACKGROUND = ("sklearn.metrics", "pyarrow", "core.live", "core.metrics", "precompute.stages", "app_pages.downloads")
APP = Path(__file__).resolve().parents[1] / "app.py"


def _background_imports() -> None:
    from core.lazy_import import import_locked

    for name in BACKGROUND:
        try:
            import_locked(name)
        except Exception:  # the page that needs it imports it again and shows the error there
            logging.getLogger(__name__).exception("background import of %s failed", name)


def main(argv: list[str] | None = None) -> int:
    """Import :data:`PRELOAD`, start importing :data:`BACKGROUND` on a daemon thread, then run Streamlit's command
    line as ``streamlit run app.py <argv>``."""
    for name in PRELOAD:
        importlib.import_module(name)
    threading.Thread(target=_background_imports, name="knnguard-imports", daemon=True).start()
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", str(APP), *(sys.argv[1:] if argv is None else argv)]
    return cli.main(prog_name="streamlit")


if __name__ == "__main__":
    raise SystemExit(main())
