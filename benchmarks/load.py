"""Load: N concurrent app sessions against ``streamlit run app.py`` through Inspect, Threshold and Attack.

    python -m benchmarks.load                         # 20 sessions on data/runs/fmnist
    python -m benchmarks.load --sessions 40 --rounds 3 --run /tmp/runs/tiny
    python -m benchmarks.load --post-script-gc        # Streamlit's default full GC after each rerun

Each session (:mod:`tools.st_client`, Streamlit's websocket protocol) opens the app, inspects its own image,
moves the threshold its own number of steps and runs FGSM with its own eps, all sessions in step (a barrier per
action); every answer is checked against what that session asked for, so cross-talk is a problem. Latency =
request sent -> the server's ``script_finished``. Exit status 1 on any problem; result in
``benchmarks/results/load.json``.
"""
from __future__ import annotations

import asyncio
import json
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

ACTIONS = ("open", "inspect", "page", "threshold", "attack")
_VERDICTS = ("by layer", "Not detected", "Overall:")  # error boxes that are detection verdicts, not failures


def truth_of(run: str | Path) -> dict[str, Any]:
    """The stored prediction of every authentic evaluation image of ``run`` and its class names."""
    from core.evaluation.rundata import RunData

    e = RunData(run, verify=False).evalset("authentic")
    return {"predicted": [int(p) for p in np.asarray(e["predicted"])],
            "classes": json.loads((Path(run) / "classes.json").read_text())}


async def _session(url: str, s: int, n: int, rounds: int, truth: dict, gate: asyncio.Barrier,
                   lat: dict[str, list[float]], problems: list[str], timeout: float) -> None:
    action = "open"

    def check(name: str, run) -> Any:
        nonlocal action
        action = name
        lat[name].append(run.seconds)
        for e in run.errors():
            if not any(v in e for v in _VERDICTS):
                expect(False, e)
        return run

    def expect(ok: bool, what: str) -> None:
        if not ok:
            problems.append(f"session {s}, {action}: {what}")

    async def step(name: str, request) -> Any:
        await gate.wait()
        return check(name, await request)

    try:
        await gate.wait()
        async with Session.open(url, timeout=timeout) as ses:
            expect("Prediction:" in check("open", ses.last).text(), "no prediction on the first page")
            for r in range(rounds):
                index = 1 + (s + n * r) % (len(truth["predicted"]) - 1)  # 0 is every session's default image
                want = truth["classes"][truth["predicted"][index]]
                if r:
                    await step("page", ses.goto("", timeout=timeout))
                text = (await step("inspect", ses.rerun(ses.set_int("inspect_index", index), timeout=timeout))).text()
                expect(f"authentic #{index} " in text, f"asked for image #{index}, the page shows another")
                shown = re.findall(r"^#+ Prediction: (.+)$", text, re.M)
                expect(shown == [want], f"image #{index}: prediction {shown}, stored {want!r}")

                before = (await step("page", ses.goto("threshold", timeout=timeout))).value("th_threshold")[0]
                th = min(1.0, round(before + 0.001 * (3 + s + r), 3))
                run = await step("threshold", ses.rerun(ses.set_slider("th_threshold", th), timeout=timeout))
                got = re.findall(r"at threshold \**([0-9.]+)", run.text_of("th_operating"))
                expect(got == [f"{th:.3f}"], f"threshold shows {got}, this session set {th:.3f}")

                run = await step("page", ses.goto("attack", timeout=timeout))
                expect(re.search(rf"current image: authentic #{index}\b", run.text(), re.I) is not None,
                       f"attack page lost image #{index}")
                eps = 8 + 3 * s  # this session's own budget (x/255): its result must show it
                text = (await step("attack", ses.rerun(ses.set_slider("atk_fgsm_eps", round(eps / 255, 3)),
                                                       ses.click("atk_run"), timeout=timeout))).text()
                heads = [h.split(" · ")[0] for h in re.findall(r"^(FGSM[^\n]*→[^\n]*)$", text, re.M)]
                expect(len(heads) == 1 and re.match(rf"FGSM[^:]*: {re.escape(want)} → .+", heads[0]) is not None,
                       f"attack result {heads} does not start from image #{index}'s {want!r}")
                linf = [int(x) for x in re.findall(r"L∞ = [0-9.]+ \(([0-9]+)/255\)", text)]
                expect(len(linf) == 1 and abs(linf[0] - eps) <= 1,
                       f"attack result has L∞ {linf}/255, this session asked for eps {eps}/255")
    except asyncio.BrokenBarrierError:
        expect(False, "stopped: another session failed first")
    except Exception as e:  # noqa: BLE001 - every failure is a finding of this session
        expect(False, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        await gate.abort()  # the others would wait for this session at the next barrier forever


async def _drive(url: str, pid: int, sessions: int, truth: dict, rounds: int, timeout: float) -> dict[str, Any]:
    async with Session.open(url, timeout=timeout) as first:  # one user first: the server loads model and indexes
        if errors := first.last.errors():
            raise RuntimeError(f"the app's first page shows errors: {errors}")
    rss, t0 = _rss_mb(pid), time.perf_counter()
    lat: dict[str, list[float]] = {a: [] for a in ACTIONS}
    problems: list[str] = []
    gate = asyncio.Barrier(sessions)
    await asyncio.gather(*[_session(url, s, sessions, rounds, truth, gate, lat, problems, timeout)
                           for s in range(sessions)])
    return {"drive_s": round(time.perf_counter() - t0, 1), "cold_open_s": round(first.last.seconds, 2),
            "server_rss_mb": {"after_first_page": rss, "after_sessions": _rss_mb(pid)}, "problems": problems,
            "errors": len(problems), "latency_ms": {a: {"n": len(v), **_ms(v)} for a, v in lat.items()}}


def _ms(v: list[float]) -> dict[str, float]:
    return {**{k: round(x, 1) for k, x in C.percentiles(v).items()}, "max": round(1e3 * max(v), 1)} if v else {}


def _rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (NaN where /proc has none)."""
    try:
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
        return round(int(line.split()[1]) / 1024, 1)
    except (OSError, StopIteration):
        return float("nan")


def measure(run: str | Path, sessions: int, *, rounds: int = 1, timeout: float = 120,
            post_script_gc: bool = False) -> dict[str, Any]:
    """Serve ``run``'s folder and drive ``sessions`` sessions; latencies in ms, problems, memory, load average."""
    run, t0, pids = Path(run).resolve(), time.perf_counter(), []
    truth = truth_of(run)
    if len(truth["predicted"]) < 2:
        raise ValueError("the run's authentic set needs at least 2 images")
    with serve(run.parent, env={"STREAMLIT_RUNNER_POST_SCRIPT_GC": "true"} if post_script_gc else None,
               pids=pids) as url:
        result = asyncio.run(_drive(url, pids[0], sessions, truth, rounds, timeout))
    return {"sessions": sessions, "rounds": rounds, "run": str(run), "post_script_gc": post_script_gc, **result,
            "wall_s": round(time.perf_counter() - t0, 1), "loadavg_after": C.loadavg()}


def main(argv: list[str] | None = None) -> int:
    p = C.parser(__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=20, help="concurrent sessions (default 20)")
    p.add_argument("--rounds", type=int, default=2, help="inspect/threshold/attack rounds per session (default 2)")
    p.add_argument("--timeout", type=float, default=120, help="seconds one action may take (default 120)")
    p.add_argument("--post-script-gc", action="store_true", help="Streamlit's default gc.collect after every rerun")
    a = p.parse_args(argv)
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
