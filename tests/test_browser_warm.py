"""app_pages.browser_warm: the script that has a tab load plotly.js while idle after its first page."""
from __future__ import annotations

import pytest

from tests.conftest import ROOT

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from app_pages import browser_warm  # noqa: E402


def test_the_installed_streamlit_has_one_plotly_module_and_the_script_imports_only_it():
    name = browser_warm.plotly_module()
    assert name and name.startswith("PlotlyChart.") and name.endswith(".js")
    script = browser_warm.warm_script(name)
    assert script.startswith("<script>") and script.endswith("</script>") and f'"{name}"' in script
    assert "requestIdleCallback" in script and "import(url)" in script
    for bad in ("../x.js", "PlotlyChart.a.js'); alert(1); ('", "Other.js"):
        with pytest.raises(ValueError):
            browser_warm.warm_script(bad)


def test_the_first_script_run_of_a_session_asks_for_it_and_later_runs_do_not(tiny_run, monkeypatch):
    monkeypatch.setenv("KNNGUARD_RUNS_DIR", str(tiny_run.parent))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]

    def scripts() -> list[str]:
        return [h.proto.body for h in at.sidebar.get("html") if "__knnguardPlotly" in h.proto.body]

    assert len(scripts()) == 1 and browser_warm.plotly_module() in scripts()[0]
    assert at.session_state[browser_warm.ASKED] is True
    at.run()
    assert not at.exception and scripts() == []
