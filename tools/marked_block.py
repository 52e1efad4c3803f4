r"""A generated block of a Markdown file: the text between a begin and an end marker line.

>>> replace("a\n<!-- x:begin -->\nold\n<!-- x:end -->\nb\n", "<!-- x:begin -->", "<!-- x:end -->", "new\n")
'a\n<!-- x:begin -->\nnew\n<!-- x:end -->\nb\n'
"""
from __future__ import annotations

import re

__all__ = ["replace", "between"]


def _pattern(begin: str, end: str) -> re.Pattern:
    return re.compile(re.escape(begin) + r"\n(.*?)" + re.escape(end), re.S)


def replace(text: str, begin: str, end: str, block: str, *, name: str = "the file") -> str:
    """``text`` with what lies between its one ``begin`` … ``end`` pair replaced by ``block`` (ending in a newline).

    Raises
    ------
    ValueError
        ``text`` has no such pair, or more than one.
    """
    pat = _pattern(begin, end)
    if len(pat.findall(text)) != 1:
        raise ValueError(f"{name} needs exactly one {begin} … {end} block")
    return pat.sub(lambda _: f"{begin}\n{block}{end}", text)


def between(text: str, begin: str, end: str, *, name: str = "the file") -> str:
    """What lies between the first ``begin`` … ``end`` pair of ``text``; ValueError when there is none."""
    m = _pattern(begin, end).search(text)
    if not m:
        raise ValueError(f"{name} has no {begin} … {end} block")
    return m.group(1)
