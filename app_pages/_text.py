"""Text from a run, made inert before it is rendered: a run folder is untrusted, so its class names, run name,
config values, layer and set names and messages never reach Markdown or a plotly figure as markup.

    from app_pages._text import md, plotly_text
    st.markdown(f"### Prediction: {md(classes[pred])}")        # st.markdown, captions, alerts, titles, labels, help
    dict(type="bar", x=[plotly_text(la) for la in layers])     # plotly text, names, titles, category labels

Markdown: every ASCII punctuation character is backslash-escaped (CommonMark renders ``\\X`` as ``X``, so the text
reads the same), line breaks become spaces. Never put ``md()`` text inside a code span (escapes are literal there).
Plotly renders a little HTML (``<b>``, ``<a href>``, ``<br>``) in its text: ``plotly_text()`` escapes ``& < >``.
"""
from __future__ import annotations

import html
import re
from typing import Any

__all__ = ["md", "plotly_text"]

_PUNCT = re.compile(r"([!-/:-@\[-`{-~])")


def md(text: Any) -> str:
    """``str(text)`` as literal Markdown text: ASCII punctuation escaped, line breaks as spaces."""
    s = re.sub(r"[\r\n]+", " ", str(text))
    return _PUNCT.sub(r"\\\1", s)


def plotly_text(text: Any) -> str:
    """``str(text)`` as literal plotly text (``&``, ``<``, ``>`` as entities)."""
    return html.escape(str(text), quote=False)
