"""What every page of the app shares: the run picker, cached loaders, the current image, images and charts.

    streamlit run app.py          # the app; this module is imported by app.py and by every page

Nothing here touches a file at import time. Loaders are cached by the run folder's path and its manifest's
modification time (a rebuilt run is reloaded): ``st.cache_resource`` for the heavy shared objects (the
:class:`~core.detector.Detector`, :class:`~core.evaluation.RunData`, the memory-mapped training images),
``st.cache_data`` for small arrays and tables (scores of a stored set for one setting, EER thresholds).
The precomputed evaluation sets are only ever scored from their stored neighbours: no page searches them.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from app_pages._text import md, plotly_text  # noqa: F401  (pages use ui.md / ui.plotly_text)

ROOT = Path(__file__).resolve().parents[1]
#: The command that builds the default run (shown whenever a run is missing or unfinished).
BUILD_COMMAND = "python -m precompute --config precompute/configs/fmnist.toml"
#: precompute's stages in order (precompute.stages.STAGE_NAMES, repeated so that checking a manifest never imports
#: torch); only for display order: a run is complete when every stage it records is done, neighbours and report
#: included.
STAGES = ("data", "train", "features", "processing", "index", "evalsets", "neighbours", "thumbs", "report")
REQUIRED_STAGES = ("neighbours", "report")
#: Page files, for st.switch_page.
PAGES = {"inspect": "app_pages/inspect_image.py", "attack": "app_pages/attack_live.py",
         "threshold": "app_pages/threshold.py", "layers": "app_pages/layers.py",
         "failures": "app_pages/failure_cases.py", "run": "app_pages/run_info.py"}

#: Verdict colours (colour-blind safe: blue / orange) and words; never colour alone.
TRUSTED_COLOR = "#2b6cb0"
REJECTED_COLOR = "#dd6b20"
TRUSTED = "✓ trusted"
REJECTED = "✗ rejected"

SET_HELP = {"authentic": "authentic test images the CNN classifies correctly (positives)",
            "noise": "authentic images plus random noise, still classified correctly (positives)",
            "errors": "authentic test images the CNN gets wrong (natural errors)"}
FN_NAMES = {"knn": "kNN (w = 1)", "wknn": "W-kNN (w = 1/rank)", "dwknn": "DW-kNN (w = 1/distance²)"}
MODE_NAMES = {"none": "none (raw features)", "l2": "L2-normalised", "pca": "PCA + whitening"}


# ----------------------------------------------------------------------------------------------- runs
def runs_root() -> Path:
    """Folder holding the runs: ``$KNNGUARD_RUNS_DIR`` or ``data/runs`` of the repository."""
    env = os.environ.get("KNNGUARD_RUNS_DIR")
    return Path(env).expanduser().resolve() if env else ROOT / "data" / "runs"


def list_runs(root: Path) -> list[Path]:
    """Sub-folders of ``root`` that hold a ``manifest.json`` (the default run ``fmnist`` first)."""
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and (p / "manifest.json").is_file()]
    return sorted(runs, key=lambda p: (p.name != "fmnist", p.name))


def _stamp(path: str) -> int:
    return (Path(path) / "manifest.json").stat().st_mtime_ns


@st.cache_data(show_spinner=False)
def _manifest(path: str, stamp: int) -> dict:
    """The run's manifest through :class:`core.artefacts.RunDir` (regular file, checked keys, signature)."""
    from core.artefacts import RunDir

    return RunDir(path).manifest


def unfinished_stages(manifest: dict) -> list[str]:
    """Stages of ``manifest`` not marked done, with the app's required stages when absent."""
    stages = manifest.get("stages", {})
    names = list(stages) + [s for s in REQUIRED_STAGES if s not in stages]
    todo = [s for s in names if stages.get(s, {}).get("status") != "done"]
    return sorted(todo, key=lambda s: STAGES.index(s) if s in STAGES else len(STAGES))


def resume_command(manifest: dict) -> str:
    """The command that builds or finishes the run of ``manifest``."""
    name = manifest.get("config", {}).get("name", "fmnist")
    cfg = ROOT / "precompute" / "configs" / f"{name}.toml"
    if name == "fmnist" or not cfg.exists():
        extra = "" if name == "fmnist" else f"  # plus the --set overrides that started run '{name}'"
        return BUILD_COMMAND + extra
    return f"python -m precompute --config precompute/configs/{name}.toml"


