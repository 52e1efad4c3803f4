"""The precompute stages, one function each, over one run folder.

Order: ``data → train → features → processing → index → evalsets → neighbours → report``. Each stage has
an input key (a hash of the config values it reads and the keys of the stages before it); a stage whose
key and output files match the manifest is skipped. Stages that make many files (evaluation sets,
neighbours, indexes) record each file with its key as soon as it is written, so a killed run resumes at
the file it was writing.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core import index as knn_index
from core import processing, zoo
from core.artefacts import RunDir, atomic_path
from core.data import ArraySource, CsvSource, FolderSource, ImageSource, load_fashion_mnist, to_float
from precompute.config import ATTACK_SECTION, EXTERNAL_SECTION, stage_hash

__all__ = ["STAGES", "Context", "run_stages"]

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What the stages share: config, run folder, device, and lazily loaded inputs."""

    cfg: dict
    run: RunDir
    device: torch.device
    progress: bool = True
    keys: dict[str, str] = field(default_factory=dict)
    _cache: dict = field(default_factory=dict)

    # -------------------------------------------------------------- inputs
    def spec(self) -> zoo.InputSpec:
        """Input size and resize of the run's model."""
        if "spec" not in self._cache:
            self._cache["spec"] = zoo.from_config(self.cfg["model"])[1] if self.cfg["model"]["name"] == "custom" \
                else _zoo_spec(self.cfg["model"])
        return self._cache["spec"]

    def sources(self) -> tuple[ImageSource, ImageSource, list[str]]:
        """(train source, test source, class names), subsetted as configured."""
        if "sources" not in self._cache:
            d = self.cfg["data"]
            if d["dataset"] == "fashion-mnist":
                train = load_fashion_mnist("train", root=d["root"] or None, download=d["download"])
                test = load_fashion_mnist("test", root=d["root"] or None, download=d["download"])
                classes = zoo.FASHION_MNIST_CLASSES
            else:
                c, h, w = self.spec().size
                train = FolderSource(d["train_dir"], size=(h, w), channels=c, resize=self.spec().resize)
                if d["eval_csv"]:
                    test = CsvSource(d["eval_csv"], d["eval_dir"], size=(h, w), channels=c,
                                     resize=self.spec().resize, label_offset=d["csv_label_offset"])
                else:
                    test = FolderSource(d["eval_dir"], size=(h, w), channels=c, resize=self.spec().resize)
                    if test.classes != train.classes:
                        raise ValueError(f"{d['eval_dir']} and {d['train_dir']} have different class folders")
                classes = _class_names(self.cfg, train.classes)
            train = _subset(train, d["n_train"], self.cfg["seed"])
            test = _subset(test, d["n_test"], self.cfg["seed"] + 1)
            self._cache["sources"] = (train, test, list(classes))
        return self._cache["sources"]

    def model(self) -> zoo.Classifier:
        """The attacked model with the run's weights, in eval mode, on the run's device."""
        if "model" not in self._cache:
            m = _build_random(self.cfg["model"])
            m.load_state_dict(self.run.load_torch("model.pt"))
            self._cache["model"] = m.eval().to(self.device)
        return self._cache["model"]

    def layers(self) -> list[str]:
        return self.cfg["features"]["layers"] or zoo.layers(self.cfg["model"]["name"])

    def pairs(self) -> list[tuple[str, str]]:
        return [(layer, mode) for layer in self.layers() for mode in self.cfg["processing"]["modes"]]


def _zoo_spec(m: dict) -> zoo.InputSpec:
    """Input spec of a zoo model without building it."""
    e = zoo.entry(m["name"])
    c, h, w = e.input_size
    if m["image_size"]:
        h = w = m["image_size"]
    resize = m["resize"] or (e.resize if (h, w) == e.input_size[1:] else round(h * e.resize / e.input_size[1]))
    return zoo.InputSpec((c, h, w), resize)


def _build_random(m: dict) -> zoo.Classifier:
    """The run's architecture (weights to be loaded from model.pt): no weight download or user state dict."""
    return zoo.from_config({**m, "weights": "none", "state_dict": ""})[0]


