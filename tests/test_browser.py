"""The app in a real browser: Playwright driving Debian's Chromium against `streamlit run app.py` on the tiny run.

    .venv/bin/python -m pytest tests/test_browser.py -q

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


def _threshold(text: str) -> float:
    return float(re.search(r"at threshold ([0-9.]+)", text).group(1))


def test_every_page_in_a_real_browser(tiny_run):
    with serve(tiny_run.parent) as url, browser.browser_page() as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        seen = browser.tour(page, url, OUT, attack="FGSM")
        # The threshold moved on the Threshold page is the one Inspect uses; a pasted link reopens a view.
        page.goto(url + "/inspect?img=authentic:3&verdict=any")
        page.get_by_text("authentic #3").first.wait_for()
        browser.wait_idle(page)
        seen["pasted"] = browser.main_text(page)
        seen["pasted_url"] = page.url
        page.reload()
        page.get_by_text("authentic #3").first.wait_for()
        browser.wait_idle(page)
        seen["reloaded"] = browser.main_text(page)
        page.goto(url + "/Threshold")
        page.locator(".st-key-th_operating").wait_for()
        browser.wait_idle(page)
        seen["Threshold"] = browser.main_text(page)

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
    assert "Every setting" in seen["layers"]
    assert "Threshold at" in seen["failure_cases"]
    assert "Make another run" in seen["run"] and "Test accuracy" in seen["run"]

    # A pasted link to /inspect (served directly) and its reload reopen the same image and verdict choice.
    for text in (seen["pasted"], seen["reloaded"]):
        assert "Page not found" not in text and "authentic #3" in text and "Overall:" in text
        assert "layers reject" in text  # the "any layer rejects" combination, from the URL
    assert "img=authentic%3A3" in seen["pasted_url"] or "img=authentic:3" in seen["pasted_url"]
    assert "Page not found" not in seen["Threshold"] and "Jump to EER" in seen["Threshold"]  # /Threshold (capitalised) is served too

    from PIL import Image

    names = sorted(p.stem for p in seen["shots"])
    assert names == sorted(["inspect", "attack", "threshold", "layers", "failure_cases", "run"])
    for p in seen["shots"]:
        with Image.open(p) as im:
            assert im.width == browser.VIEWPORT["width"] and im.height >= 600, (p, im.size)
