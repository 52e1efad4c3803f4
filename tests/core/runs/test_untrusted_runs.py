"""A run folder is untrusted input: it never supplies code, its recorded config is checked like a config file, its
text is escaped on every page; and the server's defaults (loopback, no tracebacks, upload cap, nothing fetched).

    .venv/bin/python -m pytest tests/core/runs/test_untrusted_runs.py -q

A manifest is rewritten here as an attacker can: its self-check looks at its shape only, and a changed file is
re-recorded with its new hash (``RunDir.record``).
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib

from core.detector import Detector
from core.errors import ArtefactError
from core.models.entrypoints import NeedsEntryPoint
from core.models.zoo import FashionCNN
from core.runs.folder import RunDir
from tests.conftest import ROOT

#: The tiny run's model recorded as a custom model: the same network and normalisation (core.models.zoo "fmnist-cnn").
CUSTOM = {"name": "custom", "input_size": [1, 28, 28], "mean": [0.2860], "std": [0.3530]}
ENV = "KNNGUARD_ALLOWED_ENTRIES"


def _set_config(run: Path, **model) -> None:
    """Rewrite the run's recorded ``[model]`` table (the manifest itself carries no hash)."""
    mp = run / "manifest.json"
    m = json.loads(mp.read_text())
    m["config"]["model"].update(model)
    mp.write_text(json.dumps(m))


def _payload(run: Path) -> Path:
    """A ``payload.py`` inside the run that leaves a marker when imported; returns the marker's path."""
    (run / "payload.py").write_text("import pathlib\npathlib.Path(__file__).with_name('RAN').write_text('ran')\n"
                                    "from core.models.zoo import FashionCNN as build\n")
    return run / "RAN"


_CHILD = """import sys
from core.detector import Detector
from core.models.entrypoints import NeedsEntryPoint
try:
    Detector.load(sys.argv[1])
except NeedsEntryPoint as e:
    print("REFUSED:", e)
    sys.exit(3)
print("LOADED")
"""


def _load_in_child(run: Path, **env: str) -> subprocess.CompletedProcess:
    """``Detector.load(run)`` in a child process (a recorded ``os:abort`` then kills only the child)."""
    full = {**os.environ, **env}
    full["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-c", _CHILD, str(run)], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=300)


# ------------------------------------------------------------------------------------- finding 1: no code
def test_recorded_entry_point_is_never_called(tiny_run_copy):
    _set_config(tiny_run_copy, entry="os:abort", **CUSTOM)
    for env in ({}, {ENV: "core.models.zoo:FashionCNN"}):  # an allow-list without it changes nothing
        r = _load_in_child(tiny_run_copy, **env)
        assert r.returncode == 3, (r.returncode, r.stdout, r.stderr[-2000:])
        assert "REFUSED" in r.stdout and "'os:abort'" in r.stdout and ENV in r.stdout


def test_payload_inside_the_run_is_never_imported(tiny_run_copy):
    marker = _payload(tiny_run_copy)
    _set_config(tiny_run_copy, entry=f"{tiny_run_copy.name}.payload:build", **CUSTOM)
    path = {"PYTHONPATH": str(tiny_run_copy.parent)}  # the runs' parent on sys.path, as the repo root is
    r = _load_in_child(tiny_run_copy, **path)
    assert r.returncode == 3 and "REFUSED" in r.stdout, (r.returncode, r.stdout, r.stderr[-2000:])
    assert not marker.exists()
    # The threat was real: that module name does import the payload from the run folder.
    subprocess.run([sys.executable, "-c", f"import {tiny_run_copy.name}.payload"], cwd=ROOT, check=True,
                   env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tiny_run_copy.parent)])},
                   timeout=300)
    assert marker.exists()


def test_custom_run_loads_with_the_callers_entry_point(tiny_run, tiny_run_copy):
    _set_config(tiny_run_copy, entry="nowhere.payload:build", **CUSTOM)
    with pytest.raises(NeedsEntryPoint, match=ENV):
        Detector.load(tiny_run_copy)
    images = RunDir(tiny_run).load_npz("evalsets/authentic.npz")["images"][:16]
    want = Detector.load(tiny_run).score(images)
    for entry in (FashionCNN, "core.models.zoo:FashionCNN"):
        got = Detector.load(tiny_run_copy, entry=entry).score(images)
        assert np.array_equal(got.predicted, want.predicted)
        for layer in want.scores:
            np.testing.assert_allclose(got.scores[layer], want.scores[layer], rtol=1e-5)


