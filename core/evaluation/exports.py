"""Downloads of what the app shows, as bytes or text: per-image scores and verdicts (CSV), confusion counts and ROC
points (CSV), an adversarial image (PNG, ``.npy``) with its parameters (JSON), and the run's report (Markdown,
HTML).

Pure functions over arrays and dicts: no Streamlit, no file access. The HTML of a report escapes every character
of the run's Markdown first and adds only its own fixed tags, so a run's text never reaches the page as HTML.
"""
from __future__ import annotations

import csv
import html
import io
import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from core.evaluation.metrics import Roc, trusted

__all__ = ["scores_csv", "confusion_csv", "roc_csv", "image_png", "image_npy", "params_json", "report_html"]

log = logging.getLogger(__name__)

TRUSTED, REJECTED = "trusted", "rejected"


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """CSV text with RFC 4180's ``\r\n`` row ends: ``csv.writer`` quotes a cell holding a character of its line
    terminator, so every cell holding a ``\r`` or a ``\n`` is quoted (with ``\n`` ends a ``\r`` went out bare, and a
    reader that splits rows on it saw a new row)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


#: A run's text cell starting with one of these is a formula (or its lead) to a spreadsheet (OWASP CSV injection).
_LEADS = "=+-@\t\r"
_AFTER_BREAK = re.compile(r"([\r\n])(?=[=+\-@\t])")


def _cell(text: str) -> str:
    """A run-provided text cell that a spreadsheet will not run as a formula: a ``'`` before a formula lead at its
    start and after every line break inside it (a cell is then quoted by :func:`_csv`, but a reader that splits rows
    on ``\r`` sees what follows a break as the start of a cell)."""
    text = _AFTER_BREAK.sub(r"\1'", text)
    return "'" + text if text[:1] in _LEADS else text


def scores_csv(sets: Mapping[str, Mapping[str, np.ndarray]], scores: Mapping[str, Mapping[str, np.ndarray]],
               thresholds: Mapping[str, float], classes: Sequence[str], *, strict: bool = False) -> str:
    """Per-image scores and verdicts of the evaluation sets, one row per image.

    Parameters
    ----------
    sets : mapping of str to mapping
        Per set name, its ``true`` and ``predicted`` class ids, each (n,).
    scores : mapping of str to mapping of str to ndarray (n,)
        Per set name, per layer, the kNN score of the predicted class (NaN counts as 0, as everywhere).
    thresholds : mapping of str to float
        Per layer, the threshold: ``trusted`` when score >= threshold.
    classes : sequence of str
        Class names by id.
    strict : bool
        Trust ``score > threshold`` instead (the authors' protocol, :func:`core.evaluation.verdict.is_strict`).

    Returns
    -------
    str
        CSV with columns ``set, index, true, predicted, score_<layer>..., verdict_<layer>...``.
    """
    layers = list(thresholds)
    header = ["set", "index", "true", "predicted", *(f"score_{la}" for la in layers),
              *(f"verdict_{la}" for la in layers)]
    rows = []
    for name, e in sets.items():
        sc = {la: np.nan_to_num(np.asarray(scores[name][la], np.float64)) for la in layers}
        ok = {la: trusted(sc[la], thresholds[la], strict=strict) for la in layers}
        for i, (t, p) in enumerate(zip(e["true"], e["predicted"])):
            rows.append([_cell(name), i, _cell(classes[int(t)]), _cell(classes[int(p)]),
                         *(f"{sc[la][i]:.6f}" for la in layers),
                         *(TRUSTED if ok[la][i] else REJECTED for la in layers)])
    return _csv([_cell(h) for h in header], rows)


def confusion_csv(counts: Mapping[str, float], threshold: float) -> str:
    """Confusion counts and rates at ``threshold`` (:func:`core.evaluation.metrics.rates_at`'s dict) as CSV rows
    ``quantity, value``."""
    keys = ("tp", "fn", "fp", "tn", "tpr", "fpr", "accuracy")
    names = {"tp": "authentic trusted (TP)", "fn": "authentic rejected (FN)", "fp": "negatives trusted (FP)",
             "tn": "negatives rejected (TN)", "tpr": "TPR", "fpr": "FPR", "accuracy": "balanced accuracy"}
    return _csv(["quantity", "value"], [["threshold", f"{threshold:.6f}"]]
                + [[names[k], counts[k]] for k in keys if k in counts])


def roc_csv(roc: Roc) -> str:
    """The points of a ROC curve as CSV ``threshold, fpr, tpr`` (thresholds decreasing, the first ``inf``)."""
    return _csv(["threshold", "fpr", "tpr"],
                [[repr(float(t)), repr(float(f)), repr(float(p))] for t, f, p in zip(roc.thresholds, roc.fpr, roc.tpr)])


def image_png(image: np.ndarray) -> bytes:
    """A uint8 image (H, W, C) with C = 1 or 3 as PNG bytes (lossless)."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise ValueError(f"expected a uint8 image (H, W, 1 or 3), got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(buf, "PNG")
    return buf.getvalue()


def image_npy(image: np.ndarray) -> bytes:
    """An array as ``.npy`` bytes (no pickle: loads with ``np.load(..., allow_pickle=False)``)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(image), allow_pickle=False)
    return buf.getvalue()


def _plain(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def params_json(params: Mapping[str, Any]) -> str:
    """Parameters as indented JSON (numpy scalars and arrays as plain numbers and lists)."""
    return json.dumps(dict(params), indent=2, default=_plain, allow_nan=False)


# ------------------------------------------------------------------------------------------- report HTML
_INLINE = [(re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
           (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>"),
           (re.compile(r"(?<![\w*])\*([^*\s][^*]*)\*(?!\w)"), r"<em>\1</em>")]
_BULLET = re.compile(r"^\s*[-*]\s+")
_STYLE = ("body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em;line-height:1.45}"
          "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #999;padding:.25em .6em}"
          "code{background:rgba(127,127,127,.15);padding:0 .2em}")


def _inline(text: str) -> str:
    out = html.escape(text, quote=True)
    for pat, rep in _INLINE:
        out = pat.sub(rep, out)
    return out


#: Longest line of a report rendered as it is (the report's own lines are under 500 characters); a longer one is
#: cut there, so no line of a run's report can cost more than a bounded amount of work.
MAX_LINE = 5000


def _is_table_rule(line: str) -> bool:
    r"""Whether ``line`` is a pipe table's rule (``|---|:--:|``): only ``|``, ``:``, ``-`` and spaces, with a ``-``.

    A plain scan: the regex it replaces, ``^\s*\|?[\s:|-]+\|?\s*$``, backtracked cubically (800 spaces and an
    ``x``: 1.6 s; a 2 400-character line held the GIL 15 s)."""
    return "-" in line and all(c in "|:-" or c.isspace() for c in line)


def _row(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def report_html(markdown: str, *, title: str = "knnguard report") -> str:
    """A standalone HTML page of a run's report Markdown.

    Renders headings (``#``), paragraphs, ``-`` lists, pipe tables and inline code, bold and italics; every
    character of ``markdown`` is HTML-escaped first, so raw HTML, scripts and links in it stay text.

    Parameters
    ----------
    markdown : str
        The run's ``report.md`` (untrusted).
    title : str
        The page title (escaped).

    Returns
    -------
    str
    """
    lines = [line[:MAX_LINE] for line in markdown.splitlines()]
    out: list[str] = []
    para: list[str] = []
    i = 0

    def flush() -> None:
        if para:
            out.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        head = re.match(r"^(#{1,6})\s+(.*)$", line)
        if not line.strip():
            flush()
        elif head:
            flush()
            n = len(head.group(1))
            out.append(f"<h{n}>{_inline(head.group(2))}</h{n}>")
        elif line.lstrip().startswith("|") and i + 1 < len(lines) and _is_table_rule(lines[i + 1]):
            flush()
            rows = [_row(line)]
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_row(lines[i]))
                i += 1
            out.append("<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in rows[0]) + "</tr></thead>"
                       "<tbody>" + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>"
                                           for r in rows[1:]) + "</tbody></table>")
            continue
        elif _BULLET.match(line):
            flush()
            items = []
            while i < len(lines) and _BULLET.match(lines[i]):
                items.append(f"<li>{_inline(_BULLET.sub('', lines[i]))}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        else:
            para.append(line.strip())
        i += 1
    flush()
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
            + "\n".join(out) + "\n</body></html>\n")
