"""Smoke tests of the benchmarks at toy sizes on the tiny run: each runs and writes a JSON result of the documented
shape. No timing is asserted (the figures are for ``python -m benchmarks``, not for the test suite)."""
from __future__ import annotations

import json

import pytest


def _load(out, name: str) -> dict:
    r = json.loads((out / f"{name}.json").read_text())
    assert r["benchmark"] == name
    m = r["machine"]
    assert m["cores"] >= 1 and m["cpu_model"] and len(m["loadavg"]) == 3 and len(m["loadavg_end"]) == 3
    assert {"numpy", "faiss", "torch"} <= set(m["versions"]) and m["date"]
    return r


def test_knn_search(tiny_run, tmp_path):
    from benchmarks import knn_search

    knn_search.run(str(tiny_run), n_queries=30, k=10, rounds=1, out_dir=str(tmp_path), n_synth=2000,
                   floor_dims=(16,))
    r = _load(tmp_path, "knn_search")
    assert [row["layer"] for row in r["rows"]] == ["conv2", "fc1", "synthetic-16"]
    for row in r["rows"]:
        assert row["nq"] == 30 and row["k"] == 10
        assert all(row[f"qps_{m}"] > 0 for m in knn_search.METHODS)
        assert row["recall_ours_vs_sklearn"] > 0.95  # same neighbours up to ties
        assert 0 < row["frac_of_matmul"] and row["gflops_matmul"] > 0
        assert row["floor_s"] == pytest.approx(row["sgemm_s"] + row[f"select_{row['select_best']}_s"])
        assert row["ours_vs_floor"] == pytest.approx(row["ours_s"] / row["floor_s"]) and len(row["loadavg"]) == 3
    assert set(r["targets"]) == {"every row >=4x sklearn", "every row within 1.5x of the floor"}
    assert r["note"] is None  # real features of the run, not the synthetic fallback


def test_knn_search_synthetic_fallback(tmp_path):
    from benchmarks import knn_search

    knn_search.run(str(tmp_path / "no-run"), n_queries=8, k=5, rounds=1, n_synth=500, out_dir=str(tmp_path),
                   floor_dims=(16, 32))
    r = _load(tmp_path, "knn_search")
    assert "synthetic" in r["note"] and len(r["rows"]) == len(knn_search.SYNTH_DIMS) + 2


def test_inspect_latency(tiny_run, tmp_path):
    from benchmarks import inspect_latency

    inspect_latency.run(str(tiny_run), calls=4, k=10, warmup=1, out_dir=str(tmp_path))
    r = _load(tmp_path, "inspect_latency")
    assert [row["variant"] for row in r["rows"]] == ["ours"]
    v = r["variants"]["ours"]
    assert set(v) == {"total", *inspect_latency.STAGES} and v["total"]["p50"] > 0
    assert v["search"]["p50"] > 0 and v["forward"]["p50"] > 0
    assert r["settings"]["layers"] == ["conv2", "fc1"] and r["settings"]["k"] == 10


def test_precompute(tiny_run, tmp_path):
    from benchmarks import precompute

    before = (tiny_run / "manifest.json").read_text()
    precompute.run(str(tiny_run), rerun_from="report", train_steps=2, out_dir=str(tmp_path))
    r = _load(tmp_path, "precompute")
    assert (tiny_run / "manifest.json").read_text() == before  # the re-run works on a copy
    names = [s["stage"] for s in r["stages"]]
    assert names[:2] == ["data", "train"] and "neighbours" in names
    assert r["dominant"]["stage"] in names and r["run_built_with"]["finished"]
    assert r["total_seconds"] == pytest.approx(sum(s["seconds"] for s in r["stages"]))
    assert r["rerun"]["report"] > 0 and r["rerun"]["total"] >= r["rerun"]["report"]
    tp = r["train_probe"]
    assert tp["steps"] == 2 and tp["train_projection_s"] == pytest.approx(tp["step_s_median"] * tp["train_steps"])


def test_scale(tiny_run, tmp_path):
    from benchmarks import scale

    scale.run(str(tiny_run), n=3000, d=16, k=10, n_queries=5, n_single=2, hnsw_n=1000, nlists=(16,), nprobes=(4,),
              real_nprobes=(4,), flat_sizes=(1000,), out_dir=str(tmp_path))
    r = _load(tmp_path, "scale")
    kinds = [row["kind"] for row in r["synthetic"]["rows"]]
    assert kinds[0] == "flat" and set(kinds) == {"flat", "ivf", "hnsw", "ivfpq", "pq"}
    assert {row["threads"] for row in r["synthetic"]["rows"] if row["kind"] == "pq"} >= {1}
    assert all(0 <= row["recall"] <= 1 for row in r["synthetic"]["rows"])
    assert r["synthetic"]["rows"][0]["recall"] == 1.0 and r["synthetic"]["flat_latency"][0]["n"] == 1000
    real = r["real"]
    assert real["layer"] in ("conv2", "fc1") and real["rows"][0]["index"].startswith("flat")
    assert {row["index"].split()[0] for row in real["rows"]} == {"flat", "ivf", "hnsw", "ivfpq", "pq"}
    assert any(t.startswith("pq recall") for t in r["targets"]) and "pq EER shift < 0.5 point" in r["targets"]
    assert all(0 <= row["aggr_eer_acc"] <= 1 for row in real["rows"])


