"""Text from a run, made inert before it is rendered: a run folder is untrusted, so its class names, run name,
config values, layer and set names and messages never reach Markdown as markup.

    from app_ui.text import md
    st.markdown(f"### Prediction: {md(classes[pred])}")        # st.markdown, captions, alerts, titles, labels, help

Markdown: every ASCII punctuation character is backslash-escaped (CommonMark renders ``\\X`` as ``X``, so the text
reads the same), line breaks become spaces. Never put ``md()`` text inside a code span (escapes are literal there).
Charts need nothing: a Vega-Lite spec (``app_ui.charts.bars``) carries run text as data values and titles, which
Vega draws as plain text.
"""
from __future__ import annotations

import re
from typing import Any

__all__ = ["md"]

_PUNCT = re.compile(r"([!-/:-@\[-`{-~])")


def md(text: Any) -> str:
    """``str(text)`` as literal Markdown text: ASCII punctuation escaped, line breaks as spaces."""
    s = re.sub(r"[\r\n]+", " ", str(text))
    return _PUNCT.sub(r"\\\1", s)



def md_table(header: list[Any], rows: list[list[Any]], *, align: str | None = None,
             strong: set[tuple[int, int]] = frozenset()) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (each as long as ``header``), every cell through :func:`md` (a
    cell's ``|`` cannot end it early). ``align``: one of ``l``, ``r``, ``c`` per column (default: left);
    ``strong``: (row, column) indices of cells set in bold."""
    align = align or "l" * len(header)
    if len(align) != len(header) or any(len(r) != len(header) for r in rows):
        raise ValueError(f"every row and the alignment need {len(header)} columns")
    rule = {"l": ":--", "r": "--:", "c": ":-:"}

    def cell(i: int, j: int, c: Any) -> str:
        text = md(c)
        return f"**{text}**" if (i, j) in strong and text else text

    lines = ["| " + " | ".join(md(h) for h in header) + " |", "|" + "|".join(rule[a] for a in align) + "|"]
    lines += ["| " + " | ".join(cell(i, j, c) for j, c in enumerate(r)) + " |" for i, r in enumerate(rows)]
    return "\n".join(lines)


def md_records(records: list[dict[str, Any]], *, formats: dict[str, str] | None = None,
               placeholder: str = "–") -> str:
    """:func:`md_table` of dict rows (columns: the first record's keys), None and NaN shown as ``placeholder``,
    ``formats`` a ``str.format`` pattern per column (e.g. ``{"seconds": "{:.1f}"}``); columns of numbers only are
    aligned right. Empty ``records``: an empty string."""
    if not records:
        return ""
    header = list(records[0])
    formats = formats or {}

    def missing(v: Any) -> bool:
        return v is None or (isinstance(v, float) and v != v)

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    def text(col: str, v: Any) -> Any:
        if missing(v):
            return placeholder
        try:
            return formats[col].format(v) if col in formats else v
        except (TypeError, ValueError):  # a run's odd value (a string where a number belongs): shown as it is
            return v

    align = "".join("r" if all(number(r.get(c)) for r in records if not missing(r.get(c))) and
                    any(not missing(r.get(c)) for r in records) else "l" for c in header)
    return md_table(header, [[text(c, r.get(c)) for c in header] for r in records], align=align)
