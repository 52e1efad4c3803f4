"""The precompute stages, one function each, over one run folder.

Order: ``data → train → features → processing → index → evalsets → neighbours → detectors → thumbs → report →
adaptive``. Each stage has an input key (a hash of the config values it reads and the keys of the stages before
it); a stage whose key and output files match the manifest is skipped. Stages that make many files (evaluation sets,
neighbours, indexes) record each file with its key as soon as it is written, so a killed run resumes at
the file it was writing. The shared inputs are in :mod:`precompute.context`, the evaluation sets in
:mod:`precompute.evalsets`, the ``torchrun`` helpers in :mod:`precompute.distributed`.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from core.knn import index as knn_index
from core.knn import processing
from core.models import zoo
from core.data.datasets import ArraySource
from precompute import adaptive_stage, distributed, evalsets, thumbs, training
from core.config.schema import ATTACK_SECTION, EXTERNAL_SECTION
from core.config.loader import check_sizes, stage_hash
from precompute.context import Context
from precompute.detectors_stage import stage_detectors

__all__ = ["STAGES", "STAGE_NAMES", "Context", "pending", "run_stages", "stage_keys"]

log = logging.getLogger(__name__)


# =================================================================== stages
def stage_data(ctx: Context) -> list[str]:
    """Training labels (and images when they fit: neighbour thumbnails), class names, set sizes."""
    train, test, classes = ctx.sources()
    check_sizes(ctx.cfg, n_train=len(train), n_test=len(test))
    files = ["train_labels.npy", "classes.json"]
    ctx.run.save_npy("train_labels.npy", train.labels.astype(np.int64))
    ctx.run.save_json("classes.json", classes)
    if isinstance(train, ArraySource):
        ctx.run.save_npy("train_images.npy", train.images)
        files.append("train_images.npy")
    else:  # image folders: record where each training image is (thumbnails are stored by the thumbs stage)
        root = Path(train.root).resolve()
        ctx.run.save_json("train_paths.json", {"root": str(root),
                                               "paths": [str(Path(p).resolve().relative_to(root)) for p in train.paths]})
        files.append("train_paths.json")
    return files


def stage_train(ctx: Context) -> list[str]:
    """Train (as ``training.wants_training`` says) or load the attacked model; test predictions and accuracy."""
    train, test, classes = ctx.sources()
    m = ctx.cfg["model"]
    torch.manual_seed(ctx.cfg["seed"])  # the initial weights depend on the seed only
    model, _ = zoo.from_config(m)
    model = model.to(ctx.device)
    info: dict = {"model": m["name"], "weights": m["weights"] if m["name"] != "custom" else m["state_dict"],
                  "classes": len(classes)}
    t0 = time.perf_counter()
    info.update(training.fit(model, train, ctx.cfg, n_classes=len(classes), size=ctx.spec().size, device=ctx.device,
                             progress=ctx.progress, checkpoint=(ctx.run.path, ctx.keys.get("train", ""))))
    ctx.run.manifest.setdefault("summary", {})["train_seconds"] = round(time.perf_counter() - t0, 2)
    ctx.run.save_torch("model.pt", {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    pred = training.predict_source(model.eval(), test, progress=ctx.progress)
    info["test_accuracy"] = float((pred == test.labels).mean()) if len(pred) else float("nan")
    info["n_train"], info["n_test"] = len(train), len(test)
    log.info("test accuracy %.4f", info["test_accuracy"])
    ctx.run.save_npy("test_predictions.npy", pred.astype(np.int64))
    ctx.run.save_json("model.json", info)
    ctx.run.save_json("input.json", {"size": list(ctx.spec().size), "resize": ctx.spec().resize})
    ctx.forget_model()
    return ["model.pt", "test_predictions.npy", "model.json", "input.json"]


def stage_features(ctx: Context) -> list[str]:
    """Training-set activations of every tapped layer, streamed in chunks into memory-mapped ``.npy`` files.

    Rows are written into ``features/<layer>.npy.partial`` chunk by chunk, each finished chunk recorded
    (:class:`precompute.distributed.ChunkProgress`), so a killed run resumes at the first unfinished chunk.
    Under ``torchrun`` each rank extracts its own chunks into the shared files.
    """
    from core.models.features import extract

    train, _, _ = ctx.sources()
    model, layers, fc = ctx.model(), ctx.layers(), ctx.cfg["features"]
    rank, world = distributed.rank_world()
    prog = distributed.ChunkProgress(ctx.run.path / "features", ctx.keys["features"], len(train), fc["chunk"])
    partial = {layer: prog.folder / f"{layer}.npy.partial" for layer in layers}
    if rank == 0:
        _open_partials(ctx, prog, partial)
    distributed.barrier()
    done = prog.finished()
    mine = sorted(done & set(prog.mine(rank, world)))
    mm = {layer: np.load(p, mmap_mode="r+") for layer, p in partial.items()}
    for ci in prog.mine(rank, world):
        if ci in done:
            continue
        s0, s1 = prog.rows(ci)
        extract(model, layers, train.rows(s0, s1), batch_size=fc["batch_size"], device=ctx.device,
                out={la: mm[la][s0:s1] for la in layers}, amp=fc["amp"], progress=ctx.progress,
                desc=f"train features {ci + 1}/{prog.n_chunks}", workers=fc["workers"])
        for arr in mm.values():
            arr.flush()
        mine.append(ci)
        prog.save(rank, mine)
    del mm
    distributed.barrier()
    files = [f"features/{layer}.npy" for layer in layers]
    if rank == 0:
        _close_partials(ctx, prog, partial, files)
    return files


def _open_partials(ctx: Context, prog: distributed.ChunkProgress, partial: dict[str, Path]) -> None:
    """Keep the partial files of an interrupted extraction, or start new ones (and forget any progress)."""
    from core.models.features import FeatureExtractor

    c, h, w = ctx.spec().size
    with torch.no_grad():
        _, probe = FeatureExtractor(ctx.model(), ctx.layers()).to(ctx.device)(
            torch.zeros(1, c, h, w, device=ctx.device))
    shape = {layer: (prog.n, probe[layer].shape[1]) for layer in partial}
    prog.folder.mkdir(parents=True, exist_ok=True)
    done = prog.finished()
    if done and all(p.exists() and np.load(p, mmap_mode="r").shape == shape[la] for la, p in partial.items()):
        log.info("features: resuming, %d of %d chunks already done", len(done), prog.n_chunks)
        return
    prog.clear()
    for layer, p in partial.items():
        np.lib.format.open_memmap(p, mode="w+", dtype=np.float32, shape=shape[layer]).flush()


def _close_partials(ctx: Context, prog: distributed.ChunkProgress, partial: dict[str, Path],
                    files: list[str]) -> None:
    """Check every chunk is done, move the partial files into place and record them."""
    missing = set(range(prog.n_chunks)) - prog.finished()
    if missing:
        raise RuntimeError(f"features: chunks {sorted(missing)[:10]} were not extracted")
    for layer, rel in zip(partial, files):
        os.replace(partial[layer], ctx.run.path / rel)
        ctx.run.record(rel)
    prog.clear()


def stage_processing(ctx: Context) -> list[str]:
    """Fit each processing mode per layer on the training features; what each does, in words
    (:func:`core.knn.processing.describe`), goes to the manifest's ``summary.processing_labels[layer][mode]``."""
    files, labels = [], {}
    for layer, mode in ctx.pairs():
        rel = f"processing/{layer}-{mode}.npz"
        feats = ctx.run.load_npy(f"features/{layer}.npy", mmap=True)
        params = processing.fit(feats, mode, dim=ctx.cfg["processing"]["pca_dim"], seed=ctx.cfg["seed"])
        ctx.run.save_npz(rel, params)
        labels.setdefault(layer, {})[mode] = processing.describe(params, int(feats.shape[1]))
        files.append(rel)
    ctx.run.manifest.setdefault("summary", {})["processing_labels"] = labels
    ctx.run.save_manifest()
    return files