def _run_label(path: str) -> str:
    try:
        m = _manifest(path, _stamp(path))
    except (OSError, ValueError, RuntimeError):
        return f"{Path(path).name} (unreadable manifest)"
    from core.entrypoints import needs_entry

    todo = unfinished_stages(m)
    model = m.get("summary", {}).get("model") or m.get("config", {}).get("model", {}).get("name", "?")
    return (f"{Path(path).name} · {model}" + (" · unfinished" if todo else "")
            + (" · custom model: needs its entry point" if needs_entry(m) else ""))


def _reset_run_state() -> None:
    """A new run invalidates every other setting (layers, k range, current image...)."""
    for key in list(st.session_state):
        if key != "run":
            del st.session_state[key]


def sidebar() -> None:
    """Render the run picker and the detector settings; stop the page on a missing or unfinished run.

    Sets ``st.session_state["run"]`` (the run folder), ``det_mode``, ``det_fn`` and ``det_k``.
    """
    root = runs_root()
    runs = [str(p) for p in list_runs(root)]
    with st.sidebar:
        if not runs:
            st.error(f"No run found in {md(root)}.")
            st.markdown("Build the default run (a few minutes on a laptop CPU), then reload this page:")
            st.code(BUILD_COMMAND, language="bash")
            st.stop()
        if st.session_state.get("run") not in runs:
            st.session_state["run"] = runs[0]
        st.selectbox("Run", runs, key="run", format_func=_run_label, on_change=_reset_run_state,
                     persist_state="session",
                     help=f"Precomputed runs found in {md(root)} (set KNNGUARD_RUNS_DIR to look elsewhere).")
        path = st.session_state["run"]
        try:
            m = _manifest(path, _stamp(path))
        except (OSError, ValueError, RuntimeError) as e:  # RuntimeError: core.artefacts.ArtefactError
            m, err = {}, str(e)
        else:
            err = ""
        todo = unfinished_stages(m)
        if todo or err:
            st.error(f"Run {md(Path(path).name)} is not finished (missing: {md(', '.join(todo) or err)}).")
            st.markdown("Build or resume it with:")
            st.code(resume_command(m), language="bash")
            st.stop()
        from core.entrypoints import needs_entry

        why = needs_entry(m, where=f"Run {Path(path).name}")
        if why:  # a run never supplies code: list it, do not open it
            st.warning(md(why), icon=":material/block:")
            st.stop()
        s = m["summary"]
        d = s["defaults"]
        st.session_state.setdefault("det_mode", d["mode"])
        st.session_state.setdefault("det_fn", d["fn"])
        st.session_state.setdefault("det_k", min(int(d["k"]), int(s["k_max"])))
        st.markdown("**Detector settings** (all pages)")
        st.selectbox("Processing of the features", s["modes"], key="det_mode", format_func=MODE_NAMES.get,
                     persist_state="session",
                     help="How hidden-layer features are transformed before the kNN search.")
        st.selectbox("Score function", list(FN_NAMES), key="det_fn", format_func=FN_NAMES.get, persist_state="session",
                     help="How the k neighbours vote for the predicted class (paper Table 1).")
        st.slider("k (neighbours that vote)", 1, int(s["k_max"]), key="det_k", persist_state="session",
                  help=f"Up to the {int(s['k_max'])} neighbours stored per evaluation image. The paper uses k = 1000.")
        st.caption("A prediction is **trusted** when the kNN score of its class is at least the threshold.")


@dataclass(frozen=True)
class Run:
    """The selected run: folder, manifest stamp and manifest, with the current detector settings."""

    path: str
    stamp: int
    manifest: dict
    mode: str
    fn: str
    k: int

    @property
    def summary(self) -> dict:
        return self.manifest["summary"]

    @property
    def layers(self) -> list[str]:
        return list(self.summary["layers"])

    @property
    def k_max(self) -> int:
        return int(self.summary["k_max"])

    @property
    def settings_text(self) -> str:
        """The settings as Markdown (run-provided names escaped)."""
        return f"{MODE_NAMES.get(self.mode) or md(self.mode)}, {FN_NAMES.get(self.fn) or md(self.fn)}, k = {self.k}"