def test_app_library(tiny_run, tmp_path):
    from benchmarks import app

    app.run(str(tiny_run), changes=2, with_apptest=False, out_dir=str(tmp_path))
    r = _load(tmp_path, "app")
    for change in ("threshold_change", "k_change"):
        assert {"scores", "roc", "densities", "curves", "total"} <= set(r["library"][change])
    assert r["apptest"] == {"skipped": "not asked"}


def test_app_every_page_answers_widget_changes(tiny_run):
    from app_ui.navigation import PAGES
    from benchmarks import app

    pages = app.every_page(str(tiny_run), changes=1)
    assert set(pages) == set(PAGES)
    for name, v in pages.items():
        assert "error" not in v and not v["errors"], (name, v)
        assert v["k_change"]["p50"] > 0
        assert (v["widget_change"] is not None) == (name in app.PAGE_WIDGETS), name


def test_summary_renders_every_result(tiny_run, tmp_path):
    from benchmarks import app, knn_search, summary

    knn_search.run(str(tiny_run), n_queries=10, k=5, rounds=1, out_dir=str(tmp_path))
    app.run(str(tiny_run), changes=1, with_apptest=False, out_dir=str(tmp_path))
    text = summary.render(tmp_path)
    assert "python -m benchmarks" in text and "× sklearn" in text and "Threshold page" in text
    assert "no result yet" in text  # the benchmarks not run here


def test_load_cli_writes_a_result_the_summary_renders(tiny_run, tmp_path):
    from benchmarks import load, summary

    assert load.main(["--run", str(tiny_run), "--sessions", "2", "--rounds", "1", "--out", str(tmp_path)]) == 0
    r = _load(tmp_path, "load")
    assert r["sessions"] == 2 and r["errors"] == 0 and r["latency_ms"]["attack"]["n"] == 2
    assert 100 < r["server_rss_mb"]["after_first_page"] <= r["server_rss_mb"]["after_sessions"] + 50
    text = summary.render(tmp_path)
    assert "2 concurrent sessions x 1 round(s)" in text and "| attack | 2 |" in text


def test_precompute_rerun_refuses_a_run_being_rebuilt(tiny_run_copy, tmp_path):
    """A run whose earlier stages are not done (rebuilt meanwhile) is not re-run: that would redo them too."""
    from benchmarks import precompute
    from core.runs.folder import RunDir

    RunDir(tiny_run_copy).invalidate(["evalsets"])
    with pytest.raises(RuntimeError, match="evalsets"):
        precompute.rerun(tiny_run_copy, "neighbours")
    r = precompute.run(str(tiny_run_copy), rerun_from="neighbours", out_dir=str(tmp_path))
    assert "evalsets" in r["rerun_skipped"] and not r["run_built_with"]["finished"]


def test_app_latency(tiny_run, tmp_path, monkeypatch):
    from benchmarks import app_latency, summary

    monkeypatch.setenv("KNNGUARD_RUNS_DIR", str(tiny_run.parent))  # restored after the test
    app_latency.run(tiny_run, reruns=2, warmup=1, out_dir=str(tmp_path))
    r = _load(tmp_path, "app_latency")
    assert r["threshold_change_ms"]["p50"] > 0 and r["upload_inspect_ms"]["p50"] > 0
    assert "upload -> inspect" in summary.section("app_latency", r)


def test_a_new_result_keeps_the_recorded_before_block(tmp_path, capsys):
    """Figures of removed comparison code live in the result file's ``before`` block: a fresh result written over
    it keeps them, and the one rendering of the result shows them."""
    from benchmarks import summary

    before = {"date": "2026-01-01", "command": "python -m benchmarks.app_latency --old", "code": "x.py at abc",
              "what": "the old way.", "rows": [{"variant": "old", "p50_ms": 12.5}]}
    fig = {"p50": 1.0, "p95": 2.0, "min": 0.5, "mean": 1.0}
    result = {"settings": {"reruns": 1, "warmup": 0, "defaults": "pca/dwknn/k=5"}, "cold_first_run_s": 1.0,
              "threshold_change_ms": fig, "upload_inspect_ms": fig, "targets_ms": {"threshold_change": 300,
                                                                                   "upload_inspect": 100}}
    summary.publish("app_latency", {**result, "before": before}, tmp_path)
    summary.publish("app_latency", result, tmp_path)
    assert _load(tmp_path, "app_latency")["before"] == before
    printed = capsys.readouterr().out.split("-> ")[1]  # what the second publish printed
    assert "Recorded before, by code since removed (x.py at abc" in printed and "| old | 12.5 |" in printed


