"""The selected run and the detector settings: run picking, the sidebar, session keys and set names.

Nothing here touches a file at import time. A run's manifest is cached by its folder and the manifest's
modification time, so a rebuilt run is reloaded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from app_ui.text import md

ROOT = Path(__file__).resolve().parents[1]
#: The command that builds the default run (shown whenever a run is missing or unfinished).
BUILD_COMMAND = "python -m precompute --config precompute/configs/fmnist.toml"
#: Stages the app needs done even when a manifest does not list them.
REQUIRED_STAGES = ("neighbours", "report")

SET_HELP = {"authentic": "authentic test images the CNN classifies correctly (positives)",
            "noise": "authentic images plus random noise, still classified correctly (positives)",
            "errors": "authentic test images the CNN gets wrong (natural errors)"}
FN_NAMES = {"knn": "kNN (w = 1)", "wknn": "W-kNN (w = 1/rank)", "dwknn": "DW-kNN (w = 1/distance²)"}
MODE_NAMES = {"none": "none (raw features)", "l2": "L2-normalised", "pca": "whitening (PCA, full rank or reduced)",
              "pca_nw": "the authors' (PCA-256 without whitening above 256 dims, else none)"}


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


def default_k(summary: dict) -> int:
    """The k the sidebar opens on: the run's default, at most the neighbours it stores (``k_max``)."""
    return min(int(summary["defaults"]["k"]), int(summary["k_max"]))


def stamp(path: str) -> int:
    """Modification time (ns) of the run's manifest: the cache key of everything loaded from the run."""
    return (Path(path) / "manifest.json").stat().st_mtime_ns


@st.cache_resource(show_spinner=False, max_entries=64)
def manifest(path: str, stamp: int) -> dict:
    """The run's manifest through :class:`core.runs.folder.RunDir` (regular file, checked keys, signature).

    One object shared by every session and page: read it, never change it (not a copy unpickled per call)."""
    from core.runs.folder import RunDir

    return RunDir(path).manifest


def unfinished_stages(manifest: dict) -> list[str]:
    """Stages of ``manifest`` not marked done, with the app's required stages when absent, in pipeline order."""
    stages = manifest.get("stages", {})
    names = list(stages) + [s for s in REQUIRED_STAGES if s not in stages]
    todo = [s for s in names if stages.get(s, {}).get("status") != "done"]
    if not todo:  # a finished run: the sidebar never imports precompute (and torch)
        return []
    from precompute.stages import STAGE_NAMES

    return sorted(todo, key=lambda s: STAGE_NAMES.index(s) if s in STAGE_NAMES else len(STAGE_NAMES))


def resume_command(manifest: dict) -> str:
    """The command that builds or finishes the run of ``manifest``."""
    name = manifest.get("config", {}).get("name", "fmnist")
    cfg = ROOT / "precompute" / "configs" / f"{name}.toml"
    if name == "fmnist" or not cfg.exists():
        extra = "" if name == "fmnist" else f"  # plus the --set overrides that started run '{name}'"
        return BUILD_COMMAND + extra
    return f"python -m precompute --config precompute/configs/{name}.toml"


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
    s = stamp(path)
    return Run(path, s, manifest(path, s), st.session_state["det_mode"], st.session_state["det_fn"],
               int(st.session_state["det_k"]))


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
    from core.evaluation.rundata import ERRORS_SET, POSITIVE_SETS

    return [s for s in ordered_sets(run) if s not in POSITIVE_SETS and s != ERRORS_SET]


def first_set(run: Run) -> str:
    """The first non-empty evaluation set (authentic in every normal run)."""
    return next(iter(ordered_sets(run)), "authentic")


#: Short kinds of the sets for labels that must fit a select box (the long ones are SET_HELP).
SET_KIND = {"authentic": "positives", "noise": "positives", "errors": "CNN wrong"}


def set_label(run: Run, name: str) -> str:
    """A short label for an evaluation set, with its size (fits a select box: ``fgsm · 21 · adversarial``)."""
    n = run.summary.get("sets", {}).get(name, {}).get("n", "?")
    return f"{name} · {n} · {SET_KIND.get(name, 'adversarial')}"


def attack_title(name: str) -> str:
    """The attack's title (its name when unknown)."""
    try:
        from core.attacks import ATTACKS

        return ATTACKS[name].title
    except (ImportError, KeyError):
        return name
