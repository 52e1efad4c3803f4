"""The app in a real browser: Playwright driving Debian's Chromium against `streamlit run app.py` on the tiny run.

    .venv/bin/python -m pytest tests/system/test_browser.py -q

Visits every page through the navigation, uploads a PNG, runs FGSM, moves the threshold slider with the keyboard
and checks that the operating point follows; saves a full-page screenshot per page in docs/screenshots/tiny/
(git-ignored: the committed docs/screenshots/*.png come from `scripts/screenshots.py` on a real run).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tools.app_server import serve

CHROMIUM = Path("/usr/bin/chromium")
OUT = ROOT / "docs" / "screenshots" / "tiny"

pytest.importorskip("playwright.sync_api", reason="pip install playwright (requirements-dev.txt)")
from tools import browser  # noqa: E402

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's Chromium is missing: `sudo apt-get install -y chromium` (or `scripts/setup.sh --dev`); "
           "Playwright's own browser download does not work offline")


@pytest.fixture(scope="module")
def url(tiny_run):
    """One app server on the tiny run for the default-theme tests (each opens its own browser, so its own
    sessions); a fresh server's first page costs seconds of imports and loading."""
    with serve(tiny_run.parent) as u:
        yield u


def test_the_served_app_lets_no_origin_drive_it(url):
    """Streamlit's host configuration allows no origin to send the page commands (stop, rerun, auth token) by
    postMessage: its default list is Streamlit Community Cloud's (.streamlit/config.toml)."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/_stcore/host-config", timeout=30) as r:
        assert json.loads(r.read())["allowedOrigins"] == []


def _threshold(text: str) -> float:
    return float(re.search(r"at threshold ([0-9.]+)", text).group(1))


def _image_to_flip(tiny_run, k: int) -> tuple[int, str]:
    """An authentic image whose stored score at the operating layer is well inside (0, 1) at ``k``: rejected at
    threshold 1, trusted at 0 under either trust rule; and that layer."""
    import json

    import numpy as np

    from core.evaluation.rundata import RunData
    from core.evaluation.setting_figures import operating_layer

    data = RunData(tiny_run, verify=False)
    d = data.summary["defaults"]
    layer = operating_layer(json.loads((tiny_run / "report.json").read_text()), data.layers)
    s = np.asarray(data.scores("authentic", layer, d["mode"], d["fn"], k))
    return int(np.flatnonzero((s > 0.2) & (s < 0.8))[0]), layer


#: Pages whose view is also reloaded and reopened from a pasted link (the others: the view in the URL).
ROUND_TRIP = ("Inspect", "Threshold", "Layers")


def test_every_page_in_a_real_browser(tiny_run, url):
    with browser.browser_page() as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        seen = browser.tour(page, url, OUT, attack="FGSM")
        # A pasted link to /inspect (served directly) opens the image and verdict combination it names.
        page.goto(url + "/inspect?img=authentic:3&verdict=any")
        browser.wait_ready(page, "Inspect")
        seen["pasted"] = browser.main_text(page)
        seen["pasted_url"] = page.url
        page.goto(url + "/Threshold")
        browser.wait_ready(page, "Threshold")
        seen["Threshold"] = browser.main_text(page)

        # A threshold set on the Threshold page is the one Inspect, Attack and Failure cases use (new session: an
        # image from the link, k = 19 so that Layers and Run show a non-default view).
        k = 19
        img, layer = _image_to_flip(tiny_run, k)
        page.goto(url + f"/?img=authentic:{img}&k={k}")
        browser.wait_ready(page, "Inspect")
        browser.goto(page, "Threshold")
        flips = {}
        for press, th in (("End", "1.000"), ("Home", "0.000")):
            assert f"threshold {th}" in browser.slide(page, "th_threshold", press)
            for title in ("Inspect", "Attack", "Failure cases"):
                browser.goto(page, title)
                flips[(th, title)] = browser.main_text(page)
            browser.goto(page, "Threshold")
        # The view (threshold 0 for the layer, the image, k) is in the URL of every page, and survives a reload and
        # a pasted link: every page reads and writes it through app.py, so three pages with different widgets
        # check the round trip (each reload or link is a new session: ~4 s of a 2-core CI machine).
        restored = {}
        pasted = page.context.browser.new_page(viewport=browser.VIEWPORT)  # a new session, as a pasted link
        for title in browser.URLS:
            browser.goto(page, title)
            want, link = browser.view(page), page.url
            if title in ROUND_TRIP:
                page.reload()
                browser.wait_ready(page, title)
                pasted.goto(link)
                browser.wait_ready(pasted, title)
                restored[title] = (link, want, browser.view(page), browser.view(pasted))
            else:
                restored[title] = (link, want, want, want)

    assert not seen.get("exceptions"), seen["exceptions"]
    assert not errors, errors
    # Inspect: a prediction for the evaluation image, then for the uploaded PNG, with every layer's verdict.
    assert "Prediction:" in seen["inspect_evalset"] and "authentic #0" in seen["inspect_evalset"]
    assert "your upload" in seen["inspect"] and "Prediction:" in seen["inspect"]
    assert "as the model sees it" in seen["inspect"]
    # Attack: FGSM (untargeted by default, as the authors') ran and reported the prediction before -> after.
    assert re.search(r"The attack (succeeded: the CNN now says|failed: the CNN still says) .+", seen["attack"])
    assert re.search(r"FGSM: .+ → .+", seen["attack"])
    assert "any class but the current prediction counts" in seen["attack"]
    assert "perturbation" in seen["attack"]
    # Threshold: 40 presses of the right arrow moved the operating point by 40 steps of 0.001.
    before, after = seen["operating_before"], seen["operating_after"]
    assert before != after
    assert _threshold(after) == pytest.approx(min(1.0, _threshold(before) + 0.040), abs=1e-9)
    assert "AUC" in seen["threshold"]
    assert "Every setting" in seen["layers"] and "Aggr." in seen["layers"]  # the paper's table, as an HTML table
    assert "Threshold at" in seen["failure_cases"]
    assert "Make another run" in seen["run"] and "Test accuracy" in seen["run"]

    # The pasted /inspect link reopens its image and verdict choice; /Threshold (capitalised) is served too.
    assert "Page not found" not in seen["pasted"] and "authentic #3" in seen["pasted"] and "Overall:" in seen["pasted"]
    assert "layers reject" in seen["pasted"]  # the "any layer rejects" combination, from the URL
    assert "img=authentic%3A3" in seen["pasted_url"] or "img=authentic:3" in seen["pasted_url"]
    assert "Page not found" not in seen["Threshold"] and "Jump to EER" in seen["Threshold"]

    # The threshold moved on the Threshold page flips the verdict on Inspect, Attack and Failure cases.
    for th, word in (("1.000", "✗ rejected"), ("0.000", "✓ trusted")):
        assert f"{word} by layer {layer}" in flips[(th, "Inspect")] and f"threshold {th}" in flips[(th, "Inspect")]
        assert f"authentic #{img}" in flips[(th, "Inspect")]
        assert f"Overall: {word}" in flips[(th, "Attack")] and f"threshold {th}" in flips[(th, "Attack")]
        assert f"set on the Threshold page): {th}" in flips[(th, "Failure cases")]
    assert "caught 0 of" in flips[("0.000", "Failure cases")]  # every score is >= 0
    assert "missed 0" not in flips[("0.000", "Failure cases")]

    from PIL import Image

    names = sorted(p.stem for p in seen["shots"])
    assert names == sorted(["inspect", "attack", "threshold", "layers", "failure_cases", "run"])
    for p in seen["shots"]:
        with Image.open(p) as im:
            assert im.width == browser.VIEWPORT["width"] and im.height >= 600, (p, im.size)

    # Last: the view in the URL of every page, and the same view after a reload and from the pasted link.
    lost = [t for t, (link, *_) in restored.items() if "?" not in link]
    assert not lost, f"the URL has no view after the navigation to {lost}"
    for title, (link, want, reloaded, again) in restored.items():
        assert f"img=authentic%3A{img}" in link and f"k={k}" in link and "th=0" in link, (title, link)
        assert "Page not found" not in want and want == reloaded == again, title


def _strokes(page, key: str, mark: str) -> list[str]:
    """Stroke colours of the Vega-Lite ``mark`` elements ("line", "rule") drawn in the chart keyed ``key`` (its
    data marks: not the axes' grid lines, also rules)."""
    return page.evaluate("""([key, mark]) => [...document.querySelectorAll(
        `.st-key-${key} g.mark-${mark}.role-mark path, .st-key-${key} g.mark-${mark}.role-mark line`)].map(p => p.getAttribute('stroke'))""",
                         [key, mark])


@pytest.mark.parametrize("base", ["light", "dark"])
def test_threshold_ticks_and_roc_take_the_theme_ink(tiny_run, base):
    from app_ui.charts.bars import INK

    with serve(tiny_run.parent, env={"STREAMLIT_THEME_BASE": base}) as url, browser.browser_page() as page:
        page.goto(url + "/")
        browser.wait_idle(page)
        ticks = page.evaluate("""() => [...document.querySelectorAll(
            '[data-testid=stVegaLiteChart] path[aria-roledescription=tick]')].map(p => p.getAttribute('fill'))""")
        assert ticks and all(t == INK[base] for t in ticks)
        labels = page.evaluate("""() => [...document.querySelectorAll(
            '[data-testid=stVegaLiteChart] text[aria-roledescription="text mark"]')].map(t => t.getAttribute('fill'))""")
        assert labels and all(t == INK[base] for t in labels)  # the bars' labels read on the theme's background
        if base == "dark":
            browser.shoot(page, OUT, "inspect_dark")
        page.goto(url + "/threshold")
        browser.wait_idle(page)
        rules = _strokes(page, "th_density", "rule")
        assert rules and all(r == INK[base] for r in rules)  # the threshold line of the density chart
        page.locator(".st-key-th_view button").filter(has_text="ROC").click()  # one chart at a time
        page.locator(".st-key-th_roc svg.marks").first.wait_for()
        browser.wait_idle(page)
        assert not page.locator(".st-key-th_density").count()
        roc = _strokes(page, "th_roc", "line")
        assert roc and roc[0] == INK[base]  # the ROC curve (the chance line after it is grey)
        if base == "dark":
            browser.shoot(page, OUT, "threshold_dark")


def _download(page, key: str) -> bytes:
    """Click the download button of widget ``key`` and return the file's bytes."""
    with page.expect_download(timeout=60_000) as d:
        page.locator(f".st-key-{key} button").first.click()
    return Path(d.value.path()).read_bytes()


def test_every_download_opens_and_parses(tiny_run, url):
    import csv
    import io
    import json

    import numpy as np
    from PIL import Image

    with browser.browser_page() as page:
        page.goto(url + "/threshold")
        browser.wait_idle(page)
        page.get_by_text("Downloads: scores per image").click()  # the buttons are drawn when it opens
        page.locator(".st-key-dl_scores").wait_for()
        scores = list(csv.DictReader(io.StringIO(_download(page, "dl_scores").decode())))
        conf = list(csv.DictReader(io.StringIO(_download(page, "dl_confusion").decode())))
        roc = list(csv.DictReader(io.StringIO(_download(page, "dl_roc").decode())))
        browser.goto(page, "Run")
        report_md = _download(page, "dl_report_md").decode()
        report_html = _download(page, "dl_report_html").decode()
        browser.goto(page, "Attack")
        page.get_by_role("button", name="Run FGSM").click()
        page.locator(".st-key-atk_chart svg.marks").first.wait_for(timeout=180_000)
        browser.wait_idle(page)
        png = Image.open(io.BytesIO(_download(page, "dl_adv_png")), formats=["PNG"])
        arr = np.load(io.BytesIO(_download(page, "dl_adv_npy")), allow_pickle=False)
        params = json.loads(_download(page, "dl_adv_json"))

    assert scores and {"set", "index", "true", "predicted"} <= set(scores[0])
    assert any(k.startswith("score_") for k in scores[0]) and any(k.startswith("verdict_") for k in scores[0])
    assert scores[0]["set"] == "authentic" and {r["verdict_" + k[6:]] for r in scores for k in r
                                                 if k.startswith("score_")} <= {"trusted", "rejected"}
    assert conf[0]["quantity"] == "threshold" and len(roc) > 2 and float(roc[-1]["fpr"]) == 1.0
    assert report_md == (tiny_run / "report.md").read_text()
    assert report_html.startswith("<!DOCTYPE html>") and "<table>" in report_html
    assert arr.dtype == np.uint8 and arr.ndim == 3 and np.array_equal(np.asarray(png).reshape(arr.shape), arr)
    assert params["attack"] == "fgsm" and "eps" in params["params"]


def test_adaptive_switch_on_the_attack_page(tiny_run, url):
    """The Attack page's "attack the detector too" switch: both PGD runs finish and each gets its verdict."""
    with browser.browser_page() as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/attack")
        browser.wait_ready(page, "Attack")
        seen = browser.adaptive_switch(page, OUT)
    assert not errors and "exceptions" not in seen, (errors, seen.get("exceptions"))
    text = seen["text"]
    for variant in ("oblivious", "adaptive"):
        assert re.search(rf"{variant}: .+, (not fooled|slips through|caught)", text), text
    assert "Verdict at layer" in text
    from PIL import Image

    with Image.open(seen["shot"]) as im:
        assert im.width == browser.VIEWPORT["width"] and im.height > browser.VIEWPORT["height"]


def test_no_page_loads_plotly_js_or_the_data_grid(url):
    """Every chart is Vega-Lite (app_ui.charts.bars): no page makes the tab load Streamlit's 4.7 MB plotly module, which
    cost each new tab about 2 s on 2 cores (python -m benchmarks.first_page, 2026-11-29); every table a page opens
    with is Markdown (app_ui.text.md_table): the data grid's module made the first page showing one take 0.2-0.4 s
    longer to open (the grid stays for tables drawn on request: the Attack page's adaptive panel, peer verdicts)."""
    with browser.browser_page() as page:
        page.goto(url + "/")
        browser.wait_ready(page, "Inspect")
        for title in [*list(browser.URLS)[1:], "Layers"]:  # every page, then back to one with charts
            browser.goto(page, title)
            assert not page.locator('[data-testid="stDataFrame"]').count(), title
        assert not page.evaluate("""() => performance.getEntriesByType('resource')
                                           .some(r => /\\/DataFrame\\.[^/]*\\.js$/.test(r.name))""")
        assert page.locator('[data-testid=stVegaLiteChart] svg.marks').count() >= 1
        assert not page.locator('[data-testid="stPlotlyChart"]').count()
        assert not page.evaluate("""() => performance.getEntriesByType('resource')
                                           .some(r => /\\/PlotlyChart\\.[^/]*\\.js$/.test(r.name))""")
