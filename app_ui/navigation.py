"""The app's pages: their files (for ``st.switch_page``), the navigation's sections, and ending a page early."""
from __future__ import annotations

#: The navigation: section -> (URL path = page file name, title, icon). The first page is the default one, served
#: at ``/``, and at ``/inspect`` and ``/home`` through hidden aliases (:data:`app_ui.url_state.ALIASES`).
SECTIONS: dict[str, list[tuple[str, str, str]]] = {
    "Image": [("inspect", "Inspect", ":material/search:"), ("attack", "Attack", ":material/bolt:")],
    "Detector": [("threshold", "Threshold", ":material/tune:"), ("layers", "Layers", ":material/stacked_bar_chart:"),
                 ("failures", "Failure cases", ":material/report:"), ("compare", "Compare", ":material/compare_arrows:"),
                 ("adaptive", "Adaptive attacks", ":material/gpp_maybe:")],
    "Run": [("run", "Run", ":material/info:")],
}
#: Page files by URL path, for st.switch_page.
PAGES = {path: f"app_pages/{path}.py" for pages in SECTIONS.values() for path, _, _ in pages}
#: The pathname the default page reserves. Streamlit serves a default page at ``/`` only, yet reserves a pathname
#: for it (by default its file name, which the ``/inspect`` alias needs): this one is never linked.
DEFAULT_RESERVED = "index"


def pages(hidden: list | None = None) -> dict[str, list]:
    """The ``st.navigation`` argument: every page of :data:`SECTIONS` as an ``st.Page`` under its section, the
    ``hidden`` pages (URL aliases) appended to the last section (hidden pages are not drawn)."""
    import streamlit as st

    first = next(iter(SECTIONS.values()))[0][0]
    out = {section: [st.Page(PAGES[path], title=title, icon=icon, default=path == first,
                             url_path=DEFAULT_RESERVED if path == first else path)
                     for path, title, icon in entries]
           for section, entries in SECTIONS.items()}
    out[list(out)[-1]] += list(hidden or [])
    return out


class PageEnd(Exception):
    """Raised by :func:`end_page`; app.py catches it after the page ran."""


def end_page() -> None:
    """End the page here, like ``st.stop()``, but let app.py still write the view into the URL.

    ``st.stop()`` asks the script runner to stop, and every later Streamlit call (the URL write in app.py's
    ``finally`` too) is then dropped: a page that ended early lost its query string."""
    raise PageEnd