def test_operator_allow_list_opens_exactly_the_listed_entry(tiny_run_copy, monkeypatch):
    _set_config(tiny_run_copy, entry="core.models.zoo:FashionCNN", **CUSTOM)
    monkeypatch.setenv(ENV, "core.models.zoo:ConvBlock, core.models.zoo:FashionCNN")
    assert Detector.load(tiny_run_copy).layers == ["conv2", "fc1"]
    monkeypatch.setenv(ENV, "core.models.zoo:FashionCNNx")
    with pytest.raises(NeedsEntryPoint):
        Detector.load(tiny_run_copy)


def test_entry_point_for_a_zoo_run_is_refused(tiny_run):
    with pytest.raises(ValueError, match="custom models only"):
        Detector.load(tiny_run, entry=FashionCNN)


@pytest.mark.parametrize("edit, why", [
    (lambda c: c["scoring"].update(fn="evil"), "scoring.fn"),
    (lambda c: c["model"].update(evil=1), "model.evil"),
    (lambda c: c["model"].update(name="no-such-model"), "model.name"),
    (lambda c: c.update(name="../elsewhere"), "name"),
    (lambda c: c["model"].update(name="custom", entry="", input_size=[1, 28, 28]), "model.entry"),
])
def test_recorded_config_is_checked_by_the_cli_validator(tiny_run_copy, edit, why):
    mp = tiny_run_copy / "manifest.json"
    m = json.loads(mp.read_text())
    edit(m["config"])
    mp.write_text(json.dumps(m))
    with pytest.raises(ArtefactError, match=rf"manifest\.json: the recorded config is invalid .*{re.escape(why)}"):
        Detector.load(tiny_run_copy, entry=FashionCNN if m["config"]["model"]["name"] == "custom" else None)


# ------------------------------------------------------------------------------------------------ the app
streamlit = pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

PAGES = ["app_pages/inspect.py", "app_pages/attack.py", "app_pages/threshold.py", "app_pages/layers.py",
         "app_pages/failures.py", "app_pages/run.py"]




def _app(runs_dir: Path, monkeypatch) -> AppTest:
    monkeypatch.setenv("KNNGUARD_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_app_lists_a_custom_run_with_the_message_and_does_not_open_it(tiny_run, tiny_run_copy, monkeypatch):
    import shutil

    marker = _payload(tiny_run_copy)
    _set_config(tiny_run_copy, entry=f"{tiny_run_copy.name}.payload:build", **CUSTOM)
    monkeypatch.syspath_prepend(str(tiny_run_copy.parent))
    shutil.copytree(tiny_run, tiny_run_copy.parent / "zz-zoo")  # a normal run beside it, listed second
    at = _app(tiny_run_copy.parent, monkeypatch)
    assert at.session_state["run"] == str(tiny_run_copy)  # the first run, opened by every new session
    from app_ui.text import md

    warn = " ".join(w.value for w in at.warning)
    assert "custom model" in warn and md(ENV) in warn and "entry point" in warn
    assert not at.get("vega_lite_chart") and not [m for m in at.markdown if "Prediction" in m.value]
    assert not marker.exists()
    picker = at.selectbox(key="run")
    assert "needs its entry point" in picker.options[0] and "needs its entry point" not in picker.options[1]
    # The other run opens as usual.
    at.session_state["run"] = str(tiny_run_copy.parent / "zz-zoo")
    at = at.run()
    assert not at.exception and at.get("vega_lite_chart")
    assert not marker.exists()


# ------------------------------------------------------------------------------- finding 6: escaped text
#: Markup a run may carry in its text: images and links the browser would fetch or follow, raw HTML, code spans
#: that close early, Streamlit's colour / icon directives and math.
PAYLOADS = ["![x](http://host/beacon.png)", "<img src=http://host/i.png>", "[link](http://host/)",
            "`tick` ``x`` end", ":red[red] :material/home:", "$x^2$ **bold**", "# head\n- item",
            "<a href=http://host/>a</a>", "&lt;img src=x&gt;", "<b>b</b> _it_ ~~s~~ | t |"]
#: Raw fragments of those payloads: none may survive outside a backslash escape.
FRAGMENTS = ["![", "](", "<img", "<a ", "<b>b<", "http:", "``", ":red[", ":material", "$x", "**bold", "~~", "&lt;",
             "# head", "- item", "| t |"]
RUN_NAME = "run ![x](beacon.png) <img src=x> `code` [l](javascript:alert(1))"


def _raw(text: str) -> list[str]:
    """Payload fragments left in ``text`` once every backslash-escaped character is removed."""
    bare = re.sub(r"\\[!-/:-@\[-`{-~]", "", text)
    return [f for f in FRAGMENTS if f in bare]


def _markdown_texts(at: AppTest) -> list[str]:
    """Every string of the page that Streamlit renders as Markdown (bodies, labels, help, captions, options of
    segmented controls, metric values, table cells)."""
    out: list[str] = []

    def strings(msg, field: str = "") -> None:
        for fd, value in msg.ListFields():
            repeated = not isinstance(value, (str, bytes)) and not hasattr(value, "ListFields") \
                and hasattr(value, "__iter__")
            items = value if repeated else [value]
            for v in items:
                if hasattr(v, "ListFields"):
                    strings(v, fd.name)
                elif isinstance(v, str) and fd.name in ("body", "label", "help", "caption", "content", "delta"):
                    out.append(v)

    def walk(node) -> None:
        proto = getattr(node, "proto", None)
        if proto is not None and getattr(node, "type", "") not in ("vega_lite_chart", "code"):
            strings(proto)
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at.main)
    walk(at.sidebar)
    for t in at.table:
        df = t.value
        out += [str(x) for x in df.index] + [str(x) for x in df.to_numpy().ravel()]
    return out