def test_benchmark_modules_import_no_cycle():
    """The benchmarks' imports of each other (module level or inside functions) form no cycle."""
    import ast

    from benchmarks._common import ROOT

    graph = {}
    for f in (ROOT / "benchmarks").glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("benchmarks"):
                deps |= {f"{node.module}.{a.name}" if node.module == "benchmarks" else node.module
                         for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("benchmarks")}
        graph[f"benchmarks.{f.stem}"] = deps & {f"benchmarks.{g.stem}" for g in (ROOT / "benchmarks").glob("*.py")}

    def visit(m, path):
        assert m not in path, " -> ".join([*path, m])
        for d in graph[m]:
            visit(d, [*path, m])

    for m in graph:
        visit(m, [])
    assert "benchmarks.summary" in graph["benchmarks.knn_search"]  # the scan sees the imports


def test_screenshots_cli_runs_as_a_file():
    """``scripts/screenshots.py`` imports its helpers from tools/ when run as a file (no importlib loader)."""
    import subprocess
    import sys

    from benchmarks._common import ROOT

    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "screenshots.py"), "--help"], cwd="/",
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--runs" in out.stdout, out.stderr


def test_the_first_page_floor_script_is_served(tmp_path):
    """benchmarks.first_page serves its one-heading floor page with tools.app_server.serve(script=...)."""
    import urllib.request

    from streamlit.testing.v1 import AppTest

    from benchmarks.first_page import FLOOR_PAGE, VEGA_FLOOR_PAGE
    from tools.app_server import serve

    for src, chart in ((FLOOR_PAGE, None), (VEGA_FLOOR_PAGE, "vega_lite_chart")):
        floor = tmp_path / "floor.py"
        floor.write_text(src)
        at = AppTest.from_string(src).run()
        assert not at.exception and at.title[0].value == "floor"
        assert chart is None or len(at.get(chart)) == 1
        with serve(tmp_path, script=floor) as url:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=10) as r:
                assert r.status == 200
    with pytest.raises(RuntimeError, match="streamlit exited"):  # the script named is the one run
        with serve(tmp_path, script=tmp_path / "missing.py"):
            pass


def test_every_target_is_listed_yes_or_no_and_the_browser_result_renders(tmp_path):
    """``python -m benchmarks`` ends with :func:`benchmarks.summary.targets`: one line per target of each result."""
    import json

    from benchmarks import summary

    (tmp_path / "knn_search.json").write_text(json.dumps({"targets": {"every row >=4x sklearn": False,
                                                                       "every row within 1.5x of the floor": True}}))
    first = {"pages_s": {"Inspect": 5.5, "Run": 3.7}, "switches_s": {"Inspect": 0.9, "Run": 1.7},
             "rounds": [{}], "browser_cache": "kept", "first_page_s": 11.2, "second_session_s": 5.7,
             "floor_s": 1.2, "plotly_floor_s": 2.9,
             "targets": {"first_page_under_3s": False, "every_page_under_1s": False}}
    (tmp_path / "first_page.json").write_text(json.dumps(first))
    assert summary.targets(tmp_path) == ["knn_search: every row >=4x sklearn: NO",
                                         "knn_search: every row within 1.5x of the floor: yes",
                                         "first_page: first page under 3s: NO",
                                         "first_page: every page under 1s: NO"]
    text = summary.section("first_page", first)
    assert "| Run | 1.7 | 3.7 |" in text and "11.20 s" in text and "one small plotly chart: 2.90 s" in text
    first.update(switches_s={"0.0": {"Inspect": 0.9, "Run": 1.7}, "2.0": {"Inspect": 0.6, "Run": 0.8}},
                 first_page_empty_cache_s=4.1, server_start_s=6.9)  # a reading pause per column
    text = summary.section("first_page", first)
    assert "| Run | 1.7 | 0.8 | 3.7 |" in text and "2 s read before" in text and "first page 4.10 s" in text
    first.update(switches_driver_s={"2.0": {"Inspect": 0.7, "Run": 0.95}})  # the clicks as the driver saw them
    text = summary.section("first_page", first)
    assert "| Run | 1.7 | 0.8 | 0.95 | 3.7 |" in text and "driver's view (2 s)" in text and "own clock" in text
