"""The current image shared by the Inspect and Attack pages (``st.session_state["current"]``)."""
from __future__ import annotations

import hashlib

import numpy as np
import streamlit as st

from app_ui import cache
from app_ui.selection import Run, first_set


def model_view(img, run: Run) -> np.ndarray:
    """Upload bytes, a PIL image or an array as the model sees it: uint8 (H, W, C), converted, resized and centre-cropped like the
    model's eval transforms (:meth:`core.detector.Detector.prepare`)."""
    return cache.detector(run).prepare(img)[0]


def image_key(image: np.ndarray) -> str:
    """A short hash of a uint8 image's bytes (tells whether a stored attack result belongs to it)."""
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()[:16]


def set_current(image: np.ndarray, *, source: str, true: int | None = None, set_name: str | None = None,
                index: int | None = None) -> None:
    """Make ``image`` (uint8 (H, W, C) as the model sees it) the image shared by Inspect and Attack."""
    st.session_state["current"] = {"image": np.ascontiguousarray(image), "source": source, "true": true,
                                   "set": set_name, "index": index, "key": image_key(image)}


def set_current_from_set(run: Run, name: str, index: int) -> None:
    """Make image ``index`` (clipped to the set) of evaluation set ``name`` the current image."""
    e = cache.rundata(run).evalset(name)
    index = int(np.clip(index, 0, len(e["images"]) - 1))
    set_current(e["images"][index], source=f"{name} #{index}", true=int(e["true"][index]), set_name=name,
                index=index)


def current_image(run: Run) -> dict:
    """The shared current image (default: the first authentic image)."""
    cur = st.session_state.get("current")
    if cur is None:
        set_current_from_set(run, first_set(run), 0)
        cur = st.session_state["current"]
    return cur


def handle_upload(run: Run, data: bytes, *, invert: bool = False) -> str | None:
    """Decode an upload with :func:`core.uploads.read.read_upload` and make it the current image.

    Returns None on success, else the :class:`~core.uploads.read.UploadError` message: the failed upload replaces
    any earlier upload, so an earlier upload's prediction is not left under the error (an evaluation image
    stays current). Records ``upload_note`` ("upscaled from 5×5") when the upload is smaller than the model's
    input. Nothing is written anywhere.
    """
    from core.uploads.policy import UploadError
    from core.uploads.read import read_upload

    try:
        img = read_upload(data)
        arr = model_view(img, run)
    except UploadError as e:
        st.session_state.pop("upload_array", None)
        st.session_state.pop("upload_note", None)
        cur = st.session_state.get("current")
        if cur is not None and cur.get("set") is None:  # an upload (or an image made from one) was current
            st.session_state.pop("current", None)
        return str(e)
    w, h = img.size
    st.session_state["upload_note"] = (f"upscaled from {w}×{h}" if w < arr.shape[1] or h < arr.shape[0]
                                       else None)
    st.session_state["upload_array"] = arr
    set_current(255 - arr if invert else arr, source="your upload" + (" (inverted)" if invert else ""))
    return None