def _class_names(cfg: dict, folders: list[str]) -> list[str]:
    """Class names: a JSON list from data.class_names, the model's own (1000 ImageNet names), or folder names."""
    import json as _json

    d, m = cfg["data"], cfg["model"]
    if d["class_names"]:
        names = _json.loads(open(d["class_names"]).read())
        if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
            raise ValueError(f"{d['class_names']}: expected a JSON list of strings")
        return names
    if m["name"] != "custom" and not m["num_classes"] and not zoo.entry(m["name"]).trained_here:
        return zoo.entry(m["name"]).classes()
    return folders


def _subset(src: ImageSource, n: int, seed: int) -> ImageSource:
    if not n or n >= len(src):
        return src
    idx = np.sort(np.random.default_rng(seed).choice(len(src), n, replace=False))
    if isinstance(src, FolderSource):  # keep it lazy (and its paths, for thumbnails)
        import copy

        sub = copy.copy(src)
        sub.paths = [src.paths[i] for i in idx]
        sub.labels = src.labels[idx]
        if getattr(src, "targets", None) is not None:
            sub.targets = src.targets[idx]
            sub.ids = [src.ids[i] for i in idx]
        return sub
    sub = ArraySource(src.get(idx), src.labels[idx])
    if getattr(src, "targets", None) is not None:
        sub.targets = src.targets[idx]
        sub.ids = [src.ids[i] for i in idx]
    return sub


@dataclass
class _Range:
    """Rows [start, stop) of a source, as a source."""

    source: ImageSource
    start: int
    stop: int

    @property
    def labels(self) -> np.ndarray:
        return self.source.labels[self.start:self.stop]

    def __len__(self) -> int:
        return self.stop - self.start

    def get(self, idx: np.ndarray) -> np.ndarray:
        return self.source.get(np.asarray(idx) + self.start)


def _predict_source(model: torch.nn.Module, src: ImageSource, device: torch.device, batch: int = 256,
                    progress: bool = False) -> np.ndarray:
    """Predicted classes (N,) of every image of a source, in batches (never all images in memory)."""
    from tqdm.auto import tqdm

    out = []
    for s in tqdm(range(0, len(src), batch), desc="predict test set", disable=not progress, dynamic_ncols=True):
        out.append(_predict(model, src.get(np.arange(s, min(s + batch, len(src)))), device))
    return np.concatenate(out) if out else np.empty(0, np.int64)


