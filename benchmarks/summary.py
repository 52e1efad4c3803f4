"""Render benchmark results: :func:`section` is the one rendering of each result, :func:`publish` writes a result
and prints it, and the command below writes ``benchmarks/README.md`` from ``benchmarks/results/*.json``.

    python -m benchmarks.summary                 # -> benchmarks/README.md
    python -m benchmarks.summary --print         # to stdout instead
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks import _common as C

ORDER = ("knn_search", "inspect_latency", "precompute", "scale", "app", "app_latency", "first_page", "load",
         "load_post_script_gc", "determinism")
COMMANDS = {
    "knn_search": "python -m benchmarks.knn_search",
    "inspect_latency": "python -m benchmarks.inspect_latency",
    "precompute": "python -m benchmarks.precompute --rerun neighbours --train-steps 30",
    "scale": "python -m benchmarks.scale",
    "app": "python -m benchmarks.app",
    "app_latency": "python -m benchmarks.app_latency",
    "first_page": "python -m benchmarks.first_page",
    "load": "python -m benchmarks.load",
    "load_post_script_gc": "python -m benchmarks.load --post-script-gc",
    "determinism": "python -m benchmarks.determinism",
}


def _f(v: Any, fmt: str = ".3g") -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        if v != v:
            return "nan"
        return format(v, ".0f") if abs(v) >= 1000 else format(v, fmt)
    return str(v)


def _md(rows: list[dict[str, Any]], cols: list[tuple[str, str]], fmt: str = ".3g") -> str:
    """Markdown table of ``rows`` with ``cols`` = [(key, header)]."""
    out = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    out += ["| " + " | ".join(_f(r.get(k), fmt) for k, _ in cols) + " |" for r in rows]
    return "\n".join(out)


def _machine(r: dict[str, Any]) -> str:
    m = r["machine"]
    v = m.get("versions", {})
    return (f"{m['date']}, {m['cores']} cores ({m['cpu_model']}), load average {m['loadavg']} at the start and "
            f"{m.get('loadavg_end')} at the end; numpy {v.get('numpy')}, faiss {v.get('faiss')}, "
            f"torch {v.get('torch')}, scikit-learn {v.get('sklearn')}")


def _targets(r: dict[str, Any]) -> str:
    t = r.get("targets") or {}
    return "Targets: " + ", ".join(f"{k}: {_f(v)}" for k, v in t.items()) if t else ""


def knn_search(r: dict[str, Any]) -> str:
    s = r["settings"]
    a = r["all_layers"]
    lines = [f"{s['n_queries']} queries, k = {s['k']}, run `{s['run']}`" + (f" — NOTE: {r['note']}" if r.get("note") else ""),
             "",
             _md(r["rows"], [("layer", "layer"), ("n", "N"), ("d", "D"), ("qps_ours", "ours q/s"),
                             ("qps_faiss", "faiss as is"), ("qps_sklearn", "sklearn"),
                             ("ours_vs_sklearn", "× sklearn"), ("ours_vs_faiss", "× faiss"),
                             ("gflops_ours", "GFLOP/s"), ("gflops_matmul", "matmul GFLOP/s"),
                             ("frac_of_matmul", "of matmul"), ("qps_select_only", "select-only q/s"),
                             ("recall_ours_vs_sklearn", "recall vs sklearn"), ("loadavg", "load avg")]),
             "",
             "Floor = distance sgemm + the fastest top-k primitive on the same distances (seconds, all queries):",
             "",
             _md(r["rows"], [("layer", "layer"), ("d", "D"), ("ours_s", "ours s"), ("sgemm_s", "sgemm s"),
                             ("select_argpartition_s", "argpartition s"), ("select_torch_topk_s", "torch topk s"),
                             ("select_faiss_heap_s", "faiss heap s"), ("select_best", "fastest"),
                             ("floor_s", "floor s"), ("ours_vs_floor", "ours / floor"),
                             ("ours_vs_sklearn", "× sklearn")]),
             "",
             f"All layers: ours {a['qps']['ours']:.0f} q/s = {a['ours_vs_sklearn']:.2f}× scikit-learn, "
             f"{a['ours_vs_faiss']:.2f}× faiss as is. Square sgemm peak "
             f"{max(r['peak_gflops'].values()):.1f} GFLOP/s.", "", _targets(r)]
    return "\n".join(lines)


def inspect_latency(r: dict[str, Any]) -> str:
    s = r["settings"]
    stages = ["prepare", "forward", "processing", "search", "scoring"]
    return "\n".join([
        f"One image, {len(s['layers'])} layers (dims {s['dims']}), N = {s['n_train']}, k = {s['k']}, "
        f"{s['calls']} calls after warm-up; milliseconds.", "",
        _md(r["rows"], [("variant", "variant"), ("p50_ms", "p50"), ("p95_ms", "p95"),
                        *[(f"{x}_p50", f"{x} p50") for x in stages]]),
        "", _targets(r)])


def precompute(r: dict[str, Any]) -> str:
    b = r["run_built_with"]
    lines = [f"Run `{r['settings']['run']}` as built (stage times from its manifest; built with "
             f"{b['versions'].get('cpu_count', '?')} CPUs, device {b['device']}"
             f"{'' if b['finished'] else ', UNFINISHED'}):", "",
             _md([{**x, "share": f"{x['share']:.0%}"} for x in r["stages"]],
                 [("stage", "stage"), ("seconds", "seconds"), ("share", "share"), ("why", "what")]), "",
             f"Total {r['total_seconds']:.0f} s."]
    if r.get("dominant"):
        d = r["dominant"]
        lines.append(f"Dominant: **{d['stage']}** ({d['share']:.0%}): {d['why']}.")
    tp = r.get("train_probe") or {}
    if "train_projection_s" in tp:
        lines.append(f"Train probe here and now (load {r['machine']['loadavg']}): "
                     f"{tp['step_s_median'] * 1e3:.0f} ms per step of {tp['batch_size']} images × "
                     f"{tp['train_steps']} steps = {tp['train_projection_s']:.0f} s for the train stage; the run "
                     f"would total {r['total_with_train_projection_s']:.0f} s with it.")
    if r.get("rerun"):
        lines.append(f"Re-run here from `{r['settings']['rerun_from']}`: "
                     + ", ".join(f"{k} {x:.1f} s" for k, x in r["rerun"].items()) + ".")
    if r.get("rerun_skipped"):
        lines.append(f"Re-run skipped: {r['rerun_skipped']}.")
    lines += ["", _targets(r)]
    return "\n".join(lines)


def scale(r: dict[str, Any]) -> str:
    s = r["synthetic"]
    lines = [f"Synthetic {s['n']} × {s['d']} float32 (clustered; HNSW on {s['hnsw_n']} rows), k = "
             f"{r['settings']['k']}, recall@k against flat on {s['n_queries']} queries, single-query latency over "
             f"{s['n_single']} queries; {s.get('label_agreement', float('nan')):.0%} of the exact neighbours share the "
             "query's class:", "",
             _md(s["rows"], [("kind", "index"), ("n", "N"), ("params", "parameters"), ("build_s", "build s"),
                             ("memory_mb", "memory MB"), ("single_p50_ms", "1 query p50 ms"),
                             ("single_p95_ms", "p95 ms"), ("batch_qps", "batched q/s"), ("recall", "recall@k"),
                             ("found_k", "found of k"), ("speedup", "× flat (1 query)"), ("loadavg", "load")])]
    m, kind = (s["pq_memory"], "pq") if s.get("pq_memory") else (s.get("ivfpq_memory"), "ivfpq")
    if m:
        lines += ["", f"{kind} at inspect time, {m['layers']} layers each read from its faiss file with float16 vectors "
                      f"memory-mapped, searched {s['n_single']} single queries each: heap +{m['rss_anon_growth_mb']:.0f} MB, "
                      f"mapped pages touched +{m['rss_file_growth_mb']:.0f} MB; index file {m['index_file_mb']:.0f} MB "
                      f"+ float16 file {m['f16_file_mb']:.0f} MB per layer, {m['disk_gb']:.2f} GB on disk for "
                      f"{m['layers']}; resident {m['resident_gb']:.2f} GB (load {m['loadavg']})."]
    if s.get("flat_latency"):
        lines += ["", "Flat single-query latency by database size (what `AUTO_IVF_MIN` trades):", "",
                  _md(s["flat_latency"], [("n", "N"), ("d", "D"), ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"),
                                                   ("batch_qps", "batched q/s")])]
    real = r.get("real")
    if real:
        att = [c for c in real["rows"][0] if c.startswith("eer_")]
        lines += ["", f"Real run `{real['run']}`, layer {real['layer']} ({real['mode']}, {real['n_train']} × "
                      f"{real['d']}), {real['fn']}, k = {real['k']}: EER accuracy with approximate neighbours",
                  "", _md(real["rows"], [("index", "index"), ("build_s", "build s"), ("search_s", "search s"),
                                         ("found_k", "neighbours found"),
                                         ("aggr_eer_acc", "Aggr. EER acc."), ("delta_aggr", "Δ vs exact"),
                                         ("errors_eer_acc", "Errors"), *[(c, c[4:]) for c in att]], fmt=".4g")]
    elif r.get("note"):
        lines.append(f"\nNOTE: {r['note']}")
    if r.get("auto"):
        lines += ["", f"Automatic index choice: {r['auto']}"]
    lines += ["", _targets(r)]
    return "\n".join(lines)


def app(r: dict[str, Any]) -> str:
    lib, e2e = r["library"], r["apptest"]
    parts = [p for p in ("scores", "roc", "rates_at", "densities", "curves", "total", "curves_loop")
             if p in lib["threshold_change"]]  # curves_loop: only in results recorded before the page called core
    rows = [{"change": c.replace("_", " "), **{p: lib[c][p]["p50"] for p in parts},
             "e2e50": e2e.get(c, {}).get("p50"), "e2e95": e2e.get(c, {}).get("p95")}
            for c in ("threshold_change", "k_change")]
    lines = [f"Threshold page, layer {lib['layer']} ({lib['mode']}, {lib['fn']}, k = {lib['k']}), sets "
             f"{lib['set_sizes']}; p50 milliseconds over {r['settings']['changes']} changes (library = the page's "
             "library calls without Streamlit, `total` their sum"
             + ("; `curves loop` = the TPR/FPR curves computed one threshold at a time, as the page first did"
                if "curves_loop" in parts else "") + "; AppTest = the whole script rerun):", "",
             _md(rows, [("change", "change"), *[(p, p.replace("_", " ")) for p in parts],
                        ("e2e50", "AppTest p50"), ("e2e95", "AppTest p95")])]
    if "skipped" in e2e:
        lines.append(f"\nAppTest skipped: {e2e['skipped']}")
    if r.get("pages"):
        prow = [{"page": name, "k50": v.get("k_change", {}).get("p50"), "k95": v.get("k_change", {}).get("p95"),
                 "widget": v.get("widget") or "–", "w50": (v.get("widget_change") or {}).get("p50"),
                 "w95": (v.get("widget_change") or {}).get("p95"), "error": v.get("error", "")}
                for name, v in r["pages"].items()]
        lines += ["", "Every page (AppTest, whole script rerun; ms):", "",
                  _md(prow, [("page", "page"), ("k50", "k change p50"), ("k95", "k change p95"),
                             ("widget", "own widget"), ("w50", "its change p50"), ("w95", "p95"),
                             ("error", "error")])]
    lines += ["", _targets(r)]
    return "\n".join(lines)


def app_latency(r: dict[str, Any]) -> str:
    t = r["targets_ms"]
    rows = [{"path": "threshold change (Threshold page rerun)", **r["threshold_change_ms"],
             "target": t["threshold_change"]},
            {"path": "upload -> inspect (Inspect page rerun)", **r["upload_inspect_ms"], "target": t["upload_inspect"]}]
    return "\n".join([f"Whole-script reruns (AppTest) after {r['settings']['warmup']} warm-up ones, "
                      f"{r['settings']['reruns']} each, defaults {r['settings']['defaults']}; milliseconds:", "",
                      _md(rows, [("path", "path"), ("p50", "p50"), ("p95", "p95"), ("min", "min"),
                                 ("target", "target")]), "",
                      f"Cold first run (imports, model, indexes): {r['cold_first_run_s']:.1f} s."])


def first_page(r: dict[str, Any]) -> str:
    sw = r.get("switches_s") or {}
    if sw and not all(isinstance(v, dict) for v in sw.values()):
        sw = {"0.0": sw}  # a result from before the reading pauses: clicks the moment a page was drawn
    drv = r.get("switches_driver_s") or {}  # the same clicks as Playwright's calls see them (round trips added)
    cols = [(f"switch {p}", f"click in the app ({float(p):g} s read before)") for p in sw]
    cols += [(f"driver {p}", f"the same, driver's view ({float(p):g} s)") for p in drv]
    rows = [{"page": t, **{f"switch {p}": v.get(t) for p, v in sw.items()},
             **{f"driver {p}": v.get(t) for p, v in drv.items()}, "url": u} for t, u in r["pages_s"].items()]
    start = (f"Server start {r['server_start_s']:.2f} s; a run never opened before (empty cache folder, round 0): "
             f"first page {r['first_page_empty_cache_s']:.2f} s. " if "first_page_empty_cache_s" in r else "")
    return "\n".join([
        f"Chromium (Playwright), one user, default run, browser cache {r['browser_cache']}, median of "
        f"{len(r['rounds'])} round(s), each with a new server. {start}A fresh server's first page: "
        f"{r['first_page_s']:.2f} s; a second session: {r['second_session_s']:.2f} s; the floor (a one-heading "
        f"Streamlit page served and opened the same way): {r['floor_s']:.2f} s"
        + (f", with one small plotly chart: {r['plotly_floor_s']:.2f} s" if r.get("plotly_floor_s") else "")
        + (f", with one small Vega-Lite chart: {r['vega_floor_s']:.2f} s" if r.get("vega_floor_s") else "")
        + ". Seconds to each page drawn"
        + (" (a click: from its event to the first check, every 20 ms, that finds the page drawn, in the page's own "
           "clock; the driver's view adds Playwright's round trips)" if drv else "") + ":", "",
        _md(rows, [("page", "page"), *cols, ("url", "its URL in a new tab")]),
        "", _targets(r)])


def load(r: dict[str, Any]) -> str:
    rows = [{"action": a, **v} for a, v in r["latency_ms"].items()]
    lines = [f"{r['sessions']} concurrent sessions x {r['rounds']} round(s) in {r['drive_s']} s, {r['errors']} "
             f"problem(s); load average {r['loadavg_after'][0]} (1 min) at the end. Cold first page (model and "
             f"indexes loaded): {r['cold_open_s']} s; then all sessions in step (one barrier per action); "
             "latency = request sent to the server's `script_finished`, in ms:", "",
             _md(rows, [("action", "action"), ("n", "n"), ("p50", "p50"), ("p95", "p95"), ("max", "max")])]
    if "server_rss_mb" in r:
        m = r["server_rss_mb"]
        lines += ["", f"Server memory (RSS): {m['after_first_page']} MiB after the first page, "
                      f"{m['after_sessions']} MiB after the sessions."]
    lines += [f"- problem: {p}" for p in r["problems"]]
    return "\n".join(lines)


load_post_script_gc = load


def determinism(r: dict[str, Any]) -> str:
    st = r["settings"]
    same = "the same weights" if r["same_across_threads"] else "**other weights**"
    return "\n".join([
        f"The default CNN trained on {st['n_train']} images for {st['epochs']} epoch(s) in a fresh process per "
        f"setting: thread count and core mask give {same}; {r['kernels_changing_weights']} of "
        f"{r['kernels_tried']} other CPU-kernel settings give other weights (another summation order), so a "
        "machine with other instruction sets (AVX-512) trains other weights from the same config.", "",
        _md(r["rows"], [("setting", "setting"), ("sha256", "model.pt sha256 (16 hex)"),
                        ("same_weights", "same weights"), ("test_accuracy", "test accuracy"),
                        ("torch_capability", "torch kernels"),
                        ("torch_threads", "torch threads (training uses its own 2)")], fmt=".4f")])


TITLES = {"knn_search": "kNN search: ours vs scikit-learn and faiss, and the matmul limit",
          "inspect_latency": "One image, all layers (Detector.inspect)",
          "precompute": "Precompute", "scale": "Scale: flat vs IVF vs HNSW", "app": "App: widget changes (Threshold page, every page)",
          "app_latency": "App: a threshold change and an upload's inspect, whole reruns",
          "first_page": "App in a browser: the first page and every page",
          "load": "Load: concurrent app sessions (Streamlit's server, websocket clients)",
          "load_post_script_gc": "Load, with Streamlit's default full gc.collect after every rerun (before the fix)",
          "determinism": "Determinism: trained weights under other threads, cores and CPU kernels"}


def section(name: str, r: dict[str, Any]) -> str:
    """One result as its README section (Markdown: title, command, machine, tables). A result not yet written
    (no ``machine`` block) was measured here and now: this machine's block is used."""
    r = r if "machine" in r else {**r, "machine": {**C.machine(), "loadavg_end": C.loadavg()}}
    out = [f"## {TITLES[name]}", "", f"`{r.get('command') or COMMANDS[name]}`", "", f"Machine: {_machine(r)}.", "",
           globals()[name](r)]
    if b := r.get("before"):
        out += ["", f"Recorded before, by code since removed ({b['code']}, `{b['command']}`, {b['date']}): "
                f"{b['what']}",
                "", _md(b["rows"], [(k, k.replace("_", " ")) for k in b["rows"][0]])]
    return "\n".join(out)