def stage_index(ctx: Context) -> list[str]:
    """A faiss index per (layer, mode) over the processed training features."""
    from tqdm.auto import tqdm

    files = []
    key = ctx.keys["index"]
    for layer, mode in tqdm(ctx.pairs(), desc="indexes", disable=not ctx.progress, dynamic_ncols=True):
        rel, f16 = f"index/{layer}-{mode}.faiss", knn_index.refine_rel(f"index/{layer}-{mode}.faiss")
        pair = [rel, f16] if ctx.run.manifest["files"].get(f16, {}).get("key") == key else [rel]
        if all(ctx.run.item_done(r, key) for r in pair):
            files += pair
            continue
        files.append(rel)
        params = ctx.run.load_npz(f"processing/{layer}-{mode}.npz")
        xb = processing.apply(params, ctx.run.load_npy(f"features/{layer}.npy", mmap=True))
        idx = knn_index.build(xb, kind=ctx.cfg["index"]["kind"], nprobe=ctx.cfg["index"]["nprobe"],
                              ef_search=max(1200, ctx.cfg["scoring"]["k_max"] + 200), seed=ctx.cfg["seed"])
        ctx.run.forget(f16)
        if isinstance(idx, (knn_index.Refined, knn_index.PQScan)):
            ctx.run.save_npy(f16, idx.xb16, key=key)
            files.append(f16)
            idx = idx.coarse
        ctx.run.save_faiss(rel, idx, key=key)
    return files


