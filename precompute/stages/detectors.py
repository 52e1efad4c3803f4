"""The ``detectors`` stage: fit the peer detectors of :mod:`core.peers` on the run's validation split, store
their statistics, thresholds and the score of every evaluation image (see :mod:`core.peers.store`).

Each detector's files are recorded with the stage key as they are written, so a killed stage resumes at the
first unfinished detector.
"""
from __future__ import annotations

import logging

import numpy as np

from core.evaluation.report import PROTOCOLS
from core.evaluation.rundata import RunData
from core.evaluation.splits import split_sources
from core.models.features import extract
from core.peers import fitting, store
from core.peers.base import Inputs, TrainSet, Validation, concat_inputs, subset_inputs
from precompute.context import Context

__all__ = ["stage_detectors", "run_layout", "set_inputs"]

log = logging.getLogger(__name__)


def run_layout(cfg: dict, layers: list[str]) -> fitting.RunLayout:
    sc = cfg["scoring"]
    return fitting.RunLayout(list(layers), list(cfg["processing"]["modes"]), sc["mode"], sc["fn"], int(sc["k"]),
                             int(sc["k_max"]))


def set_inputs(data: RunData, name: str, probs: np.ndarray, feats: dict[str, np.ndarray]) -> Inputs:
    """:class:`Inputs` of evaluation set ``name`` from its forward pass and its stored neighbours."""
    def nb(layer: str, mode: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = data.neighbours(name, layer, mode)
        return n.I[:, :k], n.D[:, :k]

    return Inputs(np.asarray(data.evalset(name)["predicted"]), probs, feats, nb, data.train_labels)


def stage_detectors(ctx: Context) -> list[str]:
    """Fit every enabled detector, store its fits, thresholds and scores of every evaluation set."""
    import torch

    cfg, key = ctx.cfg, ctx.keys["detectors"]
    layout = run_layout(cfg, ctx.layers())
    entries: dict = {}
    for name in cfg["detectors"]["enabled"]:
        entries.update(fitting.instances(name, layout))
    summary = ctx.run.manifest.setdefault("summary", {})
    summary["detectors"] = list(entries)
    ctx.run.save_manifest()
    if not entries:
        return []
    data = RunData(ctx.run, verify=False)
    ev, seed = cfg["evaluation"], int(cfg["seed"])
    positive_sets, rule = PROTOCOLS[ev["protocol"]]
    sets = [s for s in data.set_names if len(data.evalset(s)["source"])]
    inputs: dict[str, Inputs] = {}
    for s in sets:
        logits, feats = extract(ctx.model(), ctx.layers(), np.asarray(data.evalset(s)["images"]),
                                batch_size=cfg["features"]["batch_size"], device=ctx.device)
        probs = torch.softmax(torch.from_numpy(logits).float(), 1).numpy()
        inputs[s] = set_inputs(data, s, probs, feats)
    split = split_sources({s: data.evalset(s)["source"] for s in data.set_names}, ev["validation_share"], seed)
    val_side = {s: split.mask(data.evalset(s)["source"], "validation") for s in sets}
    pos_sets = [s for s in positive_sets if s in inputs]
    positives = concat_inputs([subset_inputs(inputs[s], val_side[s]) for s in pos_sets])
    pos_src = np.concatenate([np.asarray(data.evalset(s)["source"])[val_side[s]] for s in pos_sets])
    calibration = np.isin(pos_src, split_sources(pos_src, 0.5, seed + 1).validation)
    attacks = {a: subset_inputs(inputs[a], val_side[a]) for a in data.attack_sets if a in inputs}
    val = Validation(positives, {a: x for a, x in attacks.items() if len(x)}, calibration)
    train = TrainSet(data.train_labels, lambda la: ctx.run.load_npy(f"features/{la}.npy", mmap=True))
    files = []
    for entry, det in entries.items():
        meta_rel = store.meta_rel(entry)
        if ctx.run.item_done(meta_rel, key):
            files += [f for f in ctx.run.manifest["files"] if f.startswith(f"{store.ROOT}/{entry}/")]
            continue
        if det.supervised and len(val.attacks) < 2:
            log.warning("detector %s skipped: a supervised detector is fitted leave-one-attack-out and needs the "
                        "validation adversarials of at least two attacks (this run has %d)", entry, len(val.attacks))
            continue
        fits = fitting.fit_all(det, train, val, rule=rule, target_tpr=ev["target_tpr"])
        meta = {"name": det.name, "entry": entry, "label": det.label, "supervised": det.supervised,
                "calibrated": det.calibrated, "params": det.params(), "rule": rule, "fits": {}}
        for fit, f in fits.items():
            scores, ms = fitting.score_sets(f.detector, inputs)
            state = f.detector.state()
            if state:
                files.append(str(store.state_rel(entry, fit)))
                ctx.run.save_npz(store.state_rel(entry, fit), state, key=key)
            ctx.run.save_npz(store.scores_rel(entry, fit), scores, key=key)
            files.append(store.scores_rel(entry, fit))
            meta["fits"][fit] = {"threshold": float(f.threshold), "fit_s": round(f.fit_s, 4),
                                 "score_ms": round(ms, 5)}
        ctx.run.save_json(meta_rel, meta, key=key)
        files.append(meta_rel)
        log.info("detector %s: %d fit(s), fit %.2f s", entry, len(fits), sum(f.fit_s for f in fits.values()))
    return files
