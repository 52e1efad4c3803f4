"""Load: N concurrent app sessions against ``streamlit run app.py`` through Inspect, Threshold and Attack.

    python -m benchmarks.load                         # 20 sessions on data/runs/fmnist
    python -m benchmarks.load --sessions 40 --rounds 3
    python -m benchmarks.load --run /tmp/runs/tiny    # any finished run
    python -m benchmarks.load --post-script-gc        # Streamlit's default full GC after each rerun (before)

Each session is a browser-like client of Streamlit's own server on loopback (:mod:`tools.st_client`: the
page and health check over HTTP, then the app's websocket protocol, as the frontend speaks it). All sessions do
each action at the same moment (a barrier), each with its own evaluation image, threshold and attack, and every
answer is checked against what that session asked for:

1. **open** the app (Inspect page, first script run of a new session);
2. **inspect** its own image (index ``1 + session + sessions * round``): the page must name that image and show
   its stored prediction;
3. **page** to Threshold, then **threshold**: move the slider its own number of steps; the operating-point box
   must show that session's threshold;
4. **page** to Attack: the page must still hold the session's image; **attack**: run FGSM on it with the
   session's own eps; the result must start from that image's prediction and show that eps as its L∞ (±1/255).

One session opens the app first (``cold_open_s``: the server loads the model and indexes); then all start.
Any exception or error box, a wrong image, threshold or prediction (cross-talk between sessions' state) is a
problem; the exit status is 1 if there is any. Latency per action = request sent -> the server's
``script_finished`` for it (what the server makes a user wait; the browser's own rendering is not in it).
Results go to ``benchmarks/results/load.json``. ``tests/test_load_sessions.py`` runs this with 20 sessions on the
tiny test run.
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _common as C
from benchmarks.summary import publish
from tools.app_server import serve
from tools.st_client import Session

log = logging.getLogger("benchmarks.load")

ACTIONS = ("open", "inspect", "page", "threshold", "attack")
#: Error boxes that are verdicts, not failures ("✗ not trusted by layer ...", "Not detected").
_VERDICTS = ("by layer", "Not detected")


def truth_of(run: str | Path) -> dict[str, Any]:
    """The stored prediction of every authentic evaluation image of ``run`` and its class names."""
    from core.evaluation import RunData

    e = RunData(run, verify=False).evalset("authentic")
    return {"predicted": [int(p) for p in np.asarray(e["predicted"])],
            "classes": json.loads((Path(run) / "classes.json").read_text())}


class _Check:
    """Problems of one session, each prefixed with the session and action."""

    def __init__(self, s: int, problems: list[str]) -> None:
        self.s, self.problems, self.action = s, problems, "open"

    def run(self, action: str, run, lat: dict[str, list[float]]) -> None:
        self.action = action
        lat[action].append(run.seconds)
        for e in run.errors():
            if not any(v in e for v in _VERDICTS):
                self.fail(e)

    def fail(self, what: str) -> None:
        self.problems.append(f"session {self.s}, {self.action}: {what}")

    def expect(self, cond: bool, what: str) -> None:
        if not cond:
            self.fail(what)


async def _session(url: str, s: int, n: int, rounds: int, truth: dict, gate: asyncio.Barrier,
                   lat: dict[str, list[float]], problems: list[str], timeout: float) -> None:
    chk = _Check(s, problems)
    classes, predicted = truth["classes"], truth["predicted"]
    try:
        await gate.wait()
        async with Session.open(url, timeout=timeout) as ses:
            chk.run("open", ses.last, lat)
            chk.expect("Prediction:" in ses.last.text(), "no prediction on the first page")
            for r in range(rounds):
                index = 1 + (s + n * r) % (len(predicted) - 1)  # 0 is every session's default image
                want = classes[predicted[index]]
                if r:
                    await gate.wait()
                    chk.run("page", await ses.goto("", timeout=timeout), lat)

                await gate.wait()
                run = await ses.rerun(ses.set_int("inspect_index", index), timeout=timeout)
                chk.run("inspect", run, lat)
                text = run.text()
                chk.expect(f"authentic #{index} " in text, f"asked for image #{index}, the page shows another")
                shown = re.findall(r"^#+ Prediction: (.+)$", text, re.M)
                chk.expect(shown == [want], f"image #{index}: prediction {shown}, stored {want!r}")

                await gate.wait()
                run = await ses.goto("threshold", timeout=timeout)
                chk.run("page", run, lat)
                before = run.value("th_threshold")[0]
                steps = 3 + s + r
                expected = min(1.0, round(before + 0.001 * steps, 3))
                await gate.wait()
                run = await ses.rerun(ses.set_slider("th_threshold", expected), timeout=timeout)
                chk.run("threshold", run, lat)
                box = run.text_of("th_operating")
                got = re.findall(r"at threshold \**([0-9.]+)", box)
                chk.expect(got == [f"{expected:.3f}"], f"threshold shows {got}, this session set {expected:.3f}")

                await gate.wait()
                run = await ses.goto("attack", timeout=timeout)
                chk.run("page", run, lat)
                chk.expect(f"Current image: authentic #{index} " in run.text(),
                           f"attack page lost image #{index}")
                await gate.wait()
                eps_255 = 8 + 3 * s  # this session's own budget (x/255): its result must show it
                run = await ses.rerun(ses.set_slider("atk_fgsm_eps", round(eps_255 / 255, 3)), ses.click("atk_run"),
                                      timeout=timeout)
                chk.run("attack", run, lat)
                text = run.text()
                heads = re.findall(r"^#+ (FGSM[^\n]*→[^\n]*)$", text, re.M)
                chk.expect(len(heads) == 1 and re.match(rf"FGSM .+: {re.escape(want)} → .+", heads[0]) is not None,
                           f"attack result {heads} does not start from image #{index}'s {want!r}")
                linf = [int(x) for x in re.findall(r"L∞ = [0-9.]+ \(([0-9]+)/255\)", text)]
                chk.expect(len(linf) == 1 and abs(linf[0] - eps_255) <= 1,
                           f"attack result has L∞ {linf}/255, this session asked for eps {eps_255}/255")
    except asyncio.BrokenBarrierError:
        chk.fail("stopped: another session failed first")
    except Exception as e:  # noqa: BLE001 - every failure is a finding of this session
        chk.fail(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        await gate.abort()  # the others would wait for this session at the next barrier forever


async def drive(url: str, sessions: int, truth: dict, *, rounds: int = 1,
                timeout: float = 120) -> tuple[dict[str, list[float]], list[str]]:
    """Run ``sessions`` sessions of ``rounds`` rounds each against the app at ``url``.

    Returns
    -------
    latencies : dict action -> list of seconds
    problems : list of str
        Empty when every answer was right and no page showed an error.
    """
    if len(truth["predicted"]) < 2:
        raise ValueError("the run's authentic set needs at least 2 images")
    lat: dict[str, list[float]] = {a: [] for a in ACTIONS}
    problems: list[str] = []
    gate = asyncio.Barrier(sessions)
    await asyncio.gather(*[_session(url, s, sessions, rounds, truth, gate, lat, problems, timeout)
                           for s in range(sessions)])
    return lat, problems


def _rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (``/proc``; NaN where there is none)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return float("nan")


async def _cold_open(url: str, timeout: float) -> float:
    """Seconds of the first session's first page on a fresh server (detector loading included)."""
    async with Session.open(url, timeout=timeout) as ses:
        if errors := ses.last.errors():
            raise RuntimeError(f"the app's first page shows errors: {errors}")
        return ses.last.seconds