def current_run() -> Run:
    """The run chosen in the sidebar with the sidebar's settings (``sidebar()`` has run before the page)."""
    path = st.session_state["run"]
    stamp = _stamp(path)
    return Run(path, stamp, _manifest(path, stamp), st.session_state["det_mode"], st.session_state["det_fn"],
               int(st.session_state["det_k"]))


# -------------------------------------------------------------------------------------------- loaders
#: Models whose input has at most this many values (C·H·W) run the app's one-image work (forward passes and live
#: attacks) on one torch thread: one thread answered a 28×28 image in ~2 ms where two threads sharing a busy
#: 2-core machine took 300 ms (the same finding as core.detector's single-image forward). Bigger models keep
#: every thread.
SMALL_INPUT = 64 * 64 * 3


@st.cache_resource(show_spinner="Loading the detector (model and faiss indexes)…")
def _detector(path: str, stamp: int):
    import torch

    from core.detector import Detector

    det = Detector.load(path, verify="full")
    spec = getattr(det, "input_spec", None)
    if spec is not None and int(np.prod(spec.size)) <= SMALL_INPUT:
        torch.set_num_threads(1)
    return det


def _refuse(run: Run, err: Exception) -> None:
    """A run whose files fail their checks: say which and how to rebuild, then stop the page."""
    st.error(f"Run {md(Path(run.path).name)} cannot be loaded: {md(err)}")
    st.markdown("Rebuild it with:")
    st.code(resume_command(run.manifest), language="bash")
    st.stop()


@contextlib.contextmanager
def _guard(run: Run, *also: type[Exception]) -> Iterator[None]:
    """Turn a damaged or missing run file met while loading (or any of ``also``) into :func:`_refuse`."""
    from core.artefacts import ArtefactError

    try:
        yield
    except (ArtefactError, OSError, *also) as e:
        _refuse(run, e)


def detector(run: Run):
    """The run's :class:`core.detector.Detector` (loaded once per process).

    A model file that no longer fits the model's code (torch's ``load_state_dict`` RuntimeError, e.g. after the
    architecture changed) is reported like a damaged file: rebuild the run.
    """
    with _guard(run, RuntimeError, KeyError):
        return _detector(run.path, run.stamp)


@st.cache_resource(show_spinner="Loading the run's evaluation data…")
def _rundata(path: str, stamp: int):
    from core.evaluation import RunData

    return RunData(path, verify=True)


def rundata(run: Run):
    """The run's :class:`core.evaluation.RunData` (stored sets and neighbours; shared, read-only)."""
    with _guard(run):
        return _rundata(run.path, run.stamp)


@st.cache_resource(show_spinner=False)
def _train_images(path: str, stamp: int) -> np.ndarray | None:
    from core.artefacts import RunDir

    rd = RunDir(path)
    if "train_images.npy" not in rd.manifest["files"]:
        return None
    return rd.load_npy("train_images.npy", mmap=True, verify=True)


def train_image(run: Run, i: int) -> np.ndarray | None:
    """Training image ``i`` uint8 (H, W, C): ``RunData.train_image`` (training images or stored thumbnails), else
    the memory-mapped ``train_images.npy``; None when the run keeps neither."""
    data = rundata(run)
    if hasattr(data, "train_image"):
        return data.train_image(int(i))
    imgs = _train_images(run.path, run.stamp)
    return None if imgs is None else np.asarray(imgs[int(i)])


@st.cache_data(show_spinner=False)
def _json(path: str, stamp: int, name: str) -> Any:
    """A JSON file of the run, hash-checked against the manifest; None when the manifest does not record it."""
    from core.artefacts import RunDir

    rd = RunDir(path)
    return rd.load_json(name) if name in rd.manifest["files"] else None


def classes(run: Run) -> list[str]:
    """``classes.json`` of the run (the page stops on a damaged file)."""
    with _guard(run):
        return _json(run.path, run.stamp, "classes.json")


def report(run: Run) -> dict:
    """``report.json`` of the run (the page stops on a damaged file)."""
    with _guard(run):
        return _json(run.path, run.stamp, "report.json")


def model_info(run: Run) -> dict:
    """``model.json`` of the run (empty dict when absent; the page stops on a damaged file)."""
    with _guard(run):
        return _json(run.path, run.stamp, "model.json") or {}