def publish(name: str, result: dict[str, Any], out_dir: str | Path | None = None) -> Path:
    """Write ``result`` (:func:`benchmarks._common.write_result`), print its :func:`section` and the file's path."""
    path = C.write_result(name, result, out_dir)
    print(section(name, json.loads(path.read_text())))
    print(f"-> {path}")
    return path


def render(results: Path = C.RESULTS) -> str:
    """The README text from the result files found in ``results``."""
    out = ["# Benchmarks", "",
           "Generated by `python -m benchmarks.summary` from `benchmarks/results/*.json` (do not edit by hand).", "",
           "Run everything (about 15 minutes on 2 cores) and regenerate this file:", "", "```bash",
           "python -m benchmarks            # all of them, then this summary", "python -m benchmarks --quick    # smoke run, small sizes",
           "```", "",
           "Every comparison is measured in one process, interleaved, best or median of several rounds: these "
           "machines are shared and noisy, so ratios are the figures to read; absolute times move with the load "
           "average recorded beside each table. Figures of comparison code since removed (the code a change "
           "replaced) stay as recorded, under \"Recorded before\" (the result file's `before` block).", ""]
    for name in ORDER:
        p = Path(results) / f"{name}.json"
        if not p.exists():
            out += [f"## {TITLES[name]}", "", f"`{COMMANDS[name]}` — no result yet.", ""]
            continue
        out += [section(name, json.loads(p.read_text())), ""]
    return "\n".join(out).rstrip() + "\n"


def targets(results: Path = C.RESULTS) -> list[str]:
    """One line per target of every result found in ``results``: benchmark, target, yes/no."""
    out = []
    for name in ORDER:
        p = Path(results) / f"{name}.json"
        if p.exists():
            for k, v in (json.loads(p.read_text()).get("targets") or {}).items():
                if isinstance(v, bool):
                    out.append(f"{name}: {k.replace('_', ' ')}: {'yes' if v else 'NO'}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default=str(C.RESULTS))
    p.add_argument("--out", default=str(C.ROOT / "benchmarks" / "README.md"))
    p.add_argument("--print", action="store_true", help="print instead of writing the file")
    a = p.parse_args(argv)
    text = render(Path(a.results))
    if a.print:
        print(text)
    else:
        Path(a.out).write_text(text)
        print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
