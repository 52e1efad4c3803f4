"""The evaluation sets, one helper each: authentic, authentic errors, random noise, one per attack, external.

Every set is ``evalsets/<name>.npz`` with ``images`` uint8 (n, H, W, C), ``true``, ``predicted``, ``target`` (-1:
untargeted) and ``source`` (row of the test source), int64 (n,). Each helper writes its set unless it is already
recorded under the stage's key, and returns the set's statistics (:func:`set_stats`).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.config.schema import ATTACK_SECTION, EXTERNAL_SECTION
from core.data.datasets import SourceBase, find_by_id, to_float
from core.errors import DatasetNotFound
from core.evaluation.paper_figures import perturbation_norms
from core.evaluation.report import success_rates
from precompute.context import Context

__all__ = ["Picked", "pick", "authentic", "errors", "noise", "noise_delta", "attack", "external", "kept", "save_set",
           "set_stats"]

log = logging.getLogger(__name__)


@dataclass
class Picked:
    """The test rows the sets start from.

    Attributes
    ----------
    test : SourceBase
    predicted : int64 ndarray (len(test),)
        The model's prediction of every test row.
    auth_idx, err_idx : int64 ndarray
        Rows of the authentic (rightly classified) and error (misclassified) sets.
    n_wrong : int
        Misclassified test rows (what the errors set was drawn from).
    images : uint8 ndarray (len(auth_idx), H, W, C)
        The authentic images.
    n_classes : int
    """

    test: SourceBase
    predicted: np.ndarray
    auth_idx: np.ndarray
    err_idx: np.ndarray
    n_wrong: int
    images: np.ndarray
    n_classes: int

    @property
    def true(self) -> np.ndarray:
        """Labels of the authentic images."""
        return self.test.labels[self.auth_idx]

    @property
    def pos_of(self) -> dict[int, int]:
        """Test row -> position in the authentic set."""
        return {int(src): i for i, src in enumerate(self.auth_idx)}


def pick(ctx: Context) -> Picked:
    """Draw the authentic and error rows (``evalsets.n_authentic`` / ``n_errors``) by the run's seed."""
    _, test, classes = ctx.sources()
    es = ctx.cfg["evalsets"]
    pred = ctx.run.load_npy("test_predictions.npy")
    rng = np.random.default_rng(ctx.cfg["seed"])
    correct, wrong = np.flatnonzero(pred == test.labels), np.flatnonzero(pred != test.labels)
    auth_idx = rng.permutation(correct)[:es["n_authentic"]]
    err_idx = rng.permutation(wrong)[:es["n_errors"]]
    return Picked(test, pred, auth_idx, err_idx, len(wrong), test.get(auth_idx), len(classes))


def save_set(ctx: Context, name: str, images: np.ndarray, true: np.ndarray, pred: np.ndarray,
             target: np.ndarray, source: np.ndarray, **extra: np.ndarray) -> str:
    """Write ``evalsets/<name>.npz`` under the evalsets key; return its path in the run."""
    rel = f"evalsets/{name}.npz"
    ctx.run.save_npz(rel, {"images": images, "true": true.astype(np.int64), "predicted": pred.astype(np.int64),
                           "target": target.astype(np.int64), "source": source.astype(np.int64), **extra},
                     key=ctx.keys["evalsets"])
    return rel


def set_stats(z: dict[str, np.ndarray], p: Picked, attempted: int) -> dict:
    """Size, attempts, success rates and mean L2 / Linf perturbation (in [0, 1] pixel units) of a stored set.

    ``success_changed``: share of attempts whose stored image is predicted other than its true class (the
    paper's rule); ``success_target``: share that reached its target (None for an untargeted set);
    ``success_rate``: stored images / attempts.
    """
    n = int(len(z["true"]))
    out = {"n": n, "attempted": int(z["attempted"]) if "attempted" in z else attempted}
    out["success_rate"] = n / max(out["attempted"], 1)
    rates = success_rates(z["true"], z["predicted"], z["target"], float(out["attempted"]))
    out["success_changed"], out["success_target"] = rates["changed"], rates["target"]
    if n:
        pos_of = p.pos_of
        orig = p.images[[pos_of[int(s)] for s in z["source"]]]
        norms = perturbation_norms(orig, z["images"])
        out["mean_l2"], out["mean_linf"] = float(norms.l2.mean()), float(norms.linf.mean())
    if "params" in z:
        out["params"] = json.loads(str(z["params"]))
    return out


