"""Drive the app in a real browser (Playwright + Debian's Chromium) and save a full-page screenshot per page.

    .venv/bin/python scripts/screenshots.py                          # runs in data/runs -> docs/screenshots/
    .venv/bin/python scripts/screenshots.py --runs /tmp/apprun --out /tmp/shots

Needs `apt-get install -y chromium` (Playwright's own browser download does not work offline). The browser test
(tests/test_browser.py) uses the same functions on the tiny test run and asserts what it sees.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1400, "height": 1000}
#: page title in the navigation -> screenshot name
PAGES = {"Inspect": "inspect", "Attack": "attack", "Threshold": "threshold", "Layers": "layers",
         "Failure cases": "failure_cases", "Run": "run"}
#: page title in the navigation -> its url path (app.py)
URLS = {"Inspect": "", "Attack": "attack", "Threshold": "threshold", "Layers": "layers",
        "Failure cases": "failures", "Run": "run"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(runs_dir: str | os.PathLike, *, port: int | None = None, timeout: float = 90,
          env: dict[str, str] | None = None, pids: list[int] | None = None) -> Iterator[str]:
    """Run ``streamlit run app.py`` on a free loopback port with ``KNNGUARD_RUNS_DIR=runs_dir`` (and ``env`` added
    to the environment); yield its URL; stop it on exit. The server's process id is appended to ``pids``."""
    port = port or free_port()
    env = dict(os.environ, KNNGUARD_RUNS_DIR=str(runs_dir), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false",
               **(env or {}))
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([str(ROOT / ".venv/bin/streamlit"), "run", "app.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1",
                             "--server.fileWatcherType", "none"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if pids is not None:
        pids.append(proc.pid)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"streamlit exited with {proc.returncode}: {log.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"streamlit did not answer on {url} within {timeout:.0f} s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


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
              && [...document.images].every(i => i.complete)""", timeout=timeout * 1000)
    page.wait_for_timeout(500)  # plotly's first draw


def goto(page, title: str) -> None:
    """Click the navigation link ``title`` (keeps the session, unlike a new URL)."""
    page.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).first.click()
    page.wait_for_url(f"**/{URLS[title]}", timeout=60_000)
    wait_idle(page)


def main_text(page) -> str:
    return page.locator('[data-testid="stMain"]').inner_text()


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
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for()
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
    page.locator("h3").filter(has_text="→").first.wait_for(timeout=180_000)
    wait_idle(page)
    page.locator(".st-key-atk_chart .main-svg").first.wait_for()
    seen["attack"] = main_text(page)
    _no_exception(page, seen, "attack")
    seen["shots"].append(shoot(page, out, "attack"))

    goto(page, "Threshold")
    op = page.locator(".st-key-th_operating")
    op.wait_for()
    page.locator(".st-key-th_roc .main-svg").first.wait_for()
    seen["operating_before"] = op.inner_text()
    thumb = page.locator(".st-key-th_threshold input").first  # the slider thumb's focusable input
    thumb.focus()
    for _ in range(40):
        page.keyboard.press("ArrowRight")
    page.wait_for_function("t => document.querySelector('.st-key-th_operating').innerText !== t",
                           arg=seen["operating_before"], timeout=60_000)
    wait_idle(page)
    seen["operating_after"] = op.inner_text()
    seen["threshold"] = main_text(page)
    _no_exception(page, seen, "threshold")
    seen["shots"].append(shoot(page, out, "threshold"))

    goto(page, "Layers")
    page.get_by_text("Every setting").wait_for()
    page.locator('[data-testid="stDataFrame"]').first.wait_for()
    page.locator(".st-key-layers_fig6 .main-svg").first.wait_for()
    seen["layers"] = main_text(page)
    _no_exception(page, seen, "layers")
    seen["shots"].append(shoot(page, out, "layers"))

    goto(page, "Failure cases")
    page.get_by_text("EER threshold at").wait_for()
    seen["failure_cases"] = main_text(page)
    _no_exception(page, seen, "failure_cases")
    seen["shots"].append(shoot(page, out, "failure_cases"))

    goto(page, "Run")
    page.get_by_text("Make another run").wait_for()
    seen["run"] = main_text(page)
    _no_exception(page, seen, "run")
    seen["shots"].append(shoot(page, out, "run"))
    return seen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default=str(ROOT / "data" / "runs"), help="folder of runs (KNNGUARD_RUNS_DIR)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"), help="where the PNGs go")
    ap.add_argument("--attack", default="Iterative targeted FGSM", help="attack title to run on the Attack page")
    ap.add_argument("--target", default="Bag", help="target class name, if the image is not already one "
                                                     "(else the page's random wrong class)")
    args = ap.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"error: {CHROMIUM} missing; install it with `apt-get install -y chromium`", file=sys.stderr)
        return 2
    with serve(args.runs) as url, browser_page() as page:
        seen = tour(page, url, Path(args.out), attack=args.attack, target=args.target or None,
                    attack_evalset_image=True)
    for e in seen.get("exceptions", []):
        print(f"warning: exception shown on {e}", file=sys.stderr)
    for p in seen["shots"]:
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
