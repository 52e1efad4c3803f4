"""The app starts loading the run's detector in a background thread on the first page, so a page that does
not need it (Threshold) does not wait for it, and the pages that do get that same detector."""
from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402


def test_first_page_loads_the_detector_in_the_background(tiny_run_copy, monkeypatch):
    monkeypatch.setenv("KNNGUARD_RUNS_DIR", str(tiny_run_copy.parent))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.switch_page("app_pages/threshold.py").run()
    assert not at.exception, [e.value for e in at.exception]
    from app_ui import cache as loaders
    from app_ui.selection import stamp

    path = at.session_state["run"]
    future = loaders._loading(path, stamp(path))["future"]
    assert future is not None  # started by the page run, which never asked for the detector itself
    det = future.result(timeout=300)
    assert str(det.run.path) == path
    at.switch_page("app_pages/inspect.py").run()  # Inspect takes the detector loaded in the background
    assert not at.exception, [e.value for e in at.exception]
    assert loaders.loaded_detector(path, stamp(path)) is det
    assert loaders._imports().result(timeout=300) is None


def test_launch_imports_every_heavy_module_then_runs_streamlit_on_the_app(monkeypatch):
    """``python -m app_ui.launch`` (scripts/run.sh, tools.app_server) is ``streamlit run app.py`` with torch,
    faiss, PIL, pandas, scikit-learn's metrics and the pages' modules imported before the server starts, no import
    thread left running beside it (one held the interpreter during the first page), and what they left frozen out of
    the garbage collector (a full collection of it took 0.75 s of the first page)."""
    import gc
    import sys
    import threading

    from streamlit.web import cli

    from app_ui import launch

    seen = {}

    def fake_main(prog_name):
        seen["argv"] = list(sys.argv)
        seen["loaded"] = [m for m in launch.PRELOAD if m in sys.modules]
        seen["threads"] = [t.name for t in threading.enumerate() if "import" in t.name]
        seen["frozen"] = gc.get_freeze_count()
        return 0

    monkeypatch.setattr(cli, "main", fake_main)
    monkeypatch.setattr(sys, "argv", ["launch"])
    monkeypatch.setattr(launch, "preload_default_run", lambda: seen.setdefault("preloaded", True))
    assert launch.main(["--server.port", "8599"]) == 0
    assert seen["argv"] == ["streamlit", "run", str(launch.APP), "--server.port", "8599"]
    assert launch.APP.name == "app.py" and launch.APP.exists()
    gc.unfreeze()  # this test process collects as usual again
    assert seen["loaded"] == list(launch.PRELOAD)
    assert {"sklearn.metrics", "pyarrow", "app_ui.widgets.downloads"} <= set(launch.PRELOAD)
    assert seen["threads"] == []
    assert seen["frozen"] > 100_000  # torch alone leaves more
    assert seen["preloaded"]


def test_launch_spares_the_first_page_streamlits_repl_check(monkeypatch):
    """Streamlit's first element of a process checks for a REPL with ``inspect.stack()`` (every frame's source read,
    every loaded module's file resolved: 70-230 ms of the first page); under the launcher it is ``streamlit run``,
    so the launcher marks that warning as given and the check never runs."""
    import gc
    import inspect
    import sys

    from streamlit import delta_generator
    from streamlit.web import cli

    from app_ui import launch

    seen = {}

    def fake_main(prog_name):
        calls = []
        monkeypatch.setattr(inspect, "stack", lambda *a, **kw: calls.append(1) or [])
        delta_generator._maybe_print_use_warning()  # what Streamlit's first element does
        seen["stacks"] = len(calls)
        return 0

    monkeypatch.setattr(delta_generator, "_use_warning_has_been_displayed", False)  # a new process
    monkeypatch.setattr(cli, "main", fake_main)
    monkeypatch.setattr(sys, "argv", ["launch"])
    monkeypatch.setattr(launch, "preload_default_run", lambda: None)
    monkeypatch.setattr(gc, "freeze", lambda: None)  # this test process keeps collecting
    assert launch.main([]) == 0
    assert seen["stacks"] == 0


def test_launch_preloads_the_run_the_sidebar_opens_on_and_the_page_uses_it(tiny_run_copy, monkeypatch):
    """Before the server listens, the launcher loads the default run's detector and data (hash-checked) into the
    process's resource caches; the first page's script run uses that detector instead of loading one."""
    from app_ui import cache as loaders
    from app_ui import launch
    from app_ui.selection import stamp

    monkeypatch.setenv("KNNGUARD_RUNS_DIR", str(tiny_run_copy.parent))
    path = str(tiny_run_copy)
    assert launch.preload_default_run() == path
    future = loaders._loading(path, stamp(path))["future"]
    assert future.done() and future.exception() is None
    det = future.result()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    assert not at.exception, [e.value for e in at.exception]
    assert loaders.loaded_detector(path, stamp(path)) is det  # the page did not load another


def test_launch_preload_skips_a_damaged_run_and_the_page_still_reports_it(tiny_run_copy, monkeypatch, caplog):
    from app_ui import launch

    monkeypatch.setenv("KNNGUARD_RUNS_DIR", str(tiny_run_copy.parent))
    from app_ui.text import md

    with open(tiny_run_copy / "model.pt", "ab") as f:
        f.write(b"\0")  # size no longer matches the manifest
    with caplog.at_level("WARNING", logger="app_ui.launch"):
        assert launch.preload_default_run() is None  # logged, not raised: the server still starts
    assert "not preloaded" in caplog.text and "model.pt" in caplog.text
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    err = " ".join(e.value for e in at.error)
    assert "cannot be loaded" in err and md("model.pt") in err  # the page names the file, as it always did


def test_launch_preload_waits_a_bounded_time_then_the_load_goes_on(tiny_run_copy, monkeypatch):
    """A run slower to load than PRELOAD_WAIT_S does not hold the server's start: the load goes on in the
    background and the first page gets that same detector."""
    import threading

    from app_ui import cache as loaders
    from app_ui import launch
    from app_ui.selection import stamp

    monkeypatch.setenv("KNNGUARD_RUNS_DIR", str(tiny_run_copy.parent))
    monkeypatch.setattr(launch, "PRELOAD_WAIT_S", 0.2)
    release = threading.Event()
    real = loaders._load_detector
    monkeypatch.setattr(loaders, "_load_detector", lambda path: release.wait(60) and real(path))
    path = str(tiny_run_copy)
    assert launch.preload_default_run() is None  # returned after 0.2 s, the detector still loading
    future = loaders._loading(path, stamp(path))["future"]
    assert not future.done()
    release.set()
    det = future.result(timeout=120)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run()
    assert not at.exception, [e.value for e in at.exception]
    assert loaders.loaded_detector(path, stamp(path)) is det


def test_pages_leave_the_shared_run_files_unchanged(tiny_run, monkeypatch):
    """The run's JSON files and manifest are one object per process (not a copy per call): no page may change
    them."""
    from app_ui import cache as loaders
    from app_ui import navigation
    from app_ui import selection as state

    monkeypatch.setenv("KNNGUARD_RUNS_DIR", str(tiny_run.parent))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    for page in navigation.PAGES.values():
        at = at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
    path, stamp = str(tiny_run), state.stamp(str(tiny_run))
    assert loaders.run_json(path, stamp, "report.json") is loaders.run_json(path, stamp, "report.json")
    for name in ("report.json", "classes.json", "model.json"):
        assert loaders.run_json(path, stamp, name) == json.loads((tiny_run / name).read_text()), name
    assert state.manifest(path, stamp) == json.loads((tiny_run / "manifest.json").read_text())