def _predict(model: torch.nn.Module, images: np.ndarray, device: torch.device, batch: int = 512) -> np.ndarray:
    """Predicted classes (n,) of uint8 images (n, H, W, C)."""
    out = []
    with torch.no_grad():
        for s in range(0, len(images), batch):
            x = torch.from_numpy(to_float(images[s:s + batch])).to(device)
            out.append(model(x).argmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.empty(0, np.int64)


# =================================================================== stages
def stage_data(ctx: Context) -> list[str]:
    """Training labels (and images when they fit: neighbour thumbnails), class names, set sizes."""
    train, test, classes = ctx.sources()
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


def _train(ctx: Context, model: zoo.Classifier, train: ImageSource) -> list[float]:
    from tqdm.auto import tqdm

    m = ctx.cfg["model"]
    g = torch.Generator().manual_seed(ctx.cfg["seed"])
    torch.manual_seed(ctx.cfg["seed"])
    n, bs = len(train), m["batch_size"]
    steps = m["epochs"] * ((n + bs - 1) // bs)
    opt = torch.optim.AdamW(model.parameters(), lr=m["lr"], weight_decay=m["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=m["lr"], total_steps=max(steps, 1))
    labels = torch.from_numpy(train.labels)
    losses = []
    fmt = torch.channels_last  # 2-3x faster CPU training for this small CNN
    model.to(memory_format=fmt).train()
    for epoch in range(m["epochs"]):
        perm = torch.randperm(n, generator=g).numpy()
        bar = tqdm(range(0, n, bs), desc=f"train epoch {epoch + 1}/{m['epochs']}", unit="batch",
                   disable=not ctx.progress, dynamic_ncols=True, leave=False)
        total = 0.0
        for s in bar:
            idx = np.sort(perm[s:s + bs])
            x = torch.from_numpy(to_float(train.get(idx))).to(ctx.device).contiguous(memory_format=fmt)
            y = labels[idx].to(ctx.device)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        losses.append(total / n)
        log.info("epoch %d: loss %.4f", epoch + 1, losses[-1])
    model.to(memory_format=torch.contiguous_format).eval()
    return losses


def stage_train(ctx: Context) -> list[str]:
    """Train (models trained here) or load the attacked model; test predictions and accuracy."""
    train, test, classes = ctx.sources()
    m = ctx.cfg["model"]
    trained_here = m["name"] != "custom" and zoo.entry(m["name"]).trained_here
    torch.manual_seed(ctx.cfg["seed"])  # the initial weights depend on the seed only
    model, _ = zoo.from_config(m)
    model = model.to(ctx.device)
    info: dict = {"model": m["name"], "weights": m["weights"] if m["name"] != "custom" else m["state_dict"],
                  "trained_here": trained_here, "classes": len(classes)}
    t0 = time.perf_counter()
    if trained_here:
        info["losses"] = _train(ctx, model, train)
    elif m["weights"] == "none" and not (m["name"] == "custom" and m["state_dict"]):
        log.warning("model %s has RANDOM weights (model.weights = 'none'): the detection numbers of this run "
                    "are meaningless; point the config at real weights", m["name"])
        info["warning"] = "random weights: detection numbers are meaningless"
    ctx.run.manifest.setdefault("summary", {})["train_seconds"] = round(time.perf_counter() - t0, 2)
    ctx.run.save_torch("model.pt", {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    pred = _predict_source(model.eval(), test, ctx.device, progress=ctx.progress)
    info["test_accuracy"] = float((pred == test.labels).mean()) if len(pred) else float("nan")
    info["n_train"], info["n_test"] = len(train), len(test)
    log.info("test accuracy %.4f", info["test_accuracy"])
    ctx.run.save_npy("test_predictions.npy", pred.astype(np.int64))
    ctx.run.save_json("model.json", info)
    ctx.run.save_json("input.json", {"size": list(ctx.spec().size), "resize": ctx.spec().resize})
    ctx._cache.pop("model", None)
    return ["model.pt", "test_predictions.npy", "model.json", "input.json"]


def _dist() -> tuple[int, int]:
    """(rank, world size) under torchrun (process group initialised once), else (0, 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        from datetime import timedelta

        # other ranks wait at a barrier while rank 0 runs a whole stage: allow long stages
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timedelta(hours=12))
    return dist.get_rank(), world


def _barrier() -> None:
    if _dist()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def stage_features(ctx: Context) -> list[str]:
    """Training-set activations of every tapped layer, streamed in chunks into memory-mapped ``.npy`` files.

    Rows are written into ``features/<layer>.npy.partial`` chunk by chunk; after each chunk the list of
    finished chunks is saved (atomically), so a killed run resumes at the first unfinished chunk. Under
    ``torchrun`` each rank extracts its own chunks (c % world == rank) into the shared files.
    """
    import json as _json

    from core.features import FeatureExtractor, extract

    train, _, _ = ctx.sources()
    model, layers = ctx.model(), ctx.layers()
    rank, world = _dist()
    key, chunk = ctx.keys["features"], ctx.cfg["features"]["chunk"]
    n = len(train)
    n_chunks = (n + chunk - 1) // chunk
    c, h, w = ctx.spec().size
    with torch.no_grad():
        _, probe = FeatureExtractor(model, layers).to(ctx.device)(torch.zeros(1, c, h, w, device=ctx.device))
    dims = {layer: probe[layer].shape[1] for layer in layers}
    fdir = ctx.run.path / "features"
    partial = {layer: fdir / f"{layer}.npy.partial" for layer in layers}

    def progress_files():
        return sorted(fdir.glob("progress-*.json"))

    def finished() -> set[int]:
        done = set()
        for p in progress_files():
            try:
                d = _json.loads(p.read_text())
            except (ValueError, OSError):
                continue
            if d.get("key") == key and d.get("n") == n:
                done |= set(d["done"])
        return done

    if rank == 0:
        fdir.mkdir(parents=True, exist_ok=True)
        done = finished()
        ok = done and all(p.exists() and np.load(p, mmap_mode="r").shape == (n, dims[la]) for la, p in partial.items())
        if not ok:  # fresh start: new partial files, no progress
            for p in progress_files():
                p.unlink()
            for layer, p in partial.items():
                np.lib.format.open_memmap(p, mode="w+", dtype=np.float32, shape=(n, dims[layer])).flush()
        elif done:
            log.info("features: resuming, %d of %d chunks already done", len(done), n_chunks)
    _barrier()
    done = finished()
    mine = sorted(done & set(range(rank, n_chunks, world)))
    mm = {layer: np.load(p, mmap_mode="r+") for layer, p in partial.items()}
    for ci in range(rank, n_chunks, world):
        if ci in done:
            continue
        s0, s1 = ci * chunk, min((ci + 1) * chunk, n)
        extract(model, layers, _Range(train, s0, s1), batch_size=ctx.cfg["features"]["batch_size"],
                device=ctx.device, out={la: mm[la][s0:s1] for la in layers}, amp=ctx.cfg["features"]["amp"],
                progress=ctx.progress, desc=f"train features {ci + 1}/{n_chunks}",
                workers=ctx.cfg["features"]["workers"])
        for arr in mm.values():
            arr.flush()
        mine.append(ci)
        with atomic_path(fdir / f"progress-{rank}.json") as tmp:
            tmp.write_text(_json.dumps({"key": key, "n": n, "done": sorted(mine)}))
    del mm
    _barrier()
    files = [f"features/{layer}.npy" for layer in layers]
    if rank == 0:
        missing = set(range(n_chunks)) - finished()
        if missing:
            raise RuntimeError(f"features: chunks {sorted(missing)[:10]} were not extracted")
        for layer, rel in zip(layers, files):
            os.replace(partial[layer], ctx.run.path / rel)
            ctx.run.record(rel)
        for p in progress_files():
            p.unlink()
    return files


def stage_processing(ctx: Context) -> list[str]:
    """Fit none / L2 / PCA-whitening per layer on the training features."""
    files = []
    for layer, mode in ctx.pairs():
        rel = f"processing/{layer}-{mode}.npz"
        feats = ctx.run.load_npy(f"features/{layer}.npy", mmap=True)
        ctx.run.save_npz(rel, processing.fit(feats, mode, dim=ctx.cfg["processing"]["pca_dim"],
                                             seed=ctx.cfg["seed"]))
        files.append(rel)
    return files


def stage_index(ctx: Context) -> list[str]:
    """A faiss index per (layer, mode) over the processed training features."""
    from tqdm.auto import tqdm

    files = []
    key = ctx.keys["index"]
    for layer, mode in tqdm(ctx.pairs(), desc="indexes", disable=not ctx.progress, dynamic_ncols=True):
        rel = f"index/{layer}-{mode}.faiss"
        files.append(rel)
        if ctx.run.item_done(rel, key):
            continue
        params = ctx.run.load_npz(f"processing/{layer}-{mode}.npz")
        xb = processing.apply(params, ctx.run.load_npy(f"features/{layer}.npy", mmap=True))
        idx = knn_index.build(xb, kind=ctx.cfg["index"]["kind"], nprobe=ctx.cfg["index"]["nprobe"],
                              ef_search=max(1200, ctx.cfg["scoring"]["k_max"] + 200), seed=ctx.cfg["seed"])
        ctx.run.save_faiss(rel, idx, key=key)
    return files


def _save_set(ctx: Context, name: str, key: str, images: np.ndarray, true: np.ndarray, pred: np.ndarray,
              target: np.ndarray, source: np.ndarray, **extra: np.ndarray) -> str:
    rel = f"evalsets/{name}.npz"
    ctx.run.save_npz(rel, {"images": images, "true": true.astype(np.int64), "predicted": pred.astype(np.int64),
                           "target": target.astype(np.int64), "source": source.astype(np.int64), **extra},
                     key=key)
    return rel


def _exists_by_id(folder: str, image_id: str) -> bool:
    from core.data import DatasetNotFound, find_by_id

    try:
        find_by_id(Path(folder), image_id)
        return True
    except DatasetNotFound:
        return False


def _set_stats(z: dict[str, np.ndarray], auth_img: np.ndarray, pos_of: dict[int, int], attempted: int) -> dict:
    """Size, success rate and mean L2 / Linf perturbation (in [0, 1] pixel units) of a stored set."""
    n = int(len(z["true"]))
    out = {"n": n, "attempted": int(z["attempted"]) if "attempted" in z else attempted}
    out["success_rate"] = n / max(out["attempted"], 1)
    if n:
        orig = auth_img[[pos_of[int(s)] for s in z["source"]]]
        d = (z["images"].astype(np.float64) - orig).reshape(n, -1) / 255.0
        out["mean_l2"] = float(np.linalg.norm(d, axis=1).mean())
        out["mean_linf"] = float(np.abs(d).max(axis=1).mean())
    if "params" in z:
        out["params"] = json.loads(str(z["params"]))
    return out


def stage_evalsets(ctx: Context) -> list[str]:
    """Authentic, authentic errors, random noise and one adversarial set per attack (failed attempts dropped)."""
    from core import attacks

    _, test, classes = ctx.sources()
    es, seed, key = ctx.cfg["evalsets"], ctx.cfg["seed"], ctx.keys["evalsets"]
    pred_all = ctx.run.load_npy("test_predictions.npy")
    rng = np.random.default_rng(seed)
    correct = np.flatnonzero(pred_all == test.labels)
    wrong = np.flatnonzero(pred_all != test.labels)
    auth_idx = rng.permutation(correct)[:es["n_authentic"]]
    err_idx = rng.permutation(wrong)[:es["n_errors"]]
    auth_img = test.get(auth_idx)
    auth_true = test.labels[auth_idx]
    n_cls = len(classes)
    files, stats = [], {}
    none = np.full(len(auth_idx), -1)

    rel = "evalsets/authentic.npz"
    if not ctx.run.item_done(rel, key):
        _save_set(ctx, "authentic", key, auth_img, auth_true, pred_all[auth_idx], none, auth_idx)
    files.append(rel)
    stats["authentic"] = {"n": len(auth_idx), "attempted": len(auth_idx)}

    rel = "evalsets/errors.npz"
    if not ctx.run.item_done(rel, key):
        _save_set(ctx, "errors", key, test.get(err_idx), test.labels[err_idx], pred_all[err_idx],
                  np.full(len(err_idx), -1), err_idx)
    files.append(rel)
    stats["errors"] = {"n": len(err_idx), "attempted": len(wrong)}

    rel = "evalsets/noise.npz"
    nrng = np.random.default_rng([seed, 1])
    noise = nrng.uniform(-es["noise_eps"], es["noise_eps"], size=auth_img.shape)
    noisy = np.clip(np.rint(auth_img + noise * 255), 0, 255).astype(np.uint8)
    if not ctx.run.item_done(rel, key):
        p = _predict(ctx.model(), noisy, ctx.device)
        keep = p == auth_true
        _save_set(ctx, "noise", key, noisy[keep], auth_true[keep], p[keep], none[keep], auth_idx[keep])
    pos_of = {int(src): i for i, src in enumerate(auth_idx)}
    stats["noise"] = _set_stats(ctx.run.load_npz(rel), auth_img, pos_of, len(auth_idx))
    files.append(rel)

    csv_targets = getattr(test, "targets", None)
    for name in es["attacks"]:
        table = dict(ctx.cfg[ATTACK_SECTION].get(name, {}))
        n = min(table.pop("n", len(auth_idx)), len(auth_idx))
        rel = f"evalsets/{name}.npz"
        files.append(rel)
        arng = np.random.default_rng([seed, 2, sum(map(ord, name))])
        target = (auth_true[:n] + arng.integers(1, n_cls, size=n)) % n_cls  # a random wrong class
        if csv_targets is not None:  # the CSV's TargetClass where it is a valid wrong class
            given = csv_targets[auth_idx[:n]]
            usable = (given >= 0) & (given < n_cls) & (given != auth_true[:n])
            target = np.where(usable, given, target)
        if not ctx.run.item_done(rel, key):
            t0 = time.perf_counter()
            x = to_float(auth_img[:n])
            advs, preds, succ = [], [], []
            bs = es["attack_batch"]
            for s in range(0, n, bs):
                r = attacks.run_attack(name, ctx.model(), x[s:s + bs], target=target[s:s + bs], seed=seed + s,
                                       progress=ctx.progress, **table)
                advs.append(attacks.to_uint8(r.x_adv))
                preds.append(r.predicted)
                succ.append(r.success)
                log.info("%s: %d/%d", name, min(s + bs, n), n)
            adv, pred, ok = np.concatenate(advs), np.concatenate(preds), np.concatenate(succ)
            tgt = target if r.targeted else np.full(n, -1)
            ctx.run.manifest["summary"].setdefault("attack_seconds", {})[name] = round(time.perf_counter() - t0, 2)
            _save_set(ctx, name, key, adv[ok], auth_true[:n][ok], pred[ok], tgt[ok], auth_idx[:n][ok],
                      attempted=np.array(n), params=np.array(json.dumps(r.params, sort_keys=True)))
        stats[name] = _set_stats(ctx.run.load_npz(rel), auth_img, pos_of, n)
        stats[name]["seconds"] = ctx.run.manifest["summary"].get("attack_seconds", {}).get(name)
    for name, table in ctx.cfg[EXTERNAL_SECTION].items():
        rel = f"evalsets/{name}.npz"
        files.append(rel)
        if not ctx.run.item_done(rel, key):
            from core.data import find_by_id
            from core.uploads import image_to_array, read_upload

            c, h, w = ctx.spec().size
            ids = [test.ids[i] for i in auth_idx]
            have = [j for j, i in enumerate(ids) if _exists_by_id(table["dir"], i)]
            imgs = np.stack([image_to_array(read_upload(find_by_id(table["dir"], ids[j]).read_bytes()), size=(h, w),
                                            channels=c, resize=ctx.spec().resize) for j in have]) if have else \
                np.empty((0, h, w, c), np.uint8)
            p = _predict(ctx.model(), imgs, ctx.device) if have else np.empty(0, np.int64)
            keep = p != auth_true[have]  # failed adversarials (still right) are dropped
            hv = np.asarray(have, dtype=np.int64)
            _save_set(ctx, name, key, imgs[keep], auth_true[hv][keep], p[keep], np.full(int(keep.sum()), -1),
                      auth_idx[hv][keep], attempted=np.array(len(have)), params=np.array(json.dumps(table)))
        stats[name] = _set_stats(ctx.run.load_npz(rel), auth_img, pos_of, len(auth_idx))
    ctx.run.manifest.setdefault("summary", {})["sets"] = stats
    ctx.run.save_manifest()
    return files


def stage_neighbours(ctx: Context) -> list[str]:
    """Top-K_max training neighbours (ids, squared distances) of every evaluation image, per (layer, mode)."""
    from tqdm.auto import tqdm

    from core.features import extract

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
                    indexes[(la, mo)] = ctx.run.load_faiss(f"index/{la}-{mo}.faiss")
                D, I = knn_index.search(indexes[(la, mo)], processing.apply(params[(la, mo)], feats[la]), k_max)
            else:
                D, I = np.empty((0, k_max), np.float32), np.empty((0, k_max), np.int64)
            ctx.run.save_npz(rels[(la, mo)], {"I": I.astype(np.int32), "D": D.astype(np.float32)}, key=key)
    return files


def stage_thumbs(ctx: Context) -> list[str]:
    """Thumbnails of the training images shown as neighbours, for runs that do not keep the training images.

    For every evaluation image and layer (default processing), the ``thumbs.per_layer`` nearest training
    images overall and of the predicted class; each distinct image stored once as a JPEG in
    ``thumbs/bank.npz`` (ids, offsets, bytes), so the app shows neighbours without the training set.
    """
    import io

    from PIL import Image
    from tqdm.auto import tqdm

    if ctx.run.is_recorded("train_images.npy"):
        return []
    train, _, _ = ctx.sources()
    per, size, mode = ctx.cfg["thumbs"]["per_layer"], ctx.cfg["thumbs"]["size"], ctx.cfg["scoring"]["mode"]
    labels = ctx.run.load_npy("train_labels.npy")
    wanted: set[int] = set()
    for name in ctx.run.manifest["summary"]["sets"]:
        pred = ctx.run.load_npz(f"evalsets/{name}.npz")["predicted"]
        for layer in ctx.layers():
            I = ctx.run.load_npz(f"neighbours/{name}/{layer}-{mode}.npz")["I"]
            wanted.update(I[:, :per].ravel().tolist())
            for row, p in zip(I, pred):
                wanted.update(row[labels[row] == p][:per].tolist())
    ids = np.array(sorted(i for i in wanted if i >= 0), dtype=np.int64)
    blobs = []
    for s0 in tqdm(range(0, len(ids), 256), desc="thumbnails", disable=not ctx.progress, dynamic_ncols=True):
        for img in train.get(ids[s0:s0 + 256]):
            im = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
            blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    data = np.concatenate(blobs) if blobs else np.empty(0, np.uint8)
    ctx.run.save_npz("thumbs/bank.npz", {"ids": ids, "offsets": offsets, "data": data})
    return ["thumbs/bank.npz"]


def stage_report(ctx: Context) -> list[str]:
    """Detection tables, k sweep, sizes, success rates and timings -> report.json and report.md."""
    from precompute.report import build_report, render_markdown

    rep = build_report(ctx.run, ctx.cfg)
    ctx.run.save_json("report.json", rep)
    ctx.run.save_text("report.md", render_markdown(rep))
    ctx.run.manifest["summary"]["headline"] = rep["headline"]
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
    ("thumbs", stage_thumbs, ("thumbs", "scoring.mode")),
    ("report", stage_report, ("scoring",)),
]
STAGE_NAMES = [s[0] for s in STAGES]


def _cfg_value(cfg: dict, dotted: str):
    v = cfg
    for p in dotted.split("."):
        v = v[p]
    return v


def stage_keys(cfg: dict) -> dict[str, str]:
    """Input key of every stage: its config values chained with the previous stage's key."""
    keys, prev = {}, ""
    for name, _, sections in STAGES:
        prev = stage_hash(prev, name, [_cfg_value(cfg, s) for s in sections], cfg["seed"])
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
    rank, world = _dist()
    if rank == 0:
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
    _barrier()
    times: dict[str, float] = {}
    redo = False
    for name, fn, _ in STAGES:
        sharded = world > 1 and STAGE_NAMES.index(name) <= STAGE_NAMES.index("features")
        if sharded:
            ctx.run._manifest = None  # rank 0 may have written it
        if not redo and ctx.run.stage_done(name, ctx.keys[name]):
            times[name] = 0.0
            if on_stage and rank == 0:
                on_stage(name, ctx.run.manifest["stages"][name]["seconds"], True)
        else:
            redo = True  # everything after a recomputed stage is recomputed too
            if rank == 0 or name == "features":
                t0 = time.perf_counter()
                files = fn(ctx)
                times[name] = time.perf_counter() - t0
                if rank == 0:
                    ctx.run.mark_stage(name, ctx.keys[name], files, times[name])
                    if on_stage:
                        on_stage(name, times[name], False)
        if sharded:
            _barrier()  # the other ranks wait for rank 0's stages up to the features
            if name == "features":
                import torch.distributed as dist

                dist.destroy_process_group()
                if rank != 0:
                    break  # the rest is rank 0's
    return times


def _versions() -> dict[str, str]:
    import platform

    import faiss
    import scipy
    import sklearn
    import torchvision

    return {"python": platform.python_version(), "numpy": np.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "faiss": faiss.__version__, "scipy": scipy.__version__,
            "scikit-learn": sklearn.__version__, "cpu_count": str(os.cpu_count())}
