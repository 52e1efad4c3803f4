"""Text from a run, made inert before it is rendered: a run folder is untrusted, so its class names, run name,
config values, layer and set names and messages never reach Markdown as markup.

    from app_pages._text import md
    st.markdown(f"### Prediction: {md(classes[pred])}")        # st.markdown, captions, alerts, titles, labels, help

Markdown: every ASCII punctuation character is backslash-escaped (CommonMark renders ``\\X`` as ``X``, so the text
reads the same), line breaks become spaces. Never put ``md()`` text inside a code span (escapes are literal there).
Charts need nothing: a Vega-Lite spec (``app_pages.charts``) carries run text as data values and titles, which
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



def md_table(header: list[Any], rows: list[list[Any]], *, align: str | None = None) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (each as long as ``header``), every cell through :func:`md` (a
    cell's ``|`` cannot end it early). ``align``: one of ``l``, ``r``, ``c`` per column (default: left)."""
    align = align or "l" * len(header)
    if len(align) != len(header) or any(len(r) != len(header) for r in rows):
        raise ValueError(f"every row and the alignment need {len(header)} columns")
    rule = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = ["| " + " | ".join(md(h) for h in header) + " |", "|" + "|".join(rule[a] for a in align) + "|"]
    lines += ["| " + " | ".join(md(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
