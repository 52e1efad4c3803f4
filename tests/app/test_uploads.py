"""The app under bad input and slow work: the upload fuzz corpus through the Inspect page, and the live attack's
time limit, with ``streamlit.testing.v1.AppTest`` on the tiny run.

    .venv/bin/python -m pytest tests/app/test_uploads.py -q

One AppTest instance takes every file in turn (as one user uploading file after file): for each, the page shows
the prediction (a valid image) or exactly ``str(UploadError)`` of ``core.uploads.read.read_upload`` (a bad one), never
an exception element, and a valid upload after a bad one still becomes the current image.
"""
from __future__ import annotations

import io
import time

import pytest

from tests.core.uploads.corpus import CATEGORIES, corpus

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from tests.app.apptest import _app, _ok  # noqa: E402  (shared AppTest setup)

#: Files per category of tests/core/uploads/test_uploads.py's corpus (only cases read with the default limits, as the app
#: reads them), plus every named special case below: >= 60 files, every category.
PER_CATEGORY = 10
MUST = ("empty", "animated.gif", "animated.webp", "animated.png (APNG)", "png-16bit-grey", "cmyk.jpg",
        "palette-transparent.png", "rgba.png", "exif-orientation-6.jpg", "1x1/PNG/RGB", "png-20000x20000",
        "header-only-60000x60000", "ztxt-bomb-before-idat", "iccp-bomb", "gif-65535x65535-screen",
        "photo.png (JPEG bytes)")






def _png(color=(200, 180, 160)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, "PNG")
    return buf.getvalue()