def measure(run: str | Path, sessions: int, *, rounds: int = 1, timeout: float = 120,
            post_script_gc: bool = False) -> dict[str, Any]:
    """Serve ``run``'s folder, drive it, and return the result (latencies in ms, problems, load average).

    ``post_script_gc`` serves with Streamlit's default ``runner.postScriptGC = true`` (a full garbage collection
    after every script run), which ``.streamlit/config.toml`` turns off: the before/after of that setting.
    """
    run = Path(run).resolve()
    truth = truth_of(run)
    t0 = time.perf_counter()
    pids: list[int] = []
    env = {"STREAMLIT_RUNNER_POST_SCRIPT_GC": "true"} if post_script_gc else None
    with serve(run.parent, env=env, pids=pids) as url:
        cold = asyncio.run(_cold_open(url, timeout))  # one user first: the server loads the model and indexes
        rss_before = _rss_mb(pids[0])
        load_before = C.loadavg()
        t1 = time.perf_counter()
        lat, problems = asyncio.run(drive(url, sessions, truth, rounds=rounds, timeout=timeout))
        drive_s = time.perf_counter() - t1
        load_after = C.loadavg()
        rss_after = _rss_mb(pids[0])
    return {
        "sessions": sessions, "rounds": rounds, "run": str(run), "post_script_gc": post_script_gc,
        "client": "tools/st_client.py: Streamlit's websocket protocol, one connection per session, "
                  "all sessions in step (barrier per action)",
        "server": "streamlit run app.py on 127.0.0.1 (tools/app_server.py)",
        "wall_s": round(time.perf_counter() - t0, 1), "drive_s": round(drive_s, 1), "cold_open_s": round(cold, 2),
        "loadavg_before": load_before, "loadavg_after": load_after,
        "server_rss_mb": {"after_first_page": rss_before, "after_sessions": rss_after},
        "problems": problems, "errors": len(problems),
        "latency_ms": {a: {"n": len(v), **({k: round(x, 1) for k, x in C.percentiles(v).items()} if v else {}),
                           **({"max": round(1e3 * max(v), 1)} if v else {})} for a, v in lat.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=20, help="concurrent sessions (default 20)")
    p.add_argument("--rounds", type=int, default=2, help="inspect/threshold/attack rounds per session (default 2)")
    p.add_argument("--timeout", type=float, default=120, help="seconds one action may take (default 120)")
    p.add_argument("--post-script-gc", action="store_true",
                   help="serve with Streamlit's default full gc.collect after every rerun (the setting before)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not C.run_exists(a.run):
        p.error(f"{a.run} is not a finished run: build it with `python -m precompute` first")
    if a.quick:
        a.sessions, a.rounds = min(a.sessions, 4), 1
    result = measure(a.run, a.sessions, rounds=a.rounds, timeout=a.timeout, post_script_gc=a.post_script_gc)
    result["command"] = " ".join(["python -m benchmarks.load", *(argv if argv is not None else sys.argv[1:])])
    publish("load_post_script_gc" if a.post_script_gc else "load", result, a.out)
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
