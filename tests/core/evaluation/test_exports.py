"""core.evaluation.exports: every download parses back (csv, PIL, np.load without pickle, json) to the values it was made
from, and the report's HTML carries no HTML of the run.

    .venv/bin/python -m pytest tests/core/evaluation/test_exports.py -q
"""
from __future__ import annotations

import csv
import io
import json
from html.parser import HTMLParser

import numpy as np
import pytest

from core.evaluation import exports, metrics


def _rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def test_scores_csv_has_one_row_per_image_with_scores_and_verdicts():
    sets = {"authentic": {"true": np.array([0, 1]), "predicted": np.array([0, 1])},
            "fgsm": {"true": np.array([1]), "predicted": np.array([0])}}
    scores = {"authentic": {"a": np.array([0.9, 0.2]), "b": np.array([0.5, np.nan])},
              "fgsm": {"a": np.array([0.4]), "b": np.array([0.7])}}
    rows = _rows(exports.scores_csv(sets, scores, {"a": 0.4, "b": 0.6}, ["=cmd()", "Bag"]))
    assert [(r["set"], r["index"]) for r in rows] == [("authentic", "0"), ("authentic", "1"), ("fgsm", "0")]
    assert rows[0]["true"] == "'=cmd()"  # a class name never becomes a spreadsheet formula
    assert [float(r["score_a"]) for r in rows] == [0.9, 0.2, 0.4]
    assert [float(r["score_b"]) for r in rows] == [0.5, 0.0, 0.7]  # NaN counts as 0
    assert [r["verdict_a"] for r in rows] == ["trusted", "rejected", "trusted"]  # score >= threshold
    assert [r["verdict_b"] for r in rows] == ["rejected", "rejected", "trusted"]
    assert rows[2]["predicted"] == "'=cmd()" and rows[2]["true"] == "Bag"


@pytest.mark.parametrize("name", ["T-shirt/top\r=1+1", "Trouser\r=cmd|' /C calc'!A0", "Bag\n@SUM(A1)", "Coat\r\n+1",
                                  "\r-2", "Shirt\r\t=1"])
def test_no_formula_after_a_line_break_in_a_class_name(name):
    """Finding 12 of the security issue: ``_cell`` guarded only a cell's first character and a bare ``\r`` was not
    quoted, so a class name ``"T-shirt/top\r=1+1"`` gave rows that a spreadsheet splitting on ``\r`` starts with a
    formula. Every piece between line breaks, read as a cell by such a reader, starts with no formula lead; the
    usual reader still gets one row per image with the name (guards aside) in it."""
    sets = {"authentic": {"true": np.array([0, 1]), "predicted": np.array([0, 1])}}
    scores = {"authentic": {"a": np.array([0.9, 0.2])}}
    text = exports.scores_csv(sets, scores, {"a": 0.5}, [name, "Bag"])
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        for cell in line.split(","):
            assert cell.lstrip('"')[:1] not in ("=", "+", "-", "@", "\t"), (line, text)
    rows = _rows(text)
    assert len(rows) == 2 and rows[0]["true"].replace("'", "") == name.replace("'", "")
    assert "\r" in rows[0]["true"] or "\n" in rows[0]["true"]


def test_confusion_and_roc_csv_parse_to_the_metrics():
    rng = np.random.default_rng(0)
    pos, neg = rng.random(50), rng.random(40) * 0.7
    at = metrics.rates_at(pos, neg, 0.5)
    conf = {r["quantity"]: float(r["value"]) for r in _rows(exports.confusion_csv(at, 0.5))}
    assert conf["threshold"] == 0.5 and conf["authentic trusted (TP)"] == at["tp"]
    assert conf["negatives rejected (TN)"] == at["tn"] and conf["TPR"] == pytest.approx(at["tpr"])
    r = metrics.roc(pos, neg)
    pts = _rows(exports.roc_csv(r))
    assert len(pts) == len(r.fpr)
    np.testing.assert_array_equal([float(p["fpr"]) for p in pts], r.fpr)
    np.testing.assert_array_equal([float(p["tpr"]) for p in pts], r.tpr)
    np.testing.assert_array_equal([float(p["threshold"]) for p in pts], r.thresholds)


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_image_png_and_npy_round_trip(shape):
    from PIL import Image

    img = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    back = np.asarray(Image.open(io.BytesIO(exports.image_png(img)), formats=["PNG"]))
    np.testing.assert_array_equal(back.reshape(shape), img)
    arr = np.load(io.BytesIO(exports.image_npy(img)), allow_pickle=False)
    assert arr.dtype == np.uint8 and arr.shape == shape and (arr == img).all()
    with pytest.raises(ValueError):
        exports.image_png(img.astype(np.float32))