def _selection() -> list:
    cats = corpus()
    chosen = []
    for cat in CATEGORIES:
        plain = [c for c in cats[cat] if not c.kwargs]
        step = max(1, len(plain) // PER_CATEGORY)
        chosen += plain[::step][:PER_CATEGORY]
    names = {c.name for c in chosen}
    by_name = {c.name: c for cs in cats.values() for c in cs if not c.kwargs}
    chosen += [by_name[n] for n in MUST if n not in names]
    return chosen


def _predictions(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("### Prediction: ")]


def test_upload_corpus_through_the_inspect_page(tiny_run, monkeypatch):
    from core.uploads.policy import UploadError
    from core.uploads.read import read_upload

    cases = _selection()
    assert len(cases) >= 60
    at = _ok(_app(tiny_run.parent, monkeypatch))
    _ok(at.radio(key="inspect_source").set_value("Upload").run())
    t0 = time.perf_counter()
    outcomes: dict[str, int] = {}
    for i, case in enumerate(cases):
        try:
            read_upload(case.data)
            want = None
        except UploadError as e:
            want = str(e)
        before = at.session_state["current"]["key"]
        was_set = at.session_state["current"]["set"] is not None
        # A distinct file name per upload: the widget sees a new file each time.
        _ok(at.file_uploader(key="inspect_upload").set_value((f"{i}-upload.png", case.data, "image/png")).run())
        errors = [e.value for e in at.error if "by layer" not in e.value and not e.value.startswith("**Overall:")]
        assert len(_predictions(at)) == 1, case.name  # the page always shows a prediction
        if want is None:
            outcomes["ok"] = outcomes.get("ok", 0) + 1
            assert not errors, (case.name, errors)
            assert at.session_state["current"]["source"] == "your upload", case.name
        else:
            outcomes["refused"] = outcomes.get("refused", 0) + 1
            assert errors == [want], (case.name, errors, want)
            # An earlier upload is dropped with its prediction (issue 13); an evaluation image is kept.
            cur = at.session_state["current"]
            assert cur["key"] == before if was_set else cur["set"] is not None, case.name
            # ... and a valid upload right after still works.
            png = _png(color=(i % 256, 100, 200))
            _ok(at.file_uploader(key="inspect_upload").set_value((f"{i}-good.png", png, "image/png")).run())
            assert not [e.value for e in at.error
                        if "by layer" not in e.value and not e.value.startswith("**Overall:")], case.name
            assert at.session_state["current"]["source"] == "your upload", case.name
            assert len(_predictions(at)) == 1, case.name
    print(f"\n{len(cases)} uploads through Inspect: {outcomes} in {time.perf_counter() - t0:.1f} s")
    assert outcomes.get("ok") and outcomes.get("refused")


def test_attack_past_its_time_limit_says_so_and_the_page_keeps_working(tiny_run, monkeypatch):
    import core.attacks
    from app_ui import attack_limits as bounded

    real = core.attacks.run_attack
    release = __import__("threading").Event()

    def slow(*args, **kwargs):
        release.wait(60)  # far past the 0.3 s limit: the page must answer long before this returns
        return real(*args, **kwargs)

    at = _ok(_app(tiny_run.parent, monkeypatch))
    _ok(at.switch_page("app_pages/attack.py").run())
    # Interactive caps on top of param_spec's bounds.
    assert at.slider(key="atk_fgsm_eps").max == 1.0
    monkeypatch.setattr(core.attacks, "run_attack", slow)
    monkeypatch.setattr(bounded, "ATTACK_TIMEOUT_S", 0.3)
    t0 = time.perf_counter()
    _ok(at.button(key="atk_run").click().run())
    assert time.perf_counter() - t0 < 30
    msgs = [e.value for e in at.error]
    assert any("stopped after 0.3 s" in m and "lower the steps" in m for m in msgs), msgs
    assert "atk_result" not in at.session_state
    release.set()  # the abandoned attack finishes now; its result must not appear
    time.sleep(1.0)
    _ok(at.run())
    assert "atk_result" not in at.session_state
    assert not [m for m in at.markdown if m.value.startswith("### The attack")]
    # Back to a normal limit and the real attack: the page works.
    monkeypatch.setattr(core.attacks, "run_attack", real)
    monkeypatch.setattr(bounded, "ATTACK_TIMEOUT_S", 60.0)
    _ok(at.button(key="atk_run").click().run())
    assert [m for m in at.markdown if m.value.startswith("### The attack")]
    assert not [e.value for e in at.error if "stopped after" in e.value]


def test_iteration_sliders_are_capped_for_interactive_use(tiny_run, monkeypatch):
    at = _ok(_app(tiny_run.parent, monkeypatch))
    _ok(at.switch_page("app_pages/attack.py").run())
    for name in ("ifgsm", "pgd", "cw"):
        if name not in at.selectbox(key="atk_name").options:
            continue
        _ok(at.selectbox(key="atk_name").set_value(name).run())
        for key in ("steps", "max_iter"):
            sl = [s for s in at.slider if s.key == f"atk_{name}_{key}"]
            if sl:
                assert sl[0].max <= 200, (name, key, sl[0].max)


def _own_slots(monkeypatch, bounded) -> None:
    """Slots of this test's own: another test's attacks free theirs from their threads' done-callbacks, which a
    loaded machine may run after this test has started (it would then be told the server is busy)."""
    import threading

    monkeypatch.setattr(bounded, "_attack_slots", threading.BoundedSemaphore(bounded.MAX_ATTACK_THREADS))


def test_run_bounded_refuses_when_every_slot_is_taken(monkeypatch):
    import threading

    from app_ui import attack_limits as bounded

    _own_slots(monkeypatch, bounded)
    gate = threading.Event()
    for _ in range(bounded.MAX_ATTACK_THREADS):
        with pytest.raises(bounded.AttackTimeout):
            bounded.run_bounded(gate.wait, 5, timeout=0.01)
    with pytest.raises(bounded.AttackBusy):
        bounded.run_bounded(lambda: 1, timeout=1)
    gate.set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            assert bounded.run_bounded(lambda: 7, timeout=1) == 7
            break
        except bounded.AttackBusy:
            time.sleep(0.05)
    else:
        pytest.fail("slots never freed")


def test_run_bounded_queues_for_a_slot_within_its_limit(monkeypatch):
    """With every slot busy, a request waits for the first to free instead of being refused at once."""
    import threading

    from app_ui import attack_limits as bounded

    _own_slots(monkeypatch, bounded)
    gate = threading.Event()
    for _ in range(bounded.MAX_ATTACK_THREADS):
        with pytest.raises(bounded.AttackTimeout):
            bounded.run_bounded(gate.wait, 5, timeout=0.01)
    threading.Timer(0.3, gate.set).start()
    t0 = time.monotonic()
    assert bounded.run_bounded(lambda: 7, timeout=10) == 7
    assert 0.25 < time.monotonic() - t0 < 10
