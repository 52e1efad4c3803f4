"""A browser-like Streamlit client: one app session over the server's own websocket, without a browser.

It speaks the protocol Streamlit's frontend speaks (``/_stcore/stream``, protobuf ``BackMsg`` up, ``ForwardMsg``
down): it loads the page and the health check over HTTP like a browser, opens the websocket with the
``streamlit`` subprotocol and an ``Origin``, asks for script runs with the widget values a user would set, and
collects every element each run sends until ``script_finished``. What it skips is the React rendering, which
runs in the browser, not the server; that is what lets 20 or more sessions share two cores with the server they
load. The real-browser path is tested separately (``tests/system/test_browser.py``, ``tests/system/test_load.py``).

Example
-------
>>> async with Session.open("http://127.0.0.1:8501") as s:              # doctest: +SKIP
...     run = await s.rerun(s.set_int("inspect_index", 7))
...     run.text_of("th_operating"), run.errors(), run.seconds
"""
from __future__ import annotations

import asyncio
import contextlib
import re
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.json_format import MessageToDict

__all__ = ["Session", "RunResult", "ProtocolError"]

#: ``ScriptFinishedStatus`` values that end what a user action asked for (a callback's ``st.rerun`` gives
#: FINISHED_EARLY_FOR_RERUN first and then a fresh run, which is waited for).
_DONE = {"FINISHED_SUCCESSFULLY", "FINISHED_FRAGMENT_RUN_SUCCESSFULLY"}


#: Element types whose payload is data, not text a user reads (figures, tables, media): never decoded.
_NO_TEXT = {"plotly_chart", "vega_lite_chart", "dataframe", "arrow_data_frame", "table", "deck_gl_json_chart",
            "graphviz_chart", "audio", "video", "html", "iframe", "echarts_chart", "bidi_component",
            "component_instance"}


#: A Markdown backslash escape of one ASCII punctuation character.
_MD_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")


class ProtocolError(RuntimeError):
    """The server answered something a browser could not go on from (the app failed to compile, page not
    found); a dropped connection raises ``websockets``' own ``ConnectionClosed``."""


@dataclass
class RunResult:
    """What one script run sent: its elements by delta path and its wall time.

    Attributes
    ----------
    elements : dict tuple -> (element type, protobuf message)
        Each element of the run at its delta path; a later delta at the same path replaces an earlier one, as in
        the browser. :meth:`fields` gives one as a dict.
    blocks : dict tuple -> dict
        The layout blocks (containers, columns) by delta path; a keyed container's ``id`` ends with its key.
    seconds : float
        From sending the request to the last ``script_finished``.
    """

    elements: dict[tuple, tuple[str, Any]] = field(default_factory=dict)
    blocks: dict[tuple, dict] = field(default_factory=dict)
    seconds: float = 0.0

    @staticmethod
    def fields(element: Any) -> dict:
        """One element (protobuf) as a dict, field names as in the ``.proto`` files."""
        return MessageToDict(element, preserving_proto_field_name=True)

    def _element_strings(self, kind: str, element: Any) -> list[str]:
        if kind in _NO_TEXT:
            return []
        return [s for s in self._strings(self.fields(element)) if not s.startswith("$$ID-")]

    def _strings(self, value: Any) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, dict):
            return [s for v in value.values() for s in self._strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in self._strings(v)]
        return []

    def text(self, *, under: tuple = ()) -> str:
        """All strings of the elements (bodies, labels, captions) under a delta path prefix, in path order, with
        Markdown's backslash escapes of punctuation removed (the text a reader sees: the app escapes run text)."""
        keep = sorted(p for p in self.elements if p[: len(under)] == under)
        raw = "\n".join(s for p in keep for s in self._element_strings(*self.elements[p]))
        return _MD_ESCAPE.sub(r"\1", raw)

    def path_of_block(self, key: str) -> tuple:
        """Delta path of the container the app created with ``key=key`` (``st.container(key=...)``)."""
        for path, block in self.blocks.items():
            if str(block.get("id", "")).endswith(f"-{key}"):
                return path
        raise KeyError(f"no container with key {key!r} in this run")

    def text_of(self, key: str) -> str:
        """Text of the elements inside the container ``key``."""
        return self.text(under=self.path_of_block(key))

    def widget(self, key: str) -> tuple[str, dict]:
        """(type, fields) of the widget whose user key is ``key``."""
        for kind, el in self.elements.values():
            if str(getattr(el, "id", "")).endswith(f"-{key}"):
                return kind, self.fields(el)
        raise KeyError(f"no widget with key {key!r} in this run")

    def value(self, key: str) -> list[float]:
        """Current value of the slider ``key`` as the server set it (``value`` when set, else ``default``)."""
        fields = self.widget(key)[1]
        return [float(v) for v in (fields.get("value") if fields.get("set_value") else fields.get("default", []))]

    def errors(self) -> list[str]:
        """Exceptions and error boxes the run showed (what a user would read as something gone wrong)."""
        out = []
        for kind, el in self.elements.values():
            if kind == "exception":
                out.append(f"exception {el.type}: {el.message}")
            elif kind == "alert" and el.format == type(el).Format.Value("ERROR"):
                out.append(f"error: {el.body}")
        return out