def test_params_json_takes_numpy_values():
    got = json.loads(exports.params_json({"eps": np.float32(0.25), "steps": np.int64(10), "target": None,
                                          "x": np.arange(3)}))
    assert got == {"eps": 0.25, "steps": 10, "target": None, "x": [0, 1, 2]}


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, a) for a in attrs]


def test_report_html_renders_markdown_and_escapes_the_runs_html():
    md = ("# Report `x` <script>alert(1)</script>\n\nSome **bold** and *em* text\nwrapped.\n\n"
          "| attack | rate |\n|---|---|\n| <img src=x onerror=alert(1)> | **9.5** |\n\n"
          "- one [link](javascript:alert(1))\n- two <b>x</b>\n\n<iframe src='//evil'></iframe>\n")
    page = exports.report_html(md, title="run <x>")
    p = _Tags()
    p.feed(page)
    allowed = {"html", "head", "meta", "title", "style", "body", "h1", "p", "strong", "em", "code", "table",
               "thead", "tbody", "tr", "th", "td", "ul", "li"}
    assert set(p.tags) <= allowed, set(p.tags) - allowed
    assert {a for a in p.attrs if a[0] != "meta" and a[0] != "html"} == set()  # no attribute from the run
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;iframe" in page
    assert "<h1>Report <code>x</code>" in page and "<strong>bold</strong>" in page and "<em>em</em>" in page
    assert p.tags.count("tr") == 2 and p.tags.count("li") == 2 and "<title>run &lt;x&gt;</title>" in page


def test_scores_csv_follows_the_strict_rule_at_a_tie():
    sets = {"s": {"true": np.array([0, 1]), "predicted": np.array([0, 1])}}
    scores = {"s": {"a": np.array([0.5, 0.7])}}
    loose = _rows(exports.scores_csv(sets, scores, {"a": 0.5}, ["A", "B"]))
    strict = _rows(exports.scores_csv(sets, scores, {"a": 0.5}, ["A", "B"], strict=True))
    assert [r["verdict_a"] for r in loose] == ["trusted", "trusted"]
    assert [r["verdict_a"] for r in strict] == ["rejected", "trusted"]


def test_a_long_line_of_spaces_costs_no_backtracking():
    """Finding 8 of the security issue: the table-rule regex backtracked cubically, so a 2 400-character line in a
    run's report.md held the GIL for 15 s (every user's page waited); a 20 000-character one took hours. Now a plain
    scan (linear), and lines are cut at ``MAX_LINE``. The bound below is over 1000 times what it takes here."""
    import time

    md = "| a | b |\n" + " " * 20_000 + "x\n\n| c | d |\n|" + " " * 20_000 + "-x\n"
    t0 = time.process_time()
    page = exports.report_html(md)
    assert time.process_time() - t0 < 2.0
    assert "<table>" not in page  # neither pair is a table: the line after each header row is no rule


@pytest.mark.parametrize("line", ["|---|---|", " | :-- | --: | ", "---", "|-|", "| - |\t", "|  |", "| x |", "",
                                  ":::", "|--x|", "- item", "|\u2003-|"])
def test_table_rule_is_what_the_old_regex_matched(line):
    import re

    old = bool(re.match(r"^\s*\|?[\s:|-]+\|?\s*$", line)) and "-" in line
    assert exports._is_table_rule(line) == old
