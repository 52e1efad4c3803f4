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

