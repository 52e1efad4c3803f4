"""Download buttons: the pages' data as files, built by :mod:`core.evaluation.exports` only when clicked (deferred), and the
cached report text."""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import streamlit as st

from app_ui.selection import Run
from core.evaluation import exports


def _slug(text: str) -> str:
    """A file-name-safe version of run-provided text."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))[:60] or "x"


@st.cache_data(show_spinner=False)
def _report_md(path: str, stamp: int) -> str | None:
    from core.runs.folder import RunDir

    rd = RunDir(path)
    return rd.load_text("report.md") if "report.md" in rd.manifest["files"] else None


def report_downloads(run: Run) -> None:
    """The run's ``report.md`` as Markdown and as HTML (escaped: the run's text never becomes HTML)."""
    from core.errors import ArtefactError

    try:
        text = _report_md(run.path, run.stamp)
    except (ArtefactError, OSError) as e:
        st.warning(f"The run's report.md cannot be read: {e}")
        return
    if text is None:
        st.caption("This run has no report.md.")
        return
    name = _slug(run.manifest.get("config", {}).get("name", "run"))
    c1, c2 = st.columns(2)
    c1.download_button("Report (Markdown)", text, file_name=f"{name}-report.md", mime="text/markdown",
                       key="dl_report_md", icon=":material/download:", on_click="ignore")
    c2.download_button("Report (HTML)", lambda: exports.report_html(text, title=f"knnguard report: {name}"),
                       file_name=f"{name}-report.html", mime="text/html", key="dl_report_html",
                       icon=":material/download:", on_click="ignore")


def threshold_downloads(run: Run, layer: str, threshold: float, sep, at: Mapping[str, float],
                        table: Callable[[], tuple[Mapping, Mapping, Mapping[str, float]]],
                        classes: Sequence[str], *, strict: bool) -> None:
    """Per-image scores and verdicts, the confusion counts at ``threshold`` and the ROC of ``sep``.

    ``table()`` gives the per-image data when the scores are downloaded: (``sets``, ``scores``, ``thresholds``) as
    :func:`core.evaluation.exports.scores_csv` takes them; ``strict``: the run's trust rule (``score > threshold``).
    """
    name = f"{_slug(run.manifest.get('config', {}).get('name', 'run'))}-{_slug(layer)}-{run.mode}-{run.fn}-k{run.k}"
    c = st.columns(3)
    c[0].download_button("Scores per image (CSV)", lambda: exports.scores_csv(*table(), classes, strict=strict),
                         file_name=f"{name}-scores.csv", mime="text/csv", key="dl_scores", on_click="ignore",
                         icon=":material/download:",
                         help="Every stored image of these sets: score per layer and verdict at each layer's "
                              "threshold of the shared operating point (set here or chosen on validation), "
                              f"trusting {'score > threshold' if strict else 'score ≥ threshold'}.")
    c[1].download_button("Confusion counts (CSV)", lambda: exports.confusion_csv(at, threshold),
                         file_name=f"{name}-confusion.csv", mime="text/csv", key="dl_confusion", on_click="ignore",
                         icon=":material/download:")
    c[2].download_button("ROC points (CSV)", lambda: exports.roc_csv(sep.roc), file_name=f"{name}-roc.csv",
                         mime="text/csv",
                         key="dl_roc", on_click="ignore", icon=":material/download:")


def adversarial_downloads(result: Mapping[str, Any], *, source: str) -> None:
    """The Attack page's result as files: its uint8 image ``result["adv"]`` (H, W, C) as PNG and ``.npy``; the rest
    of ``result`` but its cache ``key`` (attack, parameters, target, success, seconds) and the image's ``source``
    as JSON."""
    adv = np.asarray(result["adv"])
    info = {**{k: v for k, v in result.items() if k not in ("adv", "key")}, "source": source}
    name = str(result.get("attack", "attack"))
    stem = f"adversarial-{_slug(name)}"
    c = st.columns(3)
    c[0].download_button("Image (PNG)", lambda: exports.image_png(adv), file_name=f"{stem}.png", mime="image/png",
                         key="dl_adv_png", on_click="ignore", icon=":material/download:")
    c[1].download_button("Array (.npy)", lambda: exports.image_npy(adv), file_name=f"{stem}.npy",
                         mime="application/octet-stream", key="dl_adv_npy", on_click="ignore",
                         icon=":material/download:", help="uint8 (H, W, C); np.load(path, allow_pickle=False)")
    c[2].download_button("Parameters (JSON)", lambda: exports.params_json(info), file_name=f"{stem}.json",
                         mime="application/json", key="dl_adv_json", on_click="ignore", icon=":material/download:")
