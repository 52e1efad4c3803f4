"""Helpers of the app's AppTest tests: a session on a runs folder, and readers of what a page drew (Markdown,
tables, Vega-Lite specs and their rows)."""
from __future__ import annotations

import pytest

pytest.importorskip("streamlit")
import io
import json
import re

import numpy as np
from streamlit.testing.v1 import AppTest  # noqa: E402

from tests.conftest import ROOT

TIMEOUT = 120  # seconds per script run (the first one loads torch, the model and the indexes)


PAGES = {"inspect": "app_pages/inspect.py", "attack": "app_pages/attack.py",
         "threshold": "app_pages/threshold.py", "layers": "app_pages/layers.py",
         "failures": "app_pages/failures.py", "run": "app_pages/run.py"}


def _app(runs_dir, monkeypatch) -> AppTest:
    monkeypatch.setenv("KNNGUARD_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.run()
    return at


def _ok(at: AppTest) -> AppTest:
    assert not at.exception, [e.value for e in at.exception]
    return at


def _markdown(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown]


def _cells(line: str) -> list[str]:
    """The cells of one Markdown table row, split at unescaped ``|`` and unescaped (``\\X`` -> ``X``)."""
    cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [re.sub(r"\\(.)", r"\1", c.strip()) for c in cells]


def _md_tables(at: AppTest) -> list[tuple[list[str], list[dict[str, str]]]]:
    """Every Markdown table of the page, as (header, rows of cell texts)."""
    out = []
    for body in _markdown(at):
        lines = body.strip().splitlines()
        if len(lines) >= 2 and lines[0].startswith("| ") and re.fullmatch(r"\|(:?-+:?\|)+", lines[1]):
            header = _cells(lines[0])
            out.append((header, [dict(zip(header, _cells(r), strict=True)) for r in lines[2:]]))
    return out


def _md_table(at: AppTest, column: str) -> list[dict[str, str]]:
    """The rows of the page's first Markdown table with a column named ``column``, as dicts of cell texts."""
    for header, rows in _md_tables(at):
        if column in header:
            return rows
    raise AssertionError(f"no Markdown table with a column {column!r}")


def _vega_element(at: AppTest, key: str):
    """The Vega-Lite chart element that app_ui.charts.bars.show drew in the container keyed ``key`` (the chart's
    proto carries no key; its container's id ends with it)."""
    def find(node, inside: bool):
        proto = getattr(node, "proto", None)
        inside = inside or str(getattr(proto, "id", "") if hasattr(proto, "id") else "").endswith(f"-{key}")
        if inside and getattr(node, "type", "") == "vega_lite_chart":
            return node
        for child in getattr(node, "children", {}).values():
            got = find(child, inside)
            if got is not None:
                return got
        return None

    got = find(at.main, False)
    assert got is not None, f"no Vega-Lite chart with key {key!r}"
    return got


def _vega(at: AppTest, key: str) -> dict:
    """The Vega-Lite spec of the chart that app_ui.charts.bars.show drew under ``key``."""
    return json.loads(_vega_element(at, key).proto.spec)


def _rows_of(element) -> list[dict]:
    """The data rows of a Vega-Lite chart element drawn by charts.show: its first layer's inline data (charts.show
    moves top-level data into the layers; none reaches Streamlit's Arrow conversion)."""
    assert not element.proto.data.data, "top-level chart data: converted to Arrow by Streamlit"
    return json.loads(element.proto.spec)["layer"][0]["data"]["values"]


def _vega_data(at: AppTest, key: str) -> list[dict]:
    """The data rows of the Vega-Lite chart shown under ``key``."""
    return _rows_of(_vega_element(at, key))


def _mark(layer: dict) -> str:
    return layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"]


def _lines(spec: dict) -> dict[str, tuple[list, np.ndarray]]:
    """{series name: (x values, y values)} of a line_chart.lines_spec chart's lines, in drawing order (null y: NaN)."""
    out: dict[str, tuple[list, list]] = {}
    for layer in spec["layer"]:
        if _mark(layer) == "line":
            for r in layer["data"]["values"]:
                xs, ys = out.setdefault(r["series"], ([], []))
                xs.append(r["x"])
                ys.append(np.nan if r["y"] is None else r["y"])
    return {k: (xs, np.array(ys, dtype=float)) for k, (xs, ys) in out.items()}


def _bar_rows(spec: dict) -> list[dict]:
    """The rows of a charts.before_after_spec chart's bars: ``layer, when, score, threshold, verdict, ...``."""
    return next(la["data"]["values"] for la in spec["layer"] if _mark(la) == "bar")


def _vega_rows(at: AppTest, title_fragment: str = "per layer") -> list[dict]:
    """The data rows of the Vega-Lite chart whose title contains ``title_fragment``."""
    charts = [c for c in at.get("vega_lite_chart")
              if title_fragment in json.loads(c.proto.spec).get("title", {}).get("text", "")]
    assert charts, f"no Vega-Lite chart titled with {title_fragment!r}"
    return _rows_of(charts[0])


def _png(size=(40, 30), color=(200, 200, 200)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- Threshold
def _threshold_scores(truth) -> tuple[np.ndarray, np.ndarray]:
    data, layer = truth["data"], truth["best_layer"]
    args = (layer, truth["mode"], truth["fn"], truth["k"])
    pos = data.positives(*args)
    neg = np.concatenate([data.scores(a, *args) for a in truth["attacks"]])
    return pos, neg


def _counts(at: AppTest) -> list[int]:
    """The Threshold page's confusion counts: [tp, fn, fp, tn]."""
    rows = _md_table(at, "")
    return [int(v) for r in rows for k, v in r.items() if k]


def _validation_threshold(truth, layer=None) -> float:
    from core.evaluation.verdict import validation_thresholds

    return validation_thresholds(truth["data"], truth["mode"], truth["fn"], truth["k"])[layer or truth["best_layer"]]


#: A column only each page's table has (the pages' tables are Markdown: no key reaches AppTest).
FRAMES = {"run_findings": "verdict", "run_reversals": "difference (points)", "run_attacks": "EER accuracy % (oracle)"}


def _frame(at: AppTest, key: str) -> list[dict[str, str]]:
    """The rows of the table of ``key`` (:data:`FRAMES`): the first one holding its column (run_reversals: with no
    verdict)."""
    col = FRAMES[key]
    tables = [rows for header, rows in _md_tables(at)
              if col in header and (key != "run_reversals" or "verdict" not in header)]
    assert tables, f"no table {key!r}"
    return tables[0]


def _tpr_on_test(at: AppTest) -> str:
    """The Threshold page's line of test-split figures (TPR and the pooled detection rate, with intervals)."""
    return next(m for m in _markdown(at) if m.startswith("**TPR on test**"))
