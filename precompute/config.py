"""Precompute configuration: TOML files under ``precompute/configs/``, type-checked, unknown keys refused.

Every key has a default in :data:`DEFAULTS` (with a comment in the shipped TOML files). A config file
overrides some of them; ``--set section.key=value`` overrides after that (the value is parsed as TOML, so
``--set evalsets.n_authentic=200`` is an int and ``--set model.weights='"none"'`` or ``model.weights=none``
a string). Anything not in the schema, or of the wrong type, is an error before any work starts.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "DEFAULTS", "load", "apply_override", "validate", "validate_recorded", "stage_hash",
           "ATTACK_SECTION", "EXTERNAL_SECTION"]

ATTACK_SECTION = "attacks"
EXTERNAL_SECTION = "external"


class ConfigError(ValueError):
    """A config that cannot be used; the message says which key and why."""


DEFAULTS: dict[str, Any] = {
    "name": "run",            # run folder name: <runs_dir>/<name>
    "data_root": "data",      # every path in the config must lie under this folder (no ../, no outside paths)
    "runs_dir": "data/runs",  # where run folders live
    "seed": 0,                # one seed for everything (training, sampling, targets, attacks)
    "device": "auto",         # auto | cpu | cuda
    "threads": 0,             # torch + faiss CPU threads (0 = every core)
    "data": {
        "dataset": "fashion-mnist",  # fashion-mnist | imagefolder
        "root": "",                  # fashion-mnist: folder of the idx .gz files ("" = search the usual places)
        "download": False,           # fashion-mnist: fall back to torchvision's downloader
        "train_dir": "",             # imagefolder: class-per-folder training images
        "eval_dir": "",              # imagefolder: class-per-folder evaluation images (same class folders),
                                     # or, with eval_csv, a flat folder of <ImageId>.png
        "eval_csv": "",              # NIPS 2017 DEV format: ImageId,TrueLabel,TargetClass (targets used by attacks)
        "csv_label_offset": 1,       # subtracted from TrueLabel/TargetClass (the DEV set counts from 1)
        "class_names": "",           # JSON list of class names ("" = the model's, else the folder names)
        "n_train": 0,                # use a seeded random subset of this many training images (0 = all)
        "n_test": 0,                 # use a seeded random subset of this many test images (0 = all)
    },
    "model": {
        "name": "fmnist-cnn",  # a core.zoo name
        "weights": "none",     # torchvision weights name for loaded models ("none" = random init)
        "num_classes": 0,      # random-weight torchvision models: output classes (0 = the model's own)
        "image_size": 0,       # input height = width (0 = the model's own)
        "resize": 0,           # shorter side before the centre crop (0 = the model's own ratio)
        "entry": "",           # custom model: "package.module:build_fn" returning an nn.Module
        "state_dict": "",      # custom model: a state dict loaded with weights_only=True
        "input_size": [],      # custom model: [C, H, W]
        "mean": [],            # custom model: per-channel normalisation (done inside the wrapped model)
        "std": [],
        "epochs": 6,           # training epochs (models trained here)
        "batch_size": 128,
        "lr": 0.002,           # peak learning rate (Adam, one-cycle)
        "weight_decay": 0.0001,
    },
    "features": {
        "layers": [],          # node names to tap ([] = the zoo's default taps)
        "batch_size": 512,
        "amp": True,           # bfloat16 autocast for forward passes on CUDA
        "chunk": 8192,         # training images per resumable chunk of the streamed extraction
        "workers": 0,          # image-decoding worker processes for image folders
    },
    "processing": {
        "modes": ["none", "l2", "pca"],  # none | l2 | pca (PCA + whitening)
        "pca_dim": 256,                  # PCA output dims (capped by the layer's dims)
    },
    "index": {
        "kind": "auto",  # auto | flat | ivf | hnsw (auto: flat below 500k training images)
        "nprobe": 16,    # IVF cells visited per query
    },
    "evalsets": {
        "n_authentic": 1000,  # correctly classified test images (positives; also the attacks' sources)
        "n_errors": 1000,     # misclassified test images kept (authentic errors), at most
        "noise_eps": 0.1,     # random noise: uniform in [-eps, eps] added to authentic images (kept if still right)
        "attacks": ["fgsm", "ifgsm", "pgd", "cw", "deepfool", "lbfgs"],  # adversarial sets to make
        "attack_batch": 250,  # images per attack call
    },
    ATTACK_SECTION: {},       # per attack: {n = images attacked, ...attack params (core.attacks.param_spec)}
    EXTERNAL_SECTION: {},     # adversarial sets made elsewhere: {name = {dir = folder of <ImageId>.png}}
    "thumbs": {
        "size": 64,           # neighbour thumbnails stored for runs whose training images are not kept
        "per_layer": 4,       # nearest (overall and of the predicted class) kept per image and layer
    },
    "scoring": {
        "k_max": 1000,                        # neighbours stored per evaluation image
        "k": 1000,                            # default k for scores
        "fn": "dwknn",                        # default score function: knn | wknn | dwknn
        "mode": "pca",                        # default processing for the app and the Detector
        "k_sweep": [10, 50, 100, 500, 1000],  # k values in the report's sweep
    },
}

_CHOICES = {("device",): ("auto", "cpu", "cuda"), ("data", "dataset"): ("fashion-mnist", "imagefolder"),
            ("index", "kind"): ("auto", "flat", "ivf", "hnsw"), ("scoring", "fn"): ("knn", "wknn", "dwknn"),
            ("scoring", "mode"): ("none", "l2", "pca")}


def _type_ok(default: Any, value: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, type(default))


def _merge(base: dict, over: dict, path: tuple[str, ...] = ()) -> None:
    for key, value in over.items():
        where = ".".join(path + (key,))
        if path and path[0] in (ATTACK_SECTION, EXTERNAL_SECTION):
            if not isinstance(value, dict) and len(path) == 1:
                raise ConfigError(f"[{where}] must be a table of attack parameters")
            base[key] = copy.deepcopy(value) if len(path) == 1 else value
            continue
        if key not in base:
            raise ConfigError(f"unknown config key '{where}'; valid keys here: {sorted(base)}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"'{where}' must be a table")
            _merge(base[key], value, path + (key,))
        else:
            if not _type_ok(base[key], value):
                raise ConfigError(f"'{where}' must be {type(base[key]).__name__}, got {value!r}")
            base[key] = float(value) if isinstance(base[key], float) else value


PATH_KEYS = (("runs_dir",), ("data", "root"), ("data", "train_dir"), ("data", "eval_dir"), ("data", "eval_csv"),
             ("data", "class_names"), ("model", "state_dict"))


def check_paths(cfg: dict) -> None:
    """Refuse config paths that escape ``data_root``: any ``..`` component, or a path outside it.

    The check is lexical (symlinks inside ``data_root`` may point elsewhere: that is how a user mounts a
    large dataset), so a config cannot name an arbitrary file of the machine.
    """
    root = os.path.abspath(cfg["data_root"])
    items = [(".".join(k), _get(cfg, k)) for k in PATH_KEYS]
    items += [(f"external.{n}.dir", t["dir"]) for n, t in cfg[EXTERNAL_SECTION].items()]
    for where, value in items:
        if not value:
            continue
        if ".." in Path(value).parts:
            raise ConfigError(f"'{where}' = {value!r}: '..' is not allowed in config paths")
        full = os.path.abspath(value)
        if os.path.commonpath([root, full]) != root:
            raise ConfigError(f"'{where}' = {value!r} is outside data_root ({root}); put (or symlink) it under "
                              "data_root, or set data_root")


def _get(cfg: dict, keys: tuple[str, ...]):
    for k in keys:
        cfg = cfg[k]
    return cfg


def validate(cfg: dict) -> dict:
    """Check choices, ranges, paths and the attack tables; return ``cfg`` (raises :class:`ConfigError`)."""
    check_paths(cfg)
    for path, choices in _CHOICES.items():
        v = cfg
        for p in path:
            v = v[p]
        if v not in choices:
            raise ConfigError(f"'{'.'.join(path)}' must be one of {choices}, got {v!r}")
    if not cfg["name"] or "/" in cfg["name"] or cfg["name"].startswith("."):
        raise ConfigError(f"'name' must be a plain folder name, got {cfg['name']!r}")
    for m in cfg["processing"]["modes"]:
        if m not in ("none", "l2", "pca"):
            raise ConfigError(f"processing.modes: unknown mode {m!r}")
    if cfg["scoring"]["mode"] not in cfg["processing"]["modes"]:
        raise ConfigError(f"scoring.mode {cfg['scoring']['mode']!r} is not in processing.modes")
    sc = cfg["scoring"]
    if not 1 <= sc["k"] <= sc["k_max"]:
        raise ConfigError(f"scoring.k must be in [1, k_max={sc['k_max']}], got {sc['k']}")
    if any(not 1 <= k <= sc["k_max"] for k in sc["k_sweep"]):
        raise ConfigError(f"scoring.k_sweep values must be in [1, k_max={sc['k_max']}]")
    for key in ("n_authentic", "attack_batch"):
        if cfg["evalsets"][key] < 1:
            raise ConfigError(f"evalsets.{key} must be >= 1")
    for name, table in cfg[EXTERNAL_SECTION].items():
        if set(table) != {"dir"} or not isinstance(table["dir"], str):
            raise ConfigError(f"[external.{name}] must have exactly one key: dir = \"folder of <ImageId>.png\"")
        if not cfg["data"]["eval_csv"]:
            raise ConfigError(f"[external.{name}] needs data.eval_csv (its images are matched by ImageId)")
    m = cfg["model"]
    if m["name"] == "custom":
        if not m["entry"] or len(m["input_size"]) != 3:
            raise ConfigError("model.name = 'custom' needs model.entry = 'package.module:build_fn' and "
                              "model.input_size = [C, H, W]")
        if not cfg["features"]["layers"]:
            raise ConfigError("a custom model needs features.layers (see `python -m precompute --list-layers CONFIG`)")
    else:
        from core import zoo

        if m["name"] not in zoo.available():
            raise ConfigError(f"model.name {m['name']!r} is not one of {zoo.available() + ['custom']}")
    if cfg["data"]["dataset"] == "imagefolder" and not (cfg["data"]["train_dir"] and cfg["data"]["eval_dir"]):
        raise ConfigError("data.dataset = 'imagefolder' needs data.train_dir and data.eval_dir")
    from core import attacks as _attacks  # light: ART is imported lazily inside

    known = set(_attacks.available())
    for name in cfg["evalsets"]["attacks"]:
        if name not in known:
            raise ConfigError(f"evalsets.attacks: unknown attack {name!r}; available: {sorted(known)}")
    for name, table in cfg[ATTACK_SECTION].items():
        if name not in known:
            raise ConfigError(f"[attacks.{name}]: unknown attack; available: {sorted(known)}")
        spec = _attacks.param_spec(name)
        for key, value in table.items():
            if key == "n":
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ConfigError(f"attacks.{name}.n must be a positive int, got {value!r}")
                continue
            if key not in spec:
                raise ConfigError(f"attacks.{name}.{key}: unknown parameter; valid: {sorted(spec)} and n")
    return cfg


def apply_override(cfg: dict, assignment: str) -> None:
    """Apply one ``section.key=value`` override in place (value parsed as TOML, else taken as a string)."""
    if "=" not in assignment:
        raise ConfigError(f"--set expects key=value, got {assignment!r}")
    dotted, raw = assignment.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    keys = dotted.strip().split(".")
    over: dict = {}
    node = over
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    _merge(cfg, over)


def load(path: str | Path | None, overrides: list[str] = ()) -> dict:
    """Defaults ← TOML file ← ``--set`` overrides, validated.

    Raises
    ------
    ConfigError
        Unreadable file, unknown key, wrong type or invalid value (before any work).
    """
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found; shipped configs: "
                              f"{sorted(x.name for x in Path(__file__).with_name('configs').glob('*.toml'))}")
        try:
            _merge(cfg, tomllib.loads(p.read_text()))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: not valid TOML ({e})") from e
    for o in overrides:
        apply_override(cfg, o)
    return validate(cfg)


def validate_recorded(recorded: Any) -> dict:
    """A config read back from a run's manifest, checked as :func:`load` checks a file: defaults ← ``recorded``.

    Raises
    ------
    ConfigError
        Not a table, unknown key, wrong type or invalid value.
    """
    if not isinstance(recorded, dict):
        raise ConfigError(f"the recorded config must be a table, got {type(recorded).__name__}")
    cfg = copy.deepcopy(DEFAULTS)
    _merge(cfg, recorded)
    return validate(cfg)


def stage_hash(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (a stage's inputs)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