def stage_evalsets(ctx: Context) -> list[str]:
    """Authentic, authentic errors, random noise, one adversarial set per attack (failed attempts dropped) and
    one per external folder; their statistics go to the manifest's ``summary.sets``."""
    p = evalsets.pick(ctx)
    stats = {"authentic": evalsets.authentic(ctx, p), "errors": evalsets.errors(ctx, p),
             "noise": evalsets.noise(ctx, p)}
    for name in ctx.cfg["evalsets"]["attacks"]:
        stats[name] = evalsets.attack(ctx, p, name)
    for name, table in ctx.cfg[EXTERNAL_SECTION].items():
        stats[name] = evalsets.external(ctx, p, name, table)
    ctx.run.manifest.setdefault("summary", {})["sets"] = stats
    ctx.run.save_manifest()
    return [f"evalsets/{name}.npz" for name in stats]


def stage_neighbours(ctx: Context) -> list[str]:
    """Top-K_max training neighbours (ids, squared distances) of every evaluation image, per (layer, mode)."""
    from tqdm.auto import tqdm

    from core.models.features import extract

    key, k_max = ctx.keys["neighbours"], ctx.cfg["scoring"]["k_max"]
    sets = list(ctx.run.manifest["summary"]["sets"])
    files = []
    params = {(la, mo): ctx.run.load_npz(f"processing/{la}-{mo}.npz") for la, mo in ctx.pairs()}
    indexes: dict = {}
    for name in tqdm(sets, desc="neighbours", disable=not ctx.progress, dynamic_ncols=True):
        rels = {(la, mo): f"neighbours/{name}/{la}-{mo}.npz" for la, mo in ctx.pairs()}
        files += rels.values()
        todo = [p for p, rel in rels.items() if not ctx.run.item_done(rel, key)]
        if not todo:
            continue
        images = ctx.run.load_npz(f"evalsets/{name}.npz")["images"]
        _, feats = extract(ctx.model(), ctx.layers(), images, batch_size=ctx.cfg["features"]["batch_size"],
                           device=ctx.device) if len(images) else (None, None)
        for la, mo in todo:
            if len(images):
                if (la, mo) not in indexes:
                    indexes[(la, mo)] = knn_index.open_saved(ctx.run, f"index/{la}-{mo}.faiss")
                D, I = knn_index.search(indexes[(la, mo)], processing.apply(params[(la, mo)], feats[la]), k_max,
                                        device=ctx.device)
            else:
                D, I = np.empty((0, k_max), np.float32), np.empty((0, k_max), np.int64)
            ctx.run.save_npz(rels[(la, mo)], {"I": I.astype(np.int32), "D": D.astype(np.float32)}, key=key)
    return files


def stage_thumbs(ctx: Context) -> list[str]:
    """Thumbnails of the training images shown as neighbours, for runs that do not keep the training images."""
    return [] if ctx.run.is_recorded("train_images.npy") else thumbs.build(ctx)


def stage_report(ctx: Context) -> list[str]:
    """Split, operating point, per-attack figures with intervals, findings and the paper's tables on the test
    split -> report.json and report.md."""
    from precompute.report import build_report, render_markdown

    rep = build_report(ctx.run, ctx.cfg)
    ctx.run.save_json("report.json", rep)
    ctx.run.save_text("report.md", render_markdown(rep))
    summary = ctx.run.manifest["summary"]
    summary.pop("headline", None)
    summary["split"], summary["operating_point"] = rep["split"], rep["operating_point"]
    ctx.run.save_manifest()
    return ["report.json", "report.md"]


#: (name, function, config sections whose values are the stage's inputs)
STAGES: list[tuple[str, Callable[[Context], list[str]], tuple[str, ...]]] = [
    ("data", stage_data, ("seed", "data")),
    ("train", stage_train, ("model",)),
    ("features", stage_features, ("features",)),
    ("processing", stage_processing, ("processing",)),
    ("index", stage_index, ("index", "scoring.k_max")),
    ("evalsets", stage_evalsets, ("evalsets", ATTACK_SECTION, EXTERNAL_SECTION)),
    ("neighbours", stage_neighbours, ("scoring.k_max",)),
    ("detectors", stage_detectors, ("detectors", "scoring", "processing.modes", "evaluation")),
    ("thumbs", stage_thumbs, ("thumbs", "scoring.mode")),
    ("report", stage_report, ("scoring", "evaluation")),
    ("adaptive", adaptive_stage.stage_adaptive, ("adaptive",)),
]
STAGE_NAMES = [s[0] for s in STAGES]
#: Stages whose artefacts changed meaning; a run made before keeps its stale key and is recomputed from there.
#: processing 2: labels of what each fit does; evalsets 2: the paper's success rule (prediction changed);
#: detectors 2: the validation / test split no longer depends on the order of the sets (the first stage that splits).
STAGE_VERSIONS = {"processing": 2, "evalsets": 2, "detectors": 2}


