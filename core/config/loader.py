"""Precompute configuration: TOML files under ``precompute/configs/``, type-checked, unknown keys refused.

Every key has a default in :data:`core.config.schema.DEFAULTS` (with a comment in the shipped TOML files). A config file
overrides some of them; ``--set section.key=value`` overrides after that (the value is parsed as TOML, so
``--set evalsets.n_authentic=200`` is an int and ``--set model.weights='"none"'`` or ``model.weights=none``
a string). Anything not in the schema, of the wrong type or outside its range (:data:`core.config.schema.RANGES`) is an error
before any work starts.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import tomllib

from core.config.schema import (
    ATTACK_N,
    ATTACK_SECTION,
    AUGMENTATIONS,
    AUTO_KEYS,
    CHOICES,
    DEFAULTS,
    EXTERNAL_SECTION,
    RANGES,
    Range,
)
from core.errors import ConfigError

# The schema's names are part of this module's API (config.DEFAULTS, config.ConfigError...).
__all__ = ["load", "apply_override", "validate",
           "validate_recorded", "stage_hash", "check_sizes"]


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
        elif where in AUTO_KEYS:
            if value != "auto" and not _type_ok(AUTO_KEYS[where](), value):
                raise ConfigError(f"'{where}' must be \"auto\" or {AUTO_KEYS[where].__name__}, got {value!r}; "
                                  f"fix: --set {where}='\"auto\"'")
            base[key] = value
        else:
            if not _type_ok(base[key], value):
                hint = ""
                if where in RANGES:
                    r = RANGES[where]
                    hint = (f"; allowed: {_allowed(r, r.lo, r.hi)}; fix: --set {where}="
                            f"{_toml(_get(DEFAULTS, tuple(where.split('.'))))}")
                raise ConfigError(f"'{where}' must be {type(base[key]).__name__}, got {value!r}{hint}")
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


def _in_range(value: Any, r: Range, lo: float, hi: float) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if r.integer and not isinstance(value, int):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return (lo < value if r.lo_open else lo <= value) and value <= hi


def _toml(value: Any) -> str:
    return json.dumps(value).replace(", ", ",")


def _allowed(r: Range, lo: float | str, hi: float | str) -> str:
    return f"{'integers' if r.integer else 'finite numbers'} in {'(' if r.lo_open else '['}{lo}, {hi}]"


def _check_value(where: str, value: Any, r: Range, lo: float, hi: float, default: Any,
                 bounds: str = "") -> None:
    """Raise a one-line :class:`ConfigError` unless ``value`` (each element of a list) lies in ``r``."""
    allowed = _allowed(r, lo, hi) + bounds
    if isinstance(value, list):
        bad = [v for v in value if not _in_range(v, r, lo, hi)]
        if not bad:
            return
        fix = [v for v in value if _in_range(v, r, lo, hi)] or [hi]
        raise ConfigError(f"'{where}' = {_toml(value)}: {bad[0]!r} is out of range; allowed: {allowed}; "
                          f"fix: --set {where}={_toml(fix)}")
    if _in_range(value, r, lo, hi):
        return
    fix = default if _in_range(default, r, lo, hi) else hi
    raise ConfigError(f"'{where}' = {value!r} is out of range; allowed: {allowed}; fix: --set {where}={_toml(fix)}")


def check_ranges(cfg: dict) -> None:
    """Refuse any numeric value outside :data:`RANGES` (NaN, inf, floats for integer keys, negative sizes...)."""
    for dotted, r in RANGES.items():
        keys = tuple(dotted.split("."))
        lo, hi = (_get(cfg, tuple(b.split("."))) if isinstance(b, str) else b for b in (r.lo, r.hi))
        bounds = "".join(f" ({b} = {_get(cfg, tuple(b.split('.')))})" for b in (r.lo, r.hi) if isinstance(b, str))
        _check_value(dotted, _get(cfg, keys), r, lo, hi, _get(DEFAULTS, keys), bounds)
    n_train, k_max = cfg["data"]["n_train"], cfg["scoring"]["k_max"]
    if n_train and k_max > n_train:
        raise ConfigError(f"'scoring.k_max' = {k_max} is more than data.n_train = {n_train} training images; "
                          f"fix: --set scoring.k_max={n_train}")


def _get(cfg: dict, keys: tuple[str, ...]):
    for k in keys:
        cfg = cfg[k]
    return cfg


def validate(cfg: dict) -> dict:
    """Check ranges, choices, paths and the attack tables; return ``cfg`` (raises :class:`ConfigError`)."""
    check_ranges(cfg)
    check_paths(cfg)
    for path, choices in CHOICES.items():
        v = cfg
        for p in path:
            v = v[p]
        for x in (v if isinstance(v, list) else [v]):  # a list key: each element
            if x not in choices:
                raise ConfigError(f"'{'.'.join(path)}' must be one of {choices}, got {x!r}")
    if not cfg["name"] or "/" in cfg["name"] or cfg["name"].startswith("."):
        raise ConfigError(f"'name' must be a plain folder name, got {cfg['name']!r}")
    from core.knn.processing import MODES

    for m in cfg["processing"]["modes"]:
        if m not in MODES:
            raise ConfigError(f"processing.modes: unknown mode {m!r}; use one of {MODES}")
    if cfg["evaluation"]["validation_share"] >= 1:
        raise ConfigError("'evaluation.validation_share' must be under 1 (the rest is the test split); "
                          "fix: --set evaluation.validation_share=0.5")
    if cfg["scoring"]["mode"] not in cfg["processing"]["modes"]:
        raise ConfigError(f"scoring.mode {cfg['scoring']['mode']!r} is not in processing.modes")
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
        from core.models import zoo

        if m["name"] not in zoo.available():
            raise ConfigError(f"model.name {m['name']!r} is not one of {zoo.available() + ['custom']}")
    _check_training(cfg)
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
                _check_value(f"{ATTACK_SECTION}.{name}.n", value, ATTACK_N, ATTACK_N.lo, ATTACK_N.hi, 1000)
                continue
            if key == "targeted":
                modes = _attacks.ATTACKS[name].modes
                if not isinstance(value, bool) or value not in modes:
                    raise ConfigError(f"attacks.{name}.targeted = {value!r}: {name} supports targeted = "
                                      f"{' or '.join(str(m).lower() for m in modes)}")
                continue
            if key not in spec:
                raise ConfigError(f"attacks.{name}.{key}: unknown parameter; valid: {sorted(spec)}, targeted and n")
            p = spec[key]
            _check_value(f"{ATTACK_SECTION}.{name}.{key}", value, Range(p["min"], p["max"], p["type"] == "int"),
                         p["min"], p["max"], p["default"])
    return cfg


def _check_training(cfg: dict) -> None:
    """Refuse unknown augmentations and input-channel changes of models not trained here."""
    m = cfg["model"]
    for a in m["augment"]:
        if a not in AUGMENTATIONS:
            raise ConfigError(f"model.augment: unknown augmentation {a!r}; use some of {list(AUGMENTATIONS)}")
    if m["channels"] or (m["image_size"] and m["name"] == "fmnist-cnn"):
        from core.models import zoo

        if m["name"] == "custom" or not zoo.entry(m["name"]).trained_here:
            raise ConfigError(f"'model.channels' = {m['channels']} only applies to models trained here "
                              f"(fmnist-cnn); fix: --set model.channels=0")
        if m["image_size"] and m["image_size"] < 8:
            raise ConfigError(f"'model.image_size' = {m['image_size']} is under 8, the smallest input "
                              f"{m['name']} takes; fix: --set model.image_size=8")


def check_sizes(cfg: dict, *, n_train: int, n_test: int) -> None:
    """Refuse sizes the data cannot fill, once the training and test set sizes are known (before any work).

    Parameters
    ----------
    cfg : dict
        The checked config.
    n_train, n_test : int, keyword-only
        Training and test images (after ``data.n_train`` / ``data.n_test``).

    Raises
    ------
    ConfigError
        One line naming every key too large, its value and limit, and the ``--set`` that fixes them all.
    """
    import logging

    log = logging.getLogger(__name__)
    sc, es = cfg["scoring"], cfg["evalsets"]
    bad: list[tuple[str, Any, str, str]] = []  # key, value, limit, fix value
    if sc["k_max"] > n_train:
        bad.append(("scoring.k_max", sc["k_max"], f"the {n_train} training images", str(n_train)))
    if sc["k"] > n_train:
        bad.append(("scoring.k", sc["k"], f"the {n_train} training images", str(n_train)))
    over = [k for k in sc["k_sweep"] if k > n_train]
    if over:
        fix = [k for k in sc["k_sweep"] if k <= n_train] or [n_train]
        bad.append(("scoring.k_sweep", _toml(sc["k_sweep"]), f"the {n_train} training images ({over[0]} is more)",
                    _toml(fix)))
    if es["n_authentic"] > n_test:
        bad.append(("evalsets.n_authentic", es["n_authentic"], f"the {n_test} test images", str(n_test)))
    if bad:
        what = "; ".join(f"'{key}' = {value} is more than {limit}" for key, value, limit, _ in bad)
        raise ConfigError(f"{what}; fix: {' '.join(f'--set {k}={v}' for k, _, _, v in bad)}")
    if "pca" in cfg["processing"]["modes"] and cfg["processing"]["pca_dim"] > n_train:
        log.info("processing.pca_dim = %d is more than the %d training images: PCA keeps at most %d components",
                 cfg["processing"]["pca_dim"], n_train, n_train)
    for name in es["attacks"]:
        n = cfg[ATTACK_SECTION].get(name, {}).get("n")
        if n is not None and n > es["n_authentic"]:
            log.info("attacks.%s.n = %d is more than evalsets.n_authentic = %d: at most %d images are attacked",
                     name, n, es["n_authentic"], es["n_authentic"])


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
