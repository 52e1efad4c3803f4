"""Run every benchmark, each in its own process, then write benchmarks/README.md from the results.

    python -m benchmarks                          # all, on data/runs/fmnist (about 20 minutes on 2 cores)
    python -m benchmarks --quick                  # smoke run: small sizes, figures not comparable
    python -m benchmarks --only knn_search,app    # a subset
    python -m benchmarks --run data/runs/other    # another run

It ends with every target of the result files, yes or no. Each benchmark also runs alone (``python -m benchmarks.<name> --help``). A benchmark that fails is reported and
the others still run; the exit status is 1 if any failed.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

from benchmarks import _common as C
from benchmarks import summary

#: (module, extra arguments of the full run)
BENCHMARKS: list[tuple[str, list[str]]] = [
    ("knn_search", []),
    ("inspect_latency", []),
    ("precompute", ["--rerun", "neighbours", "--train-steps", "30"]),
    ("scale", []),
    ("app", []),
    ("app_latency", []),
    ("first_page", []),
    ("load", []),
    ("determinism", []),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=str(C.DEFAULT_RUN))
    p.add_argument("--out", default=str(C.RESULTS))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", help="comma-separated subset of " + ", ".join(n for n, _ in BENCHMARKS))
    p.add_argument("--no-summary", action="store_true", help="do not rewrite benchmarks/README.md")
    a = p.parse_args(argv)
    only = set(a.only.split(",")) if a.only else None
    if only and only - {n for n, _ in BENCHMARKS}:
        p.error(f"unknown benchmark(s) {sorted(only - {n for n, _ in BENCHMARKS})}")
    failed, times = [], {}
    t_all = time.perf_counter()
    for name, extra in BENCHMARKS:
        if only and name not in only:
            continue
        cmd = [sys.executable, "-m", f"benchmarks.{name}", "--run", a.run, "--out", a.out]
        cmd += ["--quick"] if a.quick else extra
        print(f"\n=== {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=C.ROOT)
        times[name] = time.perf_counter() - t0
        if rc:
            failed.append(name)
            print(f"!!! {name} failed (exit {rc})", flush=True)
    print("\n" + ", ".join(f"{n} {t:.0f} s" for n, t in times.items())
          + f"; total {time.perf_counter() - t_all:.0f} s")
    if not a.no_summary and not a.quick:
        summary.main(["--results", a.out])
    print("\nTargets (from the result files in " + a.out + "):")
    print("\n".join("  " + line for line in summary.targets(a.out)) or "  none recorded")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