@st.cache_data(show_spinner=False, max_entries=512)
def _scores(path: str, stamp: int, name: str, layer: str, mode: str, fn: str, k: int) -> np.ndarray:
    return _rundata(path, stamp).scores(name, layer, mode, fn, k)


def set_scores(run: Run, name: str, layer: str, *, mode: str | None = None, fn: str | None = None,
               k: int | None = None) -> np.ndarray:
    """kNN scores (n,) of stored set ``name`` at ``layer`` (from stored neighbours; settings default to the
    sidebar's)."""
    with _guard(run):
        return _scores(run.path, run.stamp, name, layer, mode or run.mode, fn or run.fn, int(k or run.k))


def positives(run: Run, layer: str, **kw) -> np.ndarray:
    """Scores of every positive image (authentic, noise) at ``layer``."""
    from core.evaluation import POSITIVE_SETS

    sets = rundata(run).set_names
    return np.concatenate([set_scores(run, s, layer, **kw) for s in POSITIVE_SETS if s in sets])


def negatives(run: Run, layer: str, sets: list[str], **kw) -> np.ndarray:
    """Scores of the given negative sets at ``layer``, concatenated."""
    return np.concatenate([set_scores(run, s, layer, **kw) for s in sets] or [np.zeros(0)])


@st.cache_data(show_spinner=False)
def _eer_thresholds(path: str, stamp: int, mode: str, fn: str, k: int) -> dict[str, float]:
    import warnings

    from core import metrics

    data = _rundata(path, stamp)
    out = {}
    for layer in data.layers:
        pos = data.positives(layer, mode, fn, k)
        negs = [data.scores(s, layer, mode, fn, k) for s in data.attack_sets]
        if not sum(len(n) for n in negs) and "errors" in data.set_names:
            negs = [data.scores("errors", layer, mode, fn, k)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            th = metrics.roc(pos, np.concatenate(negs or [np.zeros(0)])).eer_threshold
        out[layer] = float(th) if np.isfinite(th) else 0.5
    return out


def eer_thresholds(run: Run) -> dict[str, float]:
    """Per layer, the EER threshold at the sidebar's settings, with every attack set as negatives
    (authentic errors when the run has no adversarial image; 0.5 when neither exists)."""
    with _guard(run):
        return _eer_thresholds(run.path, run.stamp, run.mode, run.fn, run.k)


@st.cache_data(show_spinner=False, max_entries=64)
def _inspect(path: str, stamp: int, image: np.ndarray, mode: str, fn: str, k: int):
    return _detector(path, stamp).inspect(image, mode=mode, fn=fn, k=k)


def inspect(run: Run, image: np.ndarray):
    """:meth:`core.detector.Detector.inspect` of a uint8 (H, W, C) image at the sidebar's settings (cached)."""
    detector(run)  # loaded (or refused) first, so a failure inside inspect() is never taken for a bad run
    with _guard(run):
        return _inspect(run.path, run.stamp, np.ascontiguousarray(image), run.mode, run.fn, run.k)


# ------------------------------------------------------------------------------------- set names
def ordered_sets(run: Run, *, nonempty: bool = True) -> list[str]:
    """Evaluation sets in reading order: authentic, noise, errors, then the attacks in the config's order
    (the manifest stores them alphabetically)."""
    sets = run.summary.get("sets", {})
    attacks = run.manifest.get("config", {}).get("evalsets", {}).get("attacks", [])
    order = ["authentic", "noise", "errors", *attacks]
    names = [s for s in order if s in sets] + sorted(s for s in sets if s not in order)
    return [s for s in names if not nonempty or sets[s].get("n", 0)]


def attack_sets(run: Run) -> list[str]:
    """Non-empty adversarial sets, in the config's order."""
    from core.evaluation import ERRORS_SET, POSITIVE_SETS

    return [s for s in ordered_sets(run) if s not in POSITIVE_SETS and s != ERRORS_SET]


def set_label(run: Run, name: str) -> str:
    """A readable label for an evaluation set, with its size."""
    n = run.summary.get("sets", {}).get(name, {}).get("n", "?")
    if name in SET_HELP:
        return f"{name} · {n} images · {SET_HELP[name]}"
    return f"{name} · {n} images · adversarial ({attack_title(name)})"


def attack_title(name: str) -> str:
    try:
        from core.attacks import ATTACKS

        return ATTACKS[name].title
    except (ImportError, KeyError):
        return name


# ------------------------------------------------------------------------------------ current image
def model_view(img, run: Run) -> np.ndarray:
    """A decoded PIL image as the model sees it: uint8 (H, W, C), converted, resized and centre-cropped like the
    model's eval transforms (:meth:`core.detector.Detector.prepare`)."""
    return detector(run).prepare(img)[0]


def image_key(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()[:16]


def set_current(image: np.ndarray, *, source: str, true: int | None = None, set_name: str | None = None,
                index: int | None = None) -> None:
    """Make ``image`` (uint8 (H, W, C) as the model sees it) the image shared by Inspect and Attack."""
    st.session_state["current"] = {"image": np.ascontiguousarray(image), "source": source, "true": true,
                                   "set": set_name, "index": index, "key": image_key(image)}


def set_current_from_set(run: Run, name: str, index: int) -> None:
    e = rundata(run).evalset(name)
    index = int(np.clip(index, 0, len(e["images"]) - 1))
    set_current(e["images"][index], source=f"{name} #{index}", true=int(e["true"][index]), set_name=name,
                index=index)


def first_set(run: Run) -> str:
    """The first non-empty evaluation set (authentic in every normal run)."""
    return next(iter(ordered_sets(run)), "authentic")


def current_image(run: Run) -> dict:
    """The shared current image (default: the first authentic image)."""
    cur = st.session_state.get("current")
    if cur is None:
        set_current_from_set(run, first_set(run), 0)
        cur = st.session_state["current"]
    return cur


def handle_upload(run: Run, data: bytes, *, invert: bool = False) -> str | None:
    """Decode an upload with :func:`core.uploads.read_upload` and make it the current image.

    Returns None on success, else the :class:`~core.uploads.UploadError` message (the current image is kept).
    Nothing is written anywhere.
    """
    from core.uploads import UploadError, read_upload

    try:
        arr = model_view(read_upload(data), run)
    except UploadError as e:
        return str(e)
    st.session_state["upload_array"] = arr
    set_current(255 - arr if invert else arr, source="your upload" + (" (inverted)" if invert else ""))
    return None


# ----------------------------------------------------------------------------------------------- images
def upscale(image: np.ndarray, size: int = 224) -> np.ndarray:
    """uint8 (H, W, C) -> a bigger copy by pixel repetition (nearest neighbour: no blur), grey as (H', W')."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    f = max(1, size // max(img.shape[:2]))
    return np.repeat(np.repeat(img, f, axis=0), f, axis=1) if f > 1 else img


def show_image(image: np.ndarray, caption: str | None = None, *, size: int = 224, where=st) -> None:
    """Show an image at a readable size (nearest-neighbour upscaling) with a caption (Markdown: escape run text)."""
    where.image(upscale(image, size), caption=caption, width=size)


def perturbation(original: np.ndarray, adversarial: np.ndarray) -> tuple[np.ndarray, float]:
    """Signed perturbation shown as an image: mid-grey = unchanged, lighter/darker = pixel raised/lowered,
    amplified so the largest change reaches black or white. Returns (uint8 image, amplification)."""
    d = adversarial.astype(np.float64) - original.astype(np.float64)
    m = float(np.abs(d).max())
    amp = 127.0 / m if m > 0 else 1.0
    return np.clip(np.round(128 + d * amp), 0, 255).astype(np.uint8), amp


def image_grid(images: list[np.ndarray], captions: list[str], *, size: int = 96, where=st) -> None:
    """Images side by side (wrapping), each with its caption (Markdown: escape run text): one element, so one
    message per rerun."""
    if images:
        where.image([upscale(im, size) for im in images], caption=captions, width=size)


# ------------------------------------------------------------------------------------- verdict & charts
def verdict(score: float, threshold: float) -> str:
    return TRUSTED if score >= threshold else REJECTED


def legend() -> None:
    """The score colour legend, in colour and in words."""
    chip = ("<span style='background:{c};color:white;padding:1px 8px;border-radius:4px;font-weight:600'>{w}"
            "</span>")
    st.markdown(chip.format(c=TRUSTED_COLOR, w=TRUSTED) + " score ≥ threshold &nbsp;·&nbsp; "
                + chip.format(c=REJECTED_COLOR, w=REJECTED) + " score < threshold (hatched) &nbsp;·&nbsp; "
                "<b>▬</b> the layer's threshold", unsafe_allow_html=True)


def figure(data: list[dict], *, title: str, ytitle: str, xtitle: str = "", height: int = 360,
           legend_below: bool = False, xaxis: dict | None = None, yaxis: dict | None = None, **layout: Any):
    """A plotly figure from plain trace dicts, built and validated once.

    Building trace by trace (``add_scatter``, ``add_vline``...) costs several times more per rerun, and every
    widget change reruns the page.
    """
    import plotly.graph_objects as go

    legend = (dict(orientation="h", yanchor="top", y=-0.2, xanchor="left", x=0) if legend_below else
              dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0))
    lay = dict(title=dict(text=title, font=dict(size=15)), height=height, legend=legend,
               margin=dict(l=10, r=10, t=50, b=10),
               xaxis=dict(title=dict(text=xtitle), **(xaxis or {})),
               yaxis=dict(title=dict(text=ytitle), **(yaxis or {})), **layout)
    return go.Figure(dict(data=data, layout=lay))


def vline(x: float, *, label: str | None = None) -> tuple[list[dict], list[dict]]:
    """(shapes, annotations) of a vertical line across the plot at ``x``."""
    shapes = [dict(type="line", x0=x, x1=x, y0=0, y1=1, yref="paper", line=dict(color="#222", width=2))]
    notes = ([dict(x=x, y=1, yref="paper", text=label, showarrow=False, xanchor="left", yanchor="bottom")]
             if label else [])
    return shapes, notes


def vband(x0: float, x1: float, color: str, label: str, *, left: bool) -> tuple[list[dict], list[dict]]:
    """(shapes, annotations) of a light vertical band from ``x0`` to ``x1``, labelled in its top corner."""
    shapes = [dict(type="rect", x0=x0, x1=x1, y0=0, y1=1, yref="paper", fillcolor=color, opacity=0.08, line_width=0,
                   layer="below")]
    notes = [dict(x=x0 if left else x1, y=1, yref="paper", text=label, showarrow=False,
                  xanchor="left" if left else "right", yanchor="top", font=dict(color=color))]
    return shapes, notes


def _threshold_trace(layers: list[str], thresholds: dict[str, float]) -> dict:
    return dict(type="scatter", x=[plotly_text(la) for la in layers], y=[thresholds[la] for la in layers], mode="markers", name="threshold",
                marker=dict(symbol="line-ew-open", size=60, color="#222", line=dict(width=3, color="#222")),
                hovertemplate="%{x}: threshold %{y:.3f}<extra></extra>")


def layer_scores_figure(layers: list[str], scores: dict[str, float], thresholds: dict[str, float], *, title: str):
    """One bar per layer: the kNN score of the predicted class, coloured and labelled by verdict, with each
    layer's threshold as a black tick. Layer names are escaped here; ``title`` is plotly text (escape run text)."""
    data = []
    for ok, color, word, pattern in ((True, TRUSTED_COLOR, TRUSTED, ""), (False, REJECTED_COLOR, REJECTED, "/")):
        xs = [la for la in layers if (scores[la] >= thresholds[la]) == ok]
        if xs:
            data.append(dict(type="bar", x=[plotly_text(la) for la in xs], y=[scores[la] for la in xs], name=word,
                             marker=dict(color=color, pattern=dict(shape=pattern)),
                             text=[f"{scores[la]:.2f} {word[0]}" for la in xs], textposition="outside",
                             textfont=dict(size=14), cliponaxis=False,
                             hovertemplate="%{x}: score %{y:.3f} (" + word + ")<extra></extra>"))
    data.append(_threshold_trace(layers, thresholds))
    return figure(data, title=title, ytitle="kNN score of the predicted class", xtitle="layer (input → output)",
                  xaxis=dict(categoryorder="array", categoryarray=[plotly_text(la) for la in layers]),
                  yaxis=dict(range=[0, 1.15]))


def before_after_figure(layers: list[str], before: dict[str, float], after: dict[str, float],
                        thresholds: dict[str, float], *, title: str):
    """Grouped bars per layer: score before and after the attack, coloured by verdict, with thresholds."""
    data = []
    for name, sc, opacity in (("before attack (left bar)", before, 0.55), ("after attack (right bar)", after, 1.0)):
        ok = [sc[la] >= thresholds[la] for la in layers]
        data.append(dict(type="bar", x=[plotly_text(la) for la in layers], y=[sc[la] for la in layers], name=name,
                         marker=dict(color=[TRUSTED_COLOR if o else REJECTED_COLOR for o in ok], opacity=opacity,
                                     pattern=dict(shape=["" if o else "/" for o in ok])),
                         text=[f"{sc[la]:.2f}{'✓' if o else '✗'}" for la, o in zip(layers, ok)],
                         textposition="outside", textfont=dict(size=13), cliponaxis=False,
                         hovertemplate="%{x}: %{y:.3f}<extra>" + name + "</extra>"))
    data.append(_threshold_trace(layers, thresholds))
    return figure(data, title=title, ytitle="kNN score of the predicted class", xtitle="layer (input → output)",
                  xaxis=dict(categoryorder="array", categoryarray=[plotly_text(la) for la in layers]),
                  yaxis=dict(range=[0, 1.15]), barmode="group", showlegend=False)


def how_to_read(text: str) -> None:
    """The page's one-line guide for a student."""
    st.info(text, icon=":material/school:")


# ------------------------------------------------------------------------------------------ bounded attacks
#: Wall-time limit of one live attack (seconds; ``KNNGUARD_ATTACK_TIMEOUT_S`` overrides it). The attack runs on a
#: worker thread; past the limit the page says so and carries on, and the late result is discarded.
ATTACK_TIMEOUT_S = float(os.environ.get("KNNGUARD_ATTACK_TIMEOUT_S", "20"))
#: At most this many attack threads at once in the process (abandoned ones included): a further request waits for
#: a free one (a queue, so many users clicking at once all get their attack), and past :data:`QUEUE_SHARE` of its
#: limit is refused with a message instead of piling up threads on a busy server.
MAX_ATTACK_THREADS = 4
#: A request waits for a slot at most this share of its time limit (then :class:`AttackBusy`), so an attack that
#: gets one has at least the rest to run: one started with seconds to go would time out and hold the slot anyway.
QUEUE_SHARE = 0.5
_attack_slots = __import__("threading").BoundedSemaphore(MAX_ATTACK_THREADS)


class AttackTimeout(Exception):
    """The attack ran past :data:`ATTACK_TIMEOUT_S`."""


class AttackBusy(Exception):
    """Every attack slot is taken."""


def run_bounded(fn, /, *args, timeout: float | None = None, **kwargs):
    """``fn(*args, **kwargs)`` on a worker thread, within ``timeout`` seconds in all (default
    :data:`ATTACK_TIMEOUT_S`, read at call time), waiting for a free slot included.

    Raises :class:`AttackBusy` when no slot of :data:`MAX_ATTACK_THREADS` frees within :data:`QUEUE_SHARE` of the
    limit and :class:`AttackTimeout` when ``fn`` runs past what is left of it (the thread finishes on its own and
    its result is dropped). ``fn``'s own exceptions propagate.
    """
    import concurrent.futures as cf

    limit = ATTACK_TIMEOUT_S if timeout is None else float(timeout)
    t0 = time.monotonic()
    wait = limit * QUEUE_SHARE
    if not _attack_slots.acquire(blocking=False) and not _attack_slots.acquire(timeout=wait):
        raise AttackBusy(f"{MAX_ATTACK_THREADS} attacks kept every slot of this server busy for {wait:g} s")
    left = max(0.0, limit - (time.monotonic() - t0))
    pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="knnguard-attack")
    try:
        fut = pool.submit(fn, *args, **kwargs)
    except BaseException:
        _attack_slots.release()
        pool.shutdown(wait=False)
        raise
    fut.add_done_callback(lambda _f: _attack_slots.release())
    pool.shutdown(wait=False)  # the thread ends when fn returns; nothing waits for it
    try:
        return fut.result(timeout=left)
    except cf.TimeoutError:
        raise AttackTimeout(f"stopped after {limit:g} s") from None
