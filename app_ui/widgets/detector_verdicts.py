"""Each peer detector's verdict (trusted / rejected at its operating point) on one image, for the Inspect and
Attack pages: ``show_verdicts(run, image)``, or ``verdicts_expander(...)``: the same in an expander whose content
is computed only while it is open (loading the detectors and scoring the image took 0.6 s of a fresh server's
first page, py-spy 2026-11-29)."""
from __future__ import annotations

import numpy as np
import streamlit as st

from app_ui import cache
from app_ui.selection import Run


@st.cache_resource(show_spinner="Loading the peer detectors…")
def _bank(path: str, stamp: int):
    from core.peers.single import DetectorBank
    from core.runs.folder import RunDir

    return DetectorBank.load(RunDir(path))


def show_verdicts(run: Run, image: np.ndarray) -> None:
    """A table of every stored detector's score, threshold and verdict on ``image`` (uint8 (H, W, C) as the
    model sees it); a note when the run has no detectors."""
    bank = _bank(run.path, run.stamp)
    if not len(bank):
        st.caption("This run has no peer detectors (built before the detectors stage).")
        return
    verdicts = bank.verdicts(cache.detector(run), image)
    st.dataframe({"detector": [v.entry for v in verdicts],
                  "verdict": ["trusted" if v.trusted else "rejected" for v in verdicts],
                  "score": [v.score for v in verdicts], "threshold": [v.threshold for v in verdicts],
                  "method": [v.label for v in verdicts]}, hide_index=True, key="detector_verdicts")
    st.caption("Each detector at its operating point (threshold set on validation); supervised detectors use "
               "their fit on every validation attack.")


def verdicts_expander(run: Run, image: np.ndarray, label: str, key: str) -> None:
    """:func:`show_verdicts` in an expander titled ``label``, run only while it is open (its state in
    ``st.session_state[key]``: True opens it)."""
    box = st.expander(label, key=key, on_change="rerun")
    if box.open:
        with box:
            show_verdicts(run, image)