def _vega_specs(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]


def _vega_fetches(spec) -> list[str]:
    """What in a Vega-Lite spec could make the browser fetch or follow something: a data ``url``, an ``image``
    mark, an ``href`` channel or property (run text in a title or a data value is drawn as text)."""
    found = []
    if isinstance(spec, dict):
        for key, v in spec.items():
            if key in ("url", "href") or (key in ("mark", "type") and v == "image"):
                found.append(f"{key}={v!r}")
            found += _vega_fetches(v)
    elif isinstance(spec, list):
        for v in spec:
            found += _vega_fetches(v)
    return found


@pytest.fixture()
def evil_run(tiny_run, tmp_path) -> Path:
    """The tiny run with markup in its class names, run name, model warning and report findings."""
    import shutil

    from app_ui.text import (
        md,  # noqa: F401  (the helper under test is importable without a session)
    )

    run = tmp_path / "runs" / RUN_NAME
    shutil.copytree(tiny_run, run)
    rd = RunDir(run)
    classes = json.loads((run / "classes.json").read_text())
    (run / "classes.json").write_text(json.dumps([f"{PAYLOADS[i % len(PAYLOADS)]} {i}" for i in range(len(classes))]))
    model = json.loads((run / "model.json").read_text())
    model["warning"] = PAYLOADS[0] + " " + PAYLOADS[1]
    (run / "model.json").write_text(json.dumps(model))
    rep = json.loads((run / "report.json").read_text())
    rep["findings"] = [{"holds": True, "claim": PAYLOADS[2], "evidence": PAYLOADS[3]}]
    (run / "report.json").write_text(json.dumps(rep))
    for rel in ("classes.json", "model.json", "report.json"):
        rd.record(rel)
    rd.manifest["config"]["name"] = RUN_NAME
    rd.save_manifest()
    return run


def test_every_page_escapes_the_runs_text(evil_run, monkeypatch):
    from app_ui.text import md

    at = _app(evil_run.parent, monkeypatch)
    seen = set()
    for page in PAGES:
        at = at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        if page.endswith("attack_live.py"):
            at = at.slider(key="atk_fgsm_eps").set_value(0.3).run()
            at = at.button(key="atk_run").click().run()
            assert not at.exception, [e.value for e in at.exception]
        texts = _markdown_texts(at)
        bad = {t: _raw(t) for t in texts if _raw(t)}
        assert not bad, (page, bad)
        for spec in _vega_specs(at):
            assert not _vega_fetches(spec), page
        shown = {p for p in PAYLOADS + [RUN_NAME] if any(md(p) in t for t in texts)}
        if not page.endswith(("threshold.py", "layers.py")):  # those show no class name or run text
            assert shown, f"{page} showed none of the run's text: the check saw nothing"
        seen |= shown
    assert RUN_NAME in seen and PAYLOADS[0] in seen and PAYLOADS[2] in seen and PAYLOADS[3] in seen


