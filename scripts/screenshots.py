"""Drive the app in a real browser (Playwright + Debian's Chromium) and save a full-page screenshot per page.

    .venv/bin/python scripts/screenshots.py                          # runs in data/runs -> docs/screenshots/
    .venv/bin/python scripts/screenshots.py --runs /tmp/apprun --out /tmp/shots
    .venv/bin/python scripts/screenshots.py --runs /tmp/apprun --dark-only     # inspect_dark.png, threshold_dark.png
    .venv/bin/python scripts/screenshots.py --adaptive-only                  # attack_adaptive.png

Besides the tour's pages it shoots Compare and Adaptive attacks and copies the default run's adaptive curve
(``data/runs/fmnist/adaptive/curve.png``, drawn by the precompute) to adaptive_curve.png.

Needs `apt-get install -y chromium` (Playwright's own browser download does not work offline). The server and
browser helpers are in tools/ (tools.app_server, tools.browser); tests/system/test_browser.py runs the same tour on the
tiny test run and asserts what it sees.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a file: make the repository's packages importable

from tools.app_server import serve  # noqa: E402
from tools.browser import (CHROMIUM, URLS, adaptive_switch, browser_page, shoot, tour, wait_idle,  # noqa: E402
                           wait_ready)


def dark(runs: str, out: Path) -> list[Path]:
    """Inspect and Threshold in the dark theme (threshold ticks, lines and ROC in the theme's ink)."""
    with serve(runs, env={"STREAMLIT_THEME_BASE": "dark"}) as url, browser_page() as page:
        page.goto(url + "/")
        wait_ready(page, "Inspect")
        shots = [shoot(page, out, "inspect_dark")]
        page.goto(url + "/threshold")
        wait_ready(page, "Threshold")
        return shots + [shoot(page, out, "threshold_dark")]


def adaptive(runs: str, out: Path) -> Path:
    """The Attack page with "attack the detector too" run on the default image (attack_adaptive.png)."""
    with serve(runs) as url, browser_page() as page:
        page.goto(url + "/attack")
        wait_ready(page, "Attack")
        seen = adaptive_switch(page, out)
    for e in seen.get("exceptions", []):
        print(f"warning: exception shown on {e}", file=sys.stderr)
    return seen["shot"]


def peers_and_adaptive(runs: str, out: Path) -> list[Path]:
    """The Compare and Adaptive attacks pages once their charts are drawn (compare.png, adaptive.png), and the
    default run's guarded-success curve as the adaptive stage drew it (adaptive_curve.png)."""
    shots = []
    with serve(runs) as url, browser_page() as page:
        for title, name in (("Compare", "compare"), ("Adaptive attacks", "adaptive")):
            page.goto(f"{url}/{URLS[title]}")
            wait_ready(page, title)
            page.locator("svg.marks").first.wait_for(timeout=120_000)
            wait_idle(page)
            shots.append(shoot(page, out, name))
    curve = Path(runs) / "fmnist" / "adaptive" / "curve.png"
    if curve.is_file():
        shots.append(Path(shutil.copyfile(curve, out / "adaptive_curve.png")))
    return shots


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default=str(ROOT / "data" / "runs"), help="folder of runs (KNNGUARD_RUNS_DIR)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshots"), help="where the PNGs go")
    ap.add_argument("--attack", default="Iterative targeted FGSM", help="attack title to run on the Attack page")
    ap.add_argument("--target", default="Bag", help="target class name, if the image is not already one "
                                                     "(else the page's random wrong class)")
    ap.add_argument("--dark-only", action="store_true", help="only the dark-theme shots of Inspect and Threshold")
    ap.add_argument("--adaptive-only", action="store_true", help="only the Attack page's adaptive switch")
    args = ap.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"error: {CHROMIUM} missing; install it with `apt-get install -y chromium`", file=sys.stderr)
        return 2
    if args.adaptive_only:
        print(adaptive(args.runs, Path(args.out)))
        return 0
    if not args.dark_only:
        _tour(args)
        print(adaptive(args.runs, Path(args.out)))
        for p in peers_and_adaptive(args.runs, Path(args.out)):
            print(p)
    for p in dark(args.runs, Path(args.out)):
        print(p)
    return 0


def _tour(args: argparse.Namespace) -> None:
    with serve(args.runs) as url, browser_page() as page:
        seen = tour(page, url, Path(args.out), attack=args.attack, target=args.target or None,
                    attack_evalset_image=True)
    for e in seen.get("exceptions", []):
        print(f"warning: exception shown on {e}", file=sys.stderr)
    for p in seen["shots"]:
        print(p)


if __name__ == "__main__":
    raise SystemExit(main())