def _cfg_value(cfg: dict, dotted: str):
    v = cfg
    for p in dotted.split("."):
        v = v[p]
    return v


def stage_keys(cfg: dict) -> dict[str, str]:
    """Input key of every stage: its config values chained with the previous stage's key."""
    keys, prev = {}, ""
    for name, _, sections in STAGES:
        parts = [prev, name, [_cfg_value(cfg, s) for s in sections], cfg["seed"]]
        if name in STAGE_VERSIONS:
            parts.append(STAGE_VERSIONS[name])
        prev = stage_hash(*parts)
        keys[name] = prev
    return keys


def pending(ctx: Context) -> list[str]:
    """Stages that would run (first not-done stage and everything after it)."""
    ctx.keys = stage_keys(ctx.cfg)
    for i, (name, _, _) in enumerate(STAGES):
        if not ctx.run.stage_done(name, ctx.keys[name]):
            return STAGE_NAMES[i:]
    return []


def run_stages(ctx: Context, *, from_stage: str | None = None,
               on_stage: Callable[[str, float, bool], None] | None = None) -> dict[str, float]:
    """Run every pending stage in order; return {stage: seconds} (0 for skipped ones).

    Under ``torchrun`` (WORLD_SIZE > 1) rank 0 runs every stage and the manifest; the other ranks join the
    features stage (their share of the chunks) and then exit.
    """
    ctx.keys = stage_keys(ctx.cfg)
    rank, world = distributed.rank_world()
    if rank == 0:
        _open_run(ctx, from_stage)
    distributed.barrier()
    times: dict[str, float] = {}
    redo = False
    for i, (name, fn, _) in enumerate(STAGES):
        sharded = world > 1 and i <= STAGE_NAMES.index("features")
        if sharded:
            ctx.reload_run()  # rank 0 may have written the manifest
        if not redo and ctx.run.stage_done(name, ctx.keys[name]):
            times[name] = 0.0
            if on_stage and rank == 0:
                on_stage(name, ctx.run.manifest["stages"][name]["seconds"], True)
        else:
            redo = True  # everything after a recomputed stage is recomputed too
            if rank == 0 or name == "features":
                times[name] = _run_one(ctx, name, fn, rank == 0, on_stage)
        if sharded:
            distributed.barrier()  # the other ranks wait for rank 0's stages up to the features
            if name == "features":
                distributed.close()
                if rank != 0:
                    break  # the rest is rank 0's
    return times


def _open_run(ctx: Context, from_stage: str | None) -> None:
    """Invalidate from ``from_stage`` on, remove leftovers of a killed run, write config and summary headers."""
    if from_stage is not None:
        again = STAGE_NAMES[STAGE_NAMES.index(from_stage):]
        ctx.run.invalidate(again, item_keys={ctx.keys[s] for s in again})
    removed = ctx.run.clean_tmp()
    if removed:
        log.info("removed %d leftover temporary files from a killed run", removed)
    ctx.run.manifest["config"] = ctx.cfg
    ctx.run.manifest.setdefault("summary", {}).update(
        layers=ctx.layers(), modes=list(ctx.cfg["processing"]["modes"]), model=ctx.cfg["model"]["name"],
        k_max=ctx.cfg["scoring"]["k_max"], defaults={k: ctx.cfg["scoring"][k] for k in ("k", "fn", "mode")})
    ctx.run.manifest["versions"] = _versions()
    ctx.run.save_manifest()


def _run_one(ctx: Context, name: str, fn: Callable[[Context], list[str]], record: bool,
             on_stage: Callable[[str, float, bool], None] | None) -> float:
    """Run one stage; with ``record`` (rank 0) mark it done in the manifest and report it."""
    t0 = time.perf_counter()
    files = fn(ctx)
    seconds = time.perf_counter() - t0
    if record:
        ctx.run.mark_stage(name, ctx.keys[name], files, seconds)
        if on_stage:
            on_stage(name, seconds, False)
    return seconds


def _versions() -> dict[str, str]:
    import platform

    import faiss
    import scipy
    import sklearn
    import torchvision

    return {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "faiss": faiss.__version__, "scipy": scipy.__version__,
            "scikit-learn": sklearn.__version__, "cpu_count": str(os.cpu_count())}