def test_md_escapes_markup_and_reads_the_same():
    from app_ui.text import md

    for p in PAYLOADS + [RUN_NAME]:
        assert not _raw(md(p)), p
        # Removing the escapes gives back the text (line breaks as spaces): CommonMark renders it as written.
        assert re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", md(p)) == re.sub(r"[\r\n]+", " ", p)
    assert md("T-shirt/top") == "T\\-shirt\\/top"


# --------------------------------------------------------------------------------- finding 13: server
def test_server_defaults_are_pinned():
    from core.uploads.policy import MAX_BYTES

    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "127.0.0.1"
    assert cfg["server"]["maxUploadSize"] == math.ceil(MAX_BYTES / 2**20)
    assert cfg["client"]["showErrorDetails"] == "none"
    assert cfg["client"]["allowedOrigins"] == []  # no origin may drive the app by postMessage (test_browser serves it)
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["browser"]["serverAddress"] == "localhost"  # one URL printed: no external-IP look-up
    # Streamlit itself reads them (a misspelt option would be ignored with a warning).
    shown = subprocess.run([sys.executable, "-m", "streamlit", "config", "show"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120).stdout
    for line in ('address = "127.0.0.1"', f"maxUploadSize = {math.ceil(MAX_BYTES / 2**20)}",
                 'showErrorDetails = "none"', 'serverAddress = "localhost"', "gatherUsageStats = false"):
        assert re.search(rf"^{re.escape(line)}$", shown, re.M), line


def test_favicon_is_shipped_not_fetched():
    src = (ROOT / "app.py").read_text()
    assert "page_icon=\":material" not in src and "page_icon=str(FAVICON)" in src
    from PIL import Image

    with Image.open(ROOT / "assets" / "favicon.png") as im:
        assert im.format == "PNG" and im.size == (64, 64)


def test_md_table_escapes_every_cell_and_keeps_its_columns():
    from app_ui.text import md, md_table

    evil = PAYLOADS + [RUN_NAME, "a | b", "x\\|y"]
    table = md_table(["set", "n"], [[p, i] for i, p in enumerate(evil)], align="lr")
    lines = table.splitlines()
    assert lines[:2] == ["| set | n |", "|:--|--:|"] and len(lines) == 2 + len(evil)
    for line, p in zip(lines[2:], evil):
        assert not _raw(line), line
        # Every cell's | is escaped: exactly the row's three column borders are left.
        assert len(re.findall(r"(?<!\\)\|", line)) == 3 and line.startswith(f"| {md(p)} | "), line
    with pytest.raises(ValueError, match="2 columns"):
        md_table(["a", "b"], [[1]])
    with pytest.raises(ValueError, match="2 columns"):
        md_table(["a", "b"], [[1, 2]], align="l")


def test_md_records_formats_numbers_marks_missing_values_and_escapes_text():
    from app_ui.text import md, md_records

    text = md_records([{"set": PAYLOADS[0], "n": 3, "rate": 0.25, "note": None},
                       {"set": "b|c", "n": None, "rate": float("nan"), "note": "x"}],
                      formats={"rate": "{:.1%}"})
    lines = text.splitlines()
    assert lines[:2] == ["| set | n | rate | note |", "|:--|--:|--:|:--|"]  # columns of numbers on the right
    assert lines[2] == f"| {md(PAYLOADS[0])} | 3 | 25{md('.0%')} | – |" and not _raw(lines[2])
    assert lines[3] == "| b\\|c | – | – | x |"
    assert md_records([]) == ""
    odd = md_records([{"seconds": "soon"}, {"seconds": 1.25}], formats={"seconds": "{:.1f}"})
    assert odd.splitlines()[2:] == ["| soon |", "| 1\\.2 |"]  # a value the format refuses is shown as it is