def kept(true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Attempts (n,) that count as adversarials: the prediction on the stored image differs from ``true``."""
    return np.asarray(predicted) != np.asarray(true)


def _todo(ctx: Context, name: str) -> bool:
    return not ctx.run.item_done(f"evalsets/{name}.npz", ctx.keys["evalsets"])


def authentic(ctx: Context, p: Picked) -> dict:
    """Rightly classified test images."""
    if _todo(ctx, "authentic"):
        save_set(ctx, "authentic", p.images, p.true, p.predicted[p.auth_idx], np.full(len(p.auth_idx), -1),
                 p.auth_idx)
    return {"n": len(p.auth_idx), "attempted": len(p.auth_idx)}


def errors(ctx: Context, p: Picked) -> dict:
    """Misclassified test images (``attempted``: every misclassified one)."""
    if _todo(ctx, "errors"):
        idx = p.err_idx
        save_set(ctx, "errors", p.test.get(idx), p.test.labels[idx], p.predicted[idx], np.full(len(idx), -1), idx)
    return {"n": len(p.err_idx), "attempted": p.n_wrong}


def noise_delta(kind: str, eps: float, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Noise in [0, 1] pixel units, float64 ``shape``: ``uniform`` U(-eps, eps) or ``sign`` eps * sign(N(0, 1))
    per pixel (the paper's authors' noise)."""
    rng = np.random.default_rng([seed, 1])
    if kind == "uniform":
        return rng.uniform(-eps, eps, size=shape)
    if kind == "sign":
        return eps * np.sign(rng.standard_normal(size=shape))
    raise ValueError(f"unknown noise {kind!r}; use 'uniform' or 'sign'")


def noise(ctx: Context, p: Picked) -> dict:
    """Authentic images plus noise of size ``noise_eps`` (:func:`noise_delta`), kept where still rightly
    classified."""
    if _todo(ctx, "noise"):
        es = ctx.cfg["evalsets"]
        delta = noise_delta(es.get("noise", "uniform"), es["noise_eps"], p.images.shape, ctx.cfg["seed"])
        noisy = np.clip(np.rint(p.images + delta * 255), 0, 255).astype(np.uint8)
        pred = ctx.model().predict(noisy)
        keep = pred == p.true
        save_set(ctx, "noise", noisy[keep], p.true[keep], pred[keep], np.full(int(keep.sum()), -1),
                 p.auth_idx[keep])
    return set_stats(ctx.run.load_npz("evalsets/noise.npz"), p, len(p.auth_idx))


def _targets(ctx: Context, p: Picked, name: str, n: int) -> np.ndarray:
    """A random wrong class per image, or the CSV's ``TargetClass`` where that is a valid wrong class."""
    true = p.true[:n]
    arng = np.random.default_rng([ctx.cfg["seed"], 2, sum(map(ord, name))])
    target = (true + arng.integers(1, p.n_classes, size=n)) % p.n_classes
    given = getattr(p.test, "targets", None)
    if given is not None:
        given = given[p.auth_idx[:n]]
        usable = (given >= 0) & (given < p.n_classes) & (given != true)
        target = np.where(usable, given, target)
    return target


def attack(ctx: Context, p: Picked, name: str) -> dict:
    """Attack ``name`` on the first ``n`` authentic images (``attacks.<name>.n``).

    An attempt is kept when the model's prediction on the stored uint8 image differs from the true class (the
    paper's rule, targeted or not); a targeted set stores its targets, so the target-reached rate stays known.
    """
    from core import attacks

    table = dict(ctx.cfg[ATTACK_SECTION].get(name, {}))
    n = min(table.pop("n", len(p.auth_idx)), len(p.auth_idx))
    summary = ctx.run.manifest["summary"]
    if _todo(ctx, name):
        t0, target, seed = time.perf_counter(), _targets(ctx, p, name, n), ctx.cfg["seed"]
        x, bs, parts = to_float(p.images[:n]), ctx.cfg["evalsets"]["attack_batch"], []
        for s in range(0, n, bs):
            r = attacks.run_attack(name, ctx.model(), x[s:s + bs], target=target[s:s + bs], seed=seed + s,
                                   progress=ctx.progress, **table)
            parts.append((attacks.to_uint8(r.x_adv), r.predicted))
            log.info("%s: %d/%d", name, min(s + bs, n), n)
        adv, pred = (np.concatenate(a) for a in zip(*parts))
        ok = kept(p.true[:n], pred)
        tgt = target if r.targeted else np.full(n, -1)
        summary.setdefault("attack_seconds", {})[name] = round(time.perf_counter() - t0, 2)
        save_set(ctx, name, adv[ok], p.true[:n][ok], pred[ok], tgt[ok], p.auth_idx[:n][ok],
                 attempted=np.array(n), params=np.array(json.dumps(r.params, sort_keys=True)))
    seconds = summary.get("attack_seconds", {}).get(name)
    return {**set_stats(ctx.run.load_npz(f"evalsets/{name}.npz"), p, n), "seconds": seconds}


def external(ctx: Context, p: Picked, name: str, table: dict) -> dict:
    """Adversarial images made elsewhere: ``<table["dir"]>/<ImageId>.png`` per authentic CSV row; kept where the
    model's prediction differs from the label."""
    if _todo(ctx, name):
        from core.uploads.read import read_upload
        from core.uploads.transforms import image_to_array

        (c, h, w), resize = ctx.spec().size, ctx.spec().resize
        ids = [p.test.ids[i] for i in p.auth_idx]
        have = [j for j, i in enumerate(ids) if _exists_by_id(table["dir"], i)]
        imgs = np.stack([image_to_array(read_upload(find_by_id(table["dir"], ids[j]).read_bytes()), size=(h, w),
                                        channels=c, resize=resize) for j in have]) if have else \
            np.empty((0, h, w, c), np.uint8)
        pred = ctx.model().predict(imgs) if have else np.empty(0, np.int64)
        hv = np.asarray(have, dtype=np.int64)
        keep = pred != p.true[hv]  # failed adversarials (still right) are dropped
        save_set(ctx, name, imgs[keep], p.true[hv][keep], pred[keep], np.full(int(keep.sum()), -1),
                 p.auth_idx[hv][keep], attempted=np.array(len(have)), params=np.array(json.dumps(table)))
    return set_stats(ctx.run.load_npz(f"evalsets/{name}.npz"), p, len(p.auth_idx))


def _exists_by_id(folder: str, image_id: str) -> bool:
    try:
        find_by_id(Path(folder), image_id)
        return True
    except DatasetNotFound:
        return False


def stage_evalsets(ctx: Context) -> list[str]:
    """Authentic, authentic errors, random noise, one adversarial set per attack (failed attempts dropped) and
    one per external folder; their statistics go to the manifest's ``summary.sets``."""
    p = pick(ctx)
    stats = {"authentic": authentic(ctx, p), "errors": errors(ctx, p),
             "noise": noise(ctx, p)}
    for name in ctx.cfg["evalsets"]["attacks"]:
        stats[name] = attack(ctx, p, name)
    for name, table in ctx.cfg[EXTERNAL_SECTION].items():
        stats[name] = external(ctx, p, name, table)
    ctx.run.manifest.setdefault("summary", {})["sets"] = stats
    ctx.run.save_manifest()
    return [f"evalsets/{name}.npz" for name in stats]