class Session:
    """One app session; use :meth:`open`. Not for use from two tasks at once (a browser tab is one user)."""

    def __init__(self, url: str, ws: Any) -> None:
        self.url = url
        self._ws = ws
        self.pages: dict[str, str] = {}  # url path ("" for the default page) -> page script hash
        self._ids: dict[str, str] = {}  # user key -> widget id, from the runs seen so far
        self.page_hash = ""
        self.last: RunResult | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, url: str, *, path: str = "", timeout: float = 120) -> AsyncIterator["Session"]:
        """Load ``url/path`` as a browser does (HTML, health check), open the websocket and run the page once.

        The first run is in :attr:`last`.
        """
        import websockets

        def get(p: str) -> None:
            with urllib.request.urlopen(f"{url}/{p}", timeout=timeout) as r:
                r.read()

        await asyncio.to_thread(get, path)
        await asyncio.to_thread(get, "_stcore/health")
        ws_url = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + "/_stcore/stream"
        async with websockets.connect(ws_url, subprotocols=["streamlit"], origin=url, max_size=None,
                                      open_timeout=timeout, ping_interval=None) as ws:
            s = cls(url, ws)
            await s.rerun(page_name=path, timeout=timeout)
            yield s

    # ----------------------------------------------------------------------------------- widget values
    def _id(self, key: str) -> str:
        try:
            return self._ids[key]
        except KeyError:
            raise KeyError(f"no widget with key {key!r} seen yet in this session") from None

    def set_int(self, key: str, value: int):
        """A widget state setting the integer widget ``key`` (``st.number_input`` of ints) to ``value``."""
        from streamlit.proto.WidgetStates_pb2 import WidgetState

        return WidgetState(id=self._id(key), int_value=int(value))

    def set_slider(self, key: str, *values: float):
        """A widget state moving the slider ``key`` to ``values`` (one value, or two for a range)."""
        from streamlit.proto.WidgetStates_pb2 import WidgetState

        w = WidgetState(id=self._id(key))
        w.double_array_value.data.extend(float(v) for v in values)
        return w

    def click(self, key: str):
        """A widget state pressing the button ``key`` (a trigger: true for this one run)."""
        from streamlit.proto.WidgetStates_pb2 import WidgetState

        return WidgetState(id=self._id(key), trigger_value=True)

    # ----------------------------------------------------------------------------------- runs
    async def goto(self, url_path: str, *, timeout: float = 120) -> RunResult:
        """Open another page of the app's navigation, as the sidebar link does."""
        if url_path not in self.pages:
            raise KeyError(f"no page {url_path!r}; pages: {sorted(self.pages)}")
        return await self.rerun(page_hash=self.pages[url_path], timeout=timeout)

    async def rerun(self, *widgets, page_hash: str | None = None, page_name: str = "",
                    timeout: float = 120) -> RunResult:
        """Ask for a script run with these widget states and wait for it (and any rerun it asks for) to end.

        Widgets not named keep their values on the server, as when a browser sends them unchanged.
        """
        from streamlit.proto.BackMsg_pb2 import BackMsg

        msg = BackMsg()
        cs = msg.rerun_script
        cs.query_string = ""
        cs.page_script_hash = self.page_hash if page_hash is None else page_hash
        cs.page_name = page_name
        cs.widget_states.widgets.extend(widgets)
        t0 = time.perf_counter()
        await self._ws.send(msg.SerializeToString())
        result = await asyncio.wait_for(self._collect(), timeout)
        result.seconds = time.perf_counter() - t0
        self.last = result
        return result

    async def _collect(self) -> RunResult:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        result = RunResult()
        while True:
            m = ForwardMsg()
            m.ParseFromString(await self._ws.recv())
            kind = m.WhichOneof("type")
            if kind == "new_session":
                result = RunResult()  # a (re)run starts: the browser drops the elements it does not get again
                self.page_hash = m.new_session.page_script_hash or self.page_hash
            elif kind == "navigation":
                self.pages = {p.url_pathname: p.page_script_hash for p in m.navigation.app_pages}
                self.page_hash = m.navigation.page_script_hash or self.page_hash
            elif kind == "delta":
                path = tuple(m.metadata.delta_path)
                which = m.delta.WhichOneof("type")
                if which == "new_element":
                    et = m.delta.new_element.WhichOneof("type")
                    el = getattr(m.delta.new_element, et)
                    result.elements[path] = (et, el)
                    wid = getattr(el, "id", "")
                    if isinstance(wid, str) and wid.startswith("$$ID-"):
                        self._ids[wid.split("-", 2)[2]] = wid  # $$ID-<hash>-<key>
                elif which == "add_block":
                    result.blocks[path] = MessageToDict(m.delta.add_block, preserving_proto_field_name=True)
            elif kind == "page_not_found":
                raise ProtocolError(f"page not found: {m.page_not_found.page_name!r}")
            elif kind == "script_finished":
                status = ForwardMsg.ScriptFinishedStatus.Name(m.script_finished)
                if status == "FINISHED_WITH_COMPILE_ERROR":
                    raise ProtocolError("the app failed to compile")
                if status in _DONE:
                    return result
