"""The app starts loading the run's detector in a background thread on the first page, so a page that does
not need it (Threshold) does not wait for it, and the pages that do get that same detector."""
from __future__ import annotations

import pytest

from tests.conftest import ROOT

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402


def test_first_page_loads_the_detector_in_the_background(tiny_run_copy, monkeypatch):
    monkeypatch.setenv("KNNGUARD_RUNS_DIR", str(tiny_run_copy.parent))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.switch_page("app_pages/threshold.py").run()
    assert not at.exception, [e.value for e in at.exception]
    from app_pages import loaders
    from app_pages.state import stamp

    path = at.session_state["run"]
    future = loaders._loading(path, stamp(path))["future"]
    assert future is not None  # started by the page run, which never asked for the detector itself
    det = future.result(timeout=300)
    assert str(det.run.path) == path
    at.switch_page("app_pages/inspect_image.py").run()  # Inspect takes the detector loaded in the background
    assert not at.exception, [e.value for e in at.exception]
    assert loaders._detector(path, stamp(path)) is det
    assert loaders._imports().result(timeout=300) is None


def test_launch_imports_every_heavy_module_then_runs_streamlit_on_the_app(monkeypatch):
    """``python -m app_pages.launch`` (scripts/run.sh, tools.app_server) is ``streamlit run app.py`` with torch,
    faiss, PIL, pandas, scikit-learn's metrics and the pages' modules imported before the server starts, no import
    thread left running beside it (one held the interpreter during the first page), and what they left frozen out of
    the garbage collector (a full collection of it took 0.75 s of the first page)."""
    import gc
    import sys
    import threading

    from streamlit.web import cli

    from app_pages import launch

    seen = {}

    def fake_main(prog_name):
        seen["argv"] = list(sys.argv)
        seen["loaded"] = [m for m in launch.PRELOAD if m in sys.modules]
        seen["threads"] = [t.name for t in threading.enumerate() if "import" in t.name]
        seen["frozen"] = gc.get_freeze_count()
        return 0

    monkeypatch.setattr(cli, "main", fake_main)
    monkeypatch.setattr(sys, "argv", ["launch"])
    assert launch.main(["--server.port", "8599"]) == 0
    assert seen["argv"] == ["streamlit", "run", str(launch.APP), "--server.port", "8599"]
    assert launch.APP.name == "app.py" and launch.APP.exists()
    gc.unfreeze()  # this test process collects as usual again
    assert seen["loaded"] == list(launch.PRELOAD)
    assert {"sklearn.metrics", "pyarrow", "app_pages.downloads"} <= set(launch.PRELOAD)
    assert seen["threads"] == []
    assert seen["frozen"] > 100_000  # torch alone leaves more


def test_launch_resolves_the_loaded_modules_files_before_the_server_starts(monkeypatch):
    """Streamlit's first element checks for a REPL with ``inspect.stack()``; the launcher pays what that costs (a
    ``stat`` of every loaded module's file) before the server listens, so the first page's check is a lookup."""
    import inspect
    import sys

    from streamlit.web import cli

    from app_pages import launch

    seen = {}

    def fake_main(prog_name):
        calls = []
        real = inspect.getabsfile
        monkeypatch.setattr(inspect, "getabsfile", lambda *a, **kw: calls.append(1) or real(*a, **kw))
        inspect.stack()  # what Streamlit's first element does
        seen["resolved"] = len(calls)
        return 0

    monkeypatch.setattr(cli, "main", fake_main)
    monkeypatch.setattr(sys, "argv", ["launch"])
    assert launch.main([]) == 0
    assert seen["resolved"] < 50  # not one per loaded module (over a thousand with torch and scikit-learn)
