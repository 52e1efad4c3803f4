"""``streamlit run app.py`` with the app's heavy imports made before the server listens, so that the first page
does not pay them (torch alone takes about 2 s on 2 cores; the first page's script run then starts from warm
modules). The server answers its health check a little later instead.

    python -m app_pages.launch                              # what scripts/run.sh runs
    python -m app_pages.launch --server.port 8502           # any `streamlit run` option
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

#: Modules every page's first script run needs, imported before the server starts.
PRELOAD = ("torch", "faiss", "plotly.graph_objects", "core.detector", "core.evaluation", "app_pages.loaders")
APP = Path(__file__).resolve().parents[1] / "app.py"


def main(argv: list[str] | None = None) -> int:
    """Import :data:`PRELOAD`, then run Streamlit's command line as ``streamlit run app.py <argv>``."""
    for name in PRELOAD:
        importlib.import_module(name)
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", str(APP), *(sys.argv[1:] if argv is None else argv)]
    return cli.main(prog_name="streamlit")


if __name__ == "__main__":
    raise SystemExit(main())
