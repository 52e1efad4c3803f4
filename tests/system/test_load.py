"""Load in real browsers: concurrent Chromium sessions against `streamlit run app.py` on the tiny run (Playwright's
async API driving one Debian Chromium, one context per session), through Inspect, Threshold and Attack.

Three sessions by default (``KNNGUARD_LOAD_SESSIONS``): each Chromium tab renders the React app, and 20 of them
took 4 minutes of both cores of this 2-core machine (passing; figures in the README). The 20-session load test is tests/system/test_load_sessions.py (the same actions over
Streamlit's websocket protocol, without the rendering).

    .venv/bin/python -m pytest tests/system/test_load.py -q -s        # or: -m load

Each session picks its own evaluation image (index 1..N) and checks the prediction shown is that image's stored
prediction, moves the threshold slider its own number of steps and checks the operating point shows its own value,
then runs FGSM and checks the attack page names its own image: any cross-talk between sessions' state fails. Per
action latency (action start -> expected text visible) p50/p95 is printed and, with ``KNNGUARD_LOAD_OUT=<file>``,
written there with the load average.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

from tools.app_server import serve

pytest.importorskip("playwright.async_api", reason="pip install playwright (requirements-dev.txt)")
from tools import browser  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
SESSIONS = int(os.environ.get("KNNGUARD_LOAD_SESSIONS", "3"))
ACTION_TIMEOUT_MS = int(os.environ.get("KNNGUARD_LOAD_ACTION_TIMEOUT_MS", "60000"))
#: Where the result goes: a test run writes none into the repository unless asked (the README's browser figures
#: come from ``KNNGUARD_LOAD_SESSIONS=20 KNNGUARD_LOAD_OUT=benchmarks/results/load_browser.json``).
OUT = os.environ.get("KNNGUARD_LOAD_OUT", "")

pytestmark = [
    pytest.mark.load,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="Debian's Chromium is missing: `sudo apt-get install -y chromium` (or "
                              "`scripts/setup.sh --dev`); Playwright's own browser download does not work offline"),
]

IDLE_JS = """() => document.querySelector('[data-testid="stApp"][data-test-script-state="notRunning"]')
      && !document.querySelector('[data-testid="stSkeleton"]')
      && !document.querySelector('[data-stale="true"]')
      && !document.querySelector('[data-testid="stSpinner"]')"""
MAIN_HAS_JS = """(parts) => { const m = document.querySelector('[data-testid="stMain"]');
      return m && parts.every(p => m.innerText.includes(p)); }"""


async def _idle(page) -> None:
    await page.wait_for_function(IDLE_JS, timeout=ACTION_TIMEOUT_MS)


async def _main_has(page, *parts: str) -> None:
    await page.wait_for_function(MAIN_HAS_JS, arg=list(parts), timeout=ACTION_TIMEOUT_MS)


async def _goto(page, title: str, path: str) -> None:
    await page.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).first.click()
    # The page writes the view into the query string after the navigation: match the path, any query.
    await page.wait_for_url(re.compile(rf"^https?://[^/]+/{re.escape(path)}(\?.*)?$"), timeout=ACTION_TIMEOUT_MS)
    await _idle(page)


async def _session(chromium, url: str, s: int, truth: dict, lat: dict, problems: list) -> None:
    ctx = await chromium.new_context(viewport=browser.VIEWPORT)
    ctx.set_default_timeout(ACTION_TIMEOUT_MS)
    page = await ctx.new_page()
    page.on("pageerror", lambda e: problems.append(f"session {s}: page error {e}"))
    step = "open"
    try:
        index = s + 1  # index 0 is every session's default image
        want = truth["classes"][int(truth["predicted"][index])]
        await page.goto(url + "/")
        await _main_has(page, "Prediction:")
        await _idle(page)

        # Inspect: this session's own evaluation image.
        step = "inspect"
        box = page.locator(".st-key-inspect_index input").first
        await box.fill(str(index))
        t0 = time.perf_counter()
        await box.press("Enter")
        await _main_has(page, f"authentic #{index} ", "Prediction:")
        await _idle(page)
        lat["inspect"].append(time.perf_counter() - t0)
        shown = await page.locator("h3").filter(has_text="Prediction:").first.inner_text()
        if shown.strip() != f"Prediction: {want}":
            problems.append(f"session {s}: image #{index} shows {shown.strip()!r}, stored prediction {want!r}")

        # Threshold: this session's own number of steps.
        step = "threshold"
        await _goto(page, "Threshold", "threshold")
        op = page.locator(".st-key-th_operating")
        await op.wait_for()
        before = float(re.search(r"at threshold ([0-9.]+)", await op.inner_text()).group(1))
        steps = 3 + s
        expected = min(1.0, round(before + 0.001 * steps, 3))
        thumb = page.locator(".st-key-th_threshold input").first
        await thumb.focus()
        t0 = time.perf_counter()
        for _ in range(steps):
            await page.keyboard.press("ArrowRight")
        await page.wait_for_function(
            "t => { const e = document.querySelector('.st-key-th_operating'); return e && e.innerText.includes(t); }",
            arg=f"at threshold {expected:.3f}", timeout=ACTION_TIMEOUT_MS)
        await _idle(page)
        lat["threshold"].append(time.perf_counter() - t0)
        got = float(re.search(r"at threshold ([0-9.]+)", await op.inner_text()).group(1))
        if got != pytest.approx(expected, abs=1e-9):
            problems.append(f"session {s}: threshold shows {got}, expected {expected}")

        # Attack: FGSM on this session's image.
        step = "attack"
        await _goto(page, "Attack", "attack")
        await _main_has(page, f"current image: authentic #{index} ")
        button = page.get_by_role("button", name="Run FGSM")
        await button.wait_for()
        t0 = time.perf_counter()
        await button.click()
        caption = page.locator('[data-testid="stCaptionContainer"]').filter(has_text="→").first
        await caption.wait_for(timeout=ACTION_TIMEOUT_MS)  # "FGSM: <before> → <after> · 0.05 s · L∞ = …"
        await _idle(page)
        lat["attack"].append(time.perf_counter() - t0)
        head = (await caption.inner_text()).split(" · ")[0].strip()
        if not re.fullmatch(rf"FGSM: {re.escape(want)} → .+", head):
            problems.append(f"session {s}: attack caption {head!r} does not start from {want!r}")
        if not await page.locator("h3").filter(has_text="The attack").count():
            problems.append(f"session {s}: no outcome sentence after the attack")
        if f"original, authentic #{index}: " not in await page.locator('[data-testid="stMain"]').inner_text():
            problems.append(f"session {s}: attack page lost its image #{index}")
        n = await page.locator('[data-testid="stException"]').count()
        if n:
            problems.append(f"session {s}: {n} exception element(s)")
        errs = [t for t in await page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
                if not any(v in t for v in ("by layer", "Not detected", "Overall: "))]  # verdicts, not errors
        if errs:
            problems.append(f"session {s}: error messages {errs}")
    except Exception as e:  # noqa: BLE001 - every failure is a finding of this session
        try:  # what the page showed, for the failure message
            shown = (await page.locator('[data-testid="stMain"]').inner_text(timeout=5000))[-600:]
        except Exception:  # noqa: BLE001
            shown = "?"
        problems.append(f"session {s} at {step}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                        f"; the page showed …{shown!r}")
    finally:
        await ctx.close()


async def _drive(url: str, truth: dict) -> tuple[dict, list]:
    from playwright.async_api import async_playwright

    lat: dict[str, list[float]] = {"inspect": [], "threshold": [], "attack": []}
    problems: list[str] = []
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=str(CHROMIUM), args=browser.CHROMIUM_ARGS)
        try:
            await asyncio.gather(*[_session(chromium, url, s, truth, lat, problems) for s in range(SESSIONS)])
        finally:
            await chromium.close()
    return lat, problems


def _pct(xs: list[float]) -> dict:
    a = np.asarray(xs) * 1000
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p95_ms": round(float(np.percentile(a, 95)), 1), "max_ms": round(float(a.max()), 1)}


def test_concurrent_browser_sessions(tiny_run, tmp_path):
    from core.evaluation.rundata import RunData

    e = RunData(tiny_run, verify=False).evalset("authentic")
    truth = {"predicted": np.asarray(e["predicted"]),
             "classes": json.loads((tiny_run / "classes.json").read_text())}
    assert len(truth["predicted"]) > SESSIONS
    t0 = time.perf_counter()
    log = tmp_path / "server.log"
    with serve(tiny_run.parent, log_to=log) as url:
        load_before = os.getloadavg()
        lat, problems = asyncio.run(_drive(url, truth))
        load_after = os.getloadavg()
    wall = time.perf_counter() - t0

    assert not problems, "\n".join(problems) + "\nthe server's log ends:\n" + log.read_text(errors="replace")[-4000:]
    assert all(len(v) == SESSIONS for v in lat.values()), {k: len(v) for k, v in lat.items()}
    stats = {k: _pct(v) for k, v in lat.items()}
    result = {"sessions": SESSIONS, "run": "tests/conftest.py tiny run", "browser": "Debian Chromium, 1 browser, "
              f"{SESSIONS} contexts (Playwright async)", "cpus": os.cpu_count(),
              "loadavg_1_5_15_before": [round(x, 2) for x in load_before],
              "loadavg_1_5_15_after": [round(x, 2) for x in load_after], "wall_s": round(wall, 1),
              "errors": 0, "cross_talk": 0, "latency": stats,
              "command": f"KNNGUARD_LOAD_SESSIONS={SESSIONS} .venv/bin/python -m pytest tests/system/test_load.py -q -s"}
    out = Path(OUT) if OUT else tmp_path / "load_browser.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\n{SESSIONS} sessions in {wall:.1f} s, load average {load_after[0]:.2f} (1 min) on {os.cpu_count()} CPUs")
    for k, v in stats.items():
        print(f"  {k:9s} p50 {v['p50_ms']:8.1f} ms  p95 {v['p95_ms']:8.1f} ms  max {v['max_ms']:8.1f} ms")
