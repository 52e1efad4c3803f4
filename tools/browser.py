"""Chromium (Debian's, driven by Playwright) on the served app: wait for a rerun to be drawn, navigate, take
full-page screenshots, and a tour of every page that records what each shows.

Needs ``apt-get install -y chromium`` (Playwright's own browser download does not work offline) and the
``playwright`` package (requirements-dev.txt); both are imported only when a browser is opened.
"""
from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from pathlib import Path

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "VIEWPORT", "URLS", "READY", "browser_page", "wait_idle", "goto",
           "wait_ready", "main_text", "view", "slide", "shoot", "png_bytes", "choose", "tour", "adaptive_switch"]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1400, "height": 1000}
#: page title in the navigation -> its url path (app.py)
URLS = {"Inspect": "", "Attack": "attack", "Threshold": "threshold", "Layers": "layers",
        "Failure cases": "failures", "Compare": "compare", "Adaptive attacks": "adaptive", "Run": "run"}
#: page title in the navigation -> a selector drawn once its script run is complete
#: (a chart: its Vega-Lite SVG, in the container app_ui.charts.bars.show keys)
READY = {"Inspect": ".st-key-inspect_layers svg.marks", "Attack": ".st-key-atk_run button",
         "Threshold": ".st-key-th_density svg.marks", "Layers": ".st-key-layers_fig6 svg.marks",
         "Failure cases": "text=Threshold at", "Compare": "h1", "Adaptive attacks": "h1",
         "Run": "text=Make another run"}


@contextlib.contextmanager
def browser_page() -> Iterator:
    """A Playwright page in Debian's Chromium, viewport 1400×1000."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(90_000)
            yield page
        finally:
            browser.close()


def wait_idle(page, timeout: float = 90) -> None:
    """Wait until the script run is over and drawn: the app reports it is not running, no skeleton or stale
    element is left, and every image has loaded."""
    page.wait_for_function(
        """() => document.querySelector('[data-testid="stApp"][data-test-script-state="notRunning"]')
              && !document.querySelector('[data-testid="stSkeleton"]')
              && !document.querySelector('[data-stale="true"]')
              && !document.querySelector('[data-testid="stSpinner"]')
              && [...document.images].every(i => i.complete)
              && [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')]
                     .every(c => c.querySelector('svg.marks, canvas.marks'))""", timeout=timeout * 1000)
    page.wait_for_timeout(300)  # Vega's transitions and fonts settle before a screenshot


def goto(page, title: str) -> None:
    """Click the navigation link ``title`` (keeps the session, unlike a new URL) and wait for the page."""
    page.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).first.click()
    page.wait_for_url(re.compile(rf"^https?://[^/]+/{re.escape(URLS[title])}(\?.*)?$"), timeout=60_000)
    wait_ready(page, title)


def wait_ready(page, title: str) -> None:
    """Wait until page ``title`` is drawn: its :data:`READY` element, then :func:`wait_idle`."""
    page.locator(READY[title]).first.wait_for()
    wait_idle(page)


def main_text(page) -> str:
    return page.locator('[data-testid="stMain"]').inner_text()


def view(page) -> str:
    """What the page shows in words: the sidebar's settings and the main area's text (charts' text left out)."""
    return page.evaluate("""() => ['[data-testid=stSidebarUserContent]', '[data-testid=stMain]'].map(sel => {
        const e = document.querySelector(sel);
        if (!e) return '';
        const c = e.cloneNode(true);
        c.querySelectorAll('svg, canvas, [data-testid=stDataFrame]').forEach(x => x.remove());
        document.body.appendChild(c);
        const t = c.innerText;
        c.remove();
        return t;
    }).join(' | ')""")


def slide(page, key: str, press: str) -> str:
    """Press ``press`` (e.g. ``"Home"``, ``"End"``) on the slider of widget ``key`` and wait until the Threshold
    page's operating text changed and the rerun is drawn; returns that text."""
    op = page.locator(".st-key-th_operating")
    before = op.inner_text()
    page.locator(f".st-key-{key} input").first.focus()  # the slider thumb's focusable input
    page.keyboard.press(press)
    page.wait_for_function("t => document.querySelector('.st-key-th_operating').innerText !== t", arg=before,
                           timeout=60_000)
    wait_idle(page)
    return op.inner_text()


def shoot(page, out: Path, name: str) -> Path:
    """Screenshot of the whole page: Streamlit scrolls inside its main container, so the viewport is made as tall
    as the content for the shot (the sidebar then spans it too), then put back."""
    wait_idle(page)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    height = page.evaluate("""() => Math.max(...[...document.querySelectorAll(
        '[data-testid=stMain], [data-testid=stAppViewContainer], [data-testid=stMainBlockContainer]')]
        .map(e => e.scrollHeight))""")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], int(height) + 40)})
    page.wait_for_timeout(600)
    wait_idle(page)
    page.screenshot(path=str(path))
    page.set_viewport_size(VIEWPORT)
    return path


def png_bytes(size=(90, 60)) -> bytes:
    """A small RGB PNG (a light shirt-like shape on black), made with PIL."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, (0, 0, 0))
    d = ImageDraw.Draw(img)
    w, h = size
    d.polygon([(w * .3, h * .1), (w * .7, h * .1), (w * .9, h * .35), (w * .75, h * .45), (w * .72, h * .9),
               (w * .28, h * .9), (w * .25, h * .45), (w * .1, h * .35)], fill=(210, 200, 190))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _no_exception(page, seen: dict, name: str) -> None:
    n = page.locator('[data-testid="stException"]').count()
    if n:
        box = page.locator('[data-testid="stException"]').first.inner_text()
        seen.setdefault("exceptions", []).append(f"{name}: {box}")


def choose(page, key: str, option: str) -> bool:
    """Pick ``option`` in the selectbox with widget key ``key``; False (selection unchanged) if it has none."""
    page.locator(f".st-key-{key} [data-baseweb=select], .st-key-{key} input").first.click()
    opt = page.get_by_role("option", name=option, exact=True)
    try:
        opt.first.wait_for(timeout=5_000)
    except Exception:  # noqa: BLE001 - playwright's TimeoutError: no such option
        page.keyboard.press("Escape")
        return False
    opt.first.click()
    wait_idle(page)
    return True


def tour(page, url: str, out: Path, *, attack: str = "FGSM", target: str | None = None,
         attack_evalset_image: bool = False) -> dict:
    """Visit every page, upload a PNG, run an attack, move the threshold; save a full-page screenshot per page.

    Returns what was seen: each page's main text, the operating-point text before and after the slider moved,
    the screenshot paths, and any Streamlit exception box ("exceptions"). ``attack_evalset_image`` switches
    Inspect back to the first evaluation image before attacking (nicer docs pictures than the synthetic upload).
    """
    seen: dict = {"shots": []}
    page.goto(url + "/")  # Inspect is the default page
    page.get_by_text("Prediction:").first.wait_for()
    wait_idle(page)
    page.locator(READY["Inspect"]).first.wait_for()
    seen["inspect_evalset"] = main_text(page)
    page.locator('[data-testid="stRadio"] label').filter(has_text="Upload").click()
    wait_idle(page)
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(
        files=[{"name": "shirt.png", "mimeType": "image/png", "buffer": png_bytes()}])
    page.get_by_text("your upload").first.wait_for()
    wait_idle(page)
    seen["inspect"] = main_text(page)
    _no_exception(page, seen, "inspect")
    seen["shots"].append(shoot(page, out, "inspect"))
    if attack_evalset_image:
        page.reload()
        page.locator('[data-testid="stRadio"] label').filter(has_text="Evaluation set").click()
        wait_idle(page)

    goto(page, "Attack")
    if attack != "FGSM":
        choose(page, "atk_name", attack)
    if target:
        choose(page, "atk_target", target)
    button = page.get_by_role("button", name=f"Run {attack}")
    button.wait_for()
    button.click()
    page.locator("h3").filter(has_text="The attack").first.wait_for(timeout=180_000)
    wait_idle(page)
    page.locator(".st-key-atk_chart svg.marks").first.wait_for()
    seen["attack"] = main_text(page)
    _no_exception(page, seen, "attack")
    seen["shots"].append(shoot(page, out, "attack"))

    goto(page, "Threshold")
    op = page.locator(".st-key-th_operating")
    op.wait_for()
    page.locator(".st-key-th_density svg.marks").first.wait_for()
    seen["operating_before"] = op.inner_text()
    thumb = page.locator(".st-key-th_threshold input").first  # the slider thumb's focusable input
    thumb.focus()
    for _ in range(40):
        page.keyboard.press("ArrowRight")
        page.wait_for_timeout(40)  # each step reruns the app (it sets the shared threshold): let it land
    page.wait_for_function("t => document.querySelector('.st-key-th_operating').innerText !== t",
                           arg=seen["operating_before"], timeout=60_000)
    wait_idle(page)
    seen["operating_after"] = op.inner_text()
    seen["threshold"] = main_text(page)
    _no_exception(page, seen, "threshold")
    seen["shots"].append(shoot(page, out, "threshold"))

    goto(page, "Layers")
    page.get_by_text("Every setting").wait_for()
    page.locator('[data-testid="stMarkdown"] table').first.wait_for()  # the paper's Tables 2 and 4
    page.locator(".st-key-layers_fig6 svg.marks").first.wait_for()
    seen["layers"] = main_text(page)
    _no_exception(page, seen, "layers")
    seen["shots"].append(shoot(page, out, "layers"))

    goto(page, "Failure cases")
    page.get_by_text("Threshold at").first.wait_for()
    seen["failure_cases"] = main_text(page)
    _no_exception(page, seen, "failure_cases")
    seen["shots"].append(shoot(page, out, "failure_cases"))

    goto(page, "Run")
    page.get_by_text("Make another run").wait_for()
    seen["run"] = main_text(page)
    _no_exception(page, seen, "run")
    seen["shots"].append(shoot(page, out, "run"))
    return seen


def adaptive_switch(page, out: Path, name: str = "attack_adaptive") -> dict:
    """On the Attack page: turn "attack the detector too" on, run the oblivious and the adaptive PGD with the
    panel's defaults, wait for both before/after charts and save a full-page screenshot ``name``.

    Returns ``{"text": main text, "shot": path}`` plus ``"exceptions"`` if a Streamlit exception box showed.
    """
    seen: dict = {}
    page.locator(".st-key-adp_on label").first.click()
    button = page.locator(".st-key-adp_run button").first
    button.wait_for()
    wait_idle(page)
    button.click()
    for variant in ("oblivious", "adaptive"):
        page.locator(f".st-key-adp_chart_{variant} svg.marks").first.wait_for(timeout=180_000)
    wait_idle(page, timeout=180)
    seen["text"] = main_text(page)
    _no_exception(page, seen, name)
    seen["shot"] = shoot(page, out, name)
    return seen
