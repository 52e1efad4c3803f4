"""Training the models trained here (``fmnist-cnn``, zoo nets, custom entry points) and predicting a source.

:func:`fit` is the train stage's work: build nothing, train when :func:`wants_training` says so (resuming
from the last finished epoch of a killed run), and describe what was done for ``model.json``.
"""
from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from core._util.atomic import atomic_path
from core.data.datasets import ImageSource, to_float
from core.errors import ArtefactError
from core.models import zoo
from core.runs.files import open_regular, read_torch
from precompute.context import Context

__all__ = ["train", "predict_source", "wants_training", "fit", "check_outputs", "deterministic", "CHECKPOINT",
           "TRAIN_THREADS"]

log = logging.getLogger(__name__)

#: Per-epoch training state inside the run folder (removed when training finishes).
CHECKPOINT = "train/checkpoint.pt"
#: Torch CPU threads while training when the ``[model]`` table has no ``train_threads``.
TRAIN_THREADS = 2


@contextlib.contextmanager
def deterministic(threads: int, *, algorithms: bool = True) -> Iterator[None]:
    """Torch on ``threads`` CPU threads, with deterministic algorithms if ``algorithms``, inside the block; the
    previous settings after.

    On the CPU the same seed then gives the same weights bit for bit whatever the machine's core count or the
    caller's thread setting (``OMP_NUM_THREADS``, ``torch.set_num_threads``).
    """
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(max(1, int(threads)))
    torch.use_deterministic_algorithms(algorithms or old_det, warn_only=old_warn and not algorithms)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.set_num_threads(old_threads)


def wants_training(m: dict) -> bool:
    """Whether the train stage trains the model of a ``[model]`` table.

    ``model.train`` true or false decides; ``"auto"`` trains zoo models trained here (``fmnist-cnn``) and
    custom models without a ``state_dict``.
    """
    if m["train"] != "auto":
        return bool(m["train"])
    if m["name"] == "custom":
        return not m["state_dict"]
    return zoo.entry(m["name"]).trained_here


def check_outputs(model: torch.nn.Module, n_classes: int, size: tuple[int, int, int]) -> None:
    """Refuse to train a model whose logits do not match the number of classes.

    Parameters
    ----------
    model : Classifier
    n_classes : int
        Classes of the training set.
    size : (C, H, W)
        The model's input size.

    Raises
    ------
    ValueError
        One line naming ``model.num_classes`` (zoo models) or the builder (custom models).
    """
    was = model.training
    where = next(model.parameters(), next(model.buffers(), torch.zeros(0))).device
    with torch.no_grad():
        out = model.eval()(torch.zeros(2, *size, device=where)).shape[-1]
    model.train(was)
    if out != n_classes:
        raise ValueError(f"the model gives {out} logits but the training set has {n_classes} classes; "
                         f"fix: --set model.num_classes={n_classes} (zoo models) or build the custom model with "
                         f"{n_classes} outputs")


def _augment(x: torch.Tensor, names: list[str], g: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and/or pad-and-crop of a batch (N, C, H, W), drawn from ``g``."""
    n, _, h, w = x.shape
    if "flip" in names:
        flip = (torch.rand(n, generator=g) < 0.5).to(x.device).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(3), x)
    if "crop" in names:
        p = max(1, min(h, w) // 8)
        padded = torch.nn.functional.pad(x, (p, p, p, p), mode="replicate")
        dy, dx = torch.randint(0, 2 * p + 1, (2, n), generator=g).tolist()
        x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    return x


def _load_checkpoint(run_path: Path, key: str) -> dict | None:
    p = Path(run_path) / CHECKPOINT
    if not p.is_file():
        return None
    try:
        with open_regular(Path(run_path), CHECKPOINT) as f:
            state = read_torch(f, p)
    except (ArtefactError, OSError) as e:
        log.warning("ignoring the training checkpoint: %s", e)
        return None
    return state if state.get("key") == key else None


def _save_checkpoint(run_path: Path, state: dict) -> None:
    p = Path(run_path) / CHECKPOINT
    p.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    with atomic_path(p) as tmp:
        tmp.write_bytes(buf.getvalue())


def train(model: zoo.Classifier, source: ImageSource, m: dict, *, seed: int, device: torch.device,
          progress: bool = False, checkpoint: tuple[Path, str] | None = None) -> dict[str, list[float]]:
    """Train ``model`` in place with AdamW and a one-cycle schedule; leave it in eval mode.

    Parameters
    ----------
    model : Classifier
        On ``device``.
    source : ImageSource
        Training images and labels.
    m : dict
        The config's ``[model]`` table: ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``augment`` and
        ``train_threads`` (torch CPU threads while training, default :data:`TRAIN_THREADS`; see
        :func:`deterministic`).
    seed : int, keyword-only
        Seeds the batch order, the augmentations and torch's global generator.
    device : torch.device, keyword-only
    progress : bool, keyword-only
        Show a progress bar per epoch (loss and accuracy of the epoch so far).
    checkpoint : (run folder, key), optional, keyword-only
        Save the state after every epoch in ``run folder /`` :data:`CHECKPOINT` and resume from a saved
        state with the same ``key``; the file is removed when training ends.

    Returns
    -------
    dict
        ``losses`` and ``accuracies``: mean training loss and accuracy of each epoch.
    """
    # deterministic algorithms on the CPU only: CUDA would also need CUBLAS_WORKSPACE_CONFIG set before start
    with deterministic(m.get("train_threads", TRAIN_THREADS), algorithms=torch.device(device).type == "cpu"):
        return _train(model, source, m, seed=seed, device=device, progress=progress, checkpoint=checkpoint)


def _train(model: zoo.Classifier, source: ImageSource, m: dict, *, seed: int, device: torch.device,
           progress: bool, checkpoint: tuple[Path, str] | None) -> dict[str, list[float]]:
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n, bs = len(source), m["batch_size"]
    steps = m["epochs"] * ((n + bs - 1) // bs)
    opt = torch.optim.AdamW(model.parameters(), lr=m["lr"], weight_decay=m["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=m["lr"], total_steps=max(steps, 1))
    labels = torch.from_numpy(source.labels)
    hist: dict[str, list[float]] = {"losses": [], "accuracies": []}
    start = 0
    state = _load_checkpoint(*checkpoint) if checkpoint else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        g.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        hist = {"losses": list(state["losses"]), "accuracies": list(state["accuracies"])}
        start = int(state["epoch"])
        log.info("training: resuming after epoch %d of %d", start, m["epochs"])
    fmt = torch.channels_last  # faster CPU training for small CNNs
    model.to(memory_format=fmt).train()
    for epoch in range(start, m["epochs"]):
        perm = torch.randperm(n, generator=g).numpy()
        bar = tqdm(range(0, n, bs), desc=f"train epoch {epoch + 1}/{m['epochs']}", unit="batch",
                   disable=not progress, dynamic_ncols=True, leave=False)
        total, right, seen = 0.0, 0, 0
        for s in bar:
            idx = np.sort(perm[s:s + bs])
            if len(idx) < 2 <= n:  # batch norm cannot train on one image
                continue
            x = torch.from_numpy(to_float(source.get(idx)))
            x = _augment(x, m["augment"], g) if m["augment"] else x
            x = x.to(device).contiguous(memory_format=fmt)
            y = labels[idx].to(device)
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            right += int((logits.argmax(1) == y).sum())
            seen += len(idx)
            bar.set_postfix(loss=f"{total / seen:.3f}", acc=f"{right / seen:.3f}")
        hist["losses"].append(total / max(seen, 1))
        hist["accuracies"].append(right / max(seen, 1))
        log.info("epoch %d: loss %.4f, training accuracy %.4f", epoch + 1, hist["losses"][-1],
                 hist["accuracies"][-1])
        if checkpoint:
            _save_checkpoint(checkpoint[0], {
                "key": checkpoint[1], "epoch": epoch + 1, "model": model.state_dict(), "opt": opt.state_dict(),
                "sched": sched.state_dict(), "gen": g.get_state(), "torch_rng": torch.get_rng_state(), **hist})
    model.to(memory_format=torch.contiguous_format).eval()
    if checkpoint:
        (Path(checkpoint[0]) / CHECKPOINT).unlink(missing_ok=True)
    return hist


def fit(model: zoo.Classifier, source: ImageSource, cfg: dict, *, n_classes: int, size: tuple[int, int, int],
        device: torch.device, progress: bool = False, checkpoint: tuple[Path, str] | None = None) -> dict:
    """Train ``model`` if :func:`wants_training` says so; what was done, for ``model.json``.

    Parameters
    ----------
    model : Classifier
        Built by :func:`core.models.zoo.from_config` (seeded), on ``device``.
    source : ImageSource
        Training images.
    cfg : dict
        The checked config.
    n_classes : int, keyword-only
    size : (C, H, W), keyword-only
    device, progress, checkpoint
        As :func:`train` takes them.

    Returns
    -------
    dict
        ``trained_here``, and ``losses``, ``train_accuracy``, ``epochs`` when trained, or ``warning`` for
        random weights.
    """
    m = cfg["model"]
    if wants_training(m):
        check_outputs(model, n_classes, size)
        hist = train(model, source, m, seed=cfg["seed"], device=device, progress=progress, checkpoint=checkpoint)
        return {"trained_here": True, "epochs": m["epochs"], "losses": hist["losses"],
                "train_accuracy": hist["accuracies"][-1] if hist["accuracies"] else float("nan")}
    if m["weights"] == "none" and not (m["name"] == "custom" and m["state_dict"]):
        log.warning("model %s has RANDOM weights (model.weights = 'none', model.train = %s): the detection numbers "
                    "of this run are meaningless; point the config at real weights or set model.train = true",
                    m["name"], m["train"])
        return {"trained_here": False, "warning": "random weights: detection numbers are meaningless"}
    return {"trained_here": False}


def predict_source(model: zoo.Classifier, source: ImageSource, batch: int = 256, progress: bool = False) -> np.ndarray:
    """Predicted classes, int64 (len(source),), read ``batch`` images at a time (never all in memory)."""
    from tqdm.auto import tqdm

    out = []
    for s in tqdm(range(0, len(source), batch), desc="predict test set", disable=not progress, dynamic_ncols=True):
        out.append(model.predict(source.get(np.arange(s, min(s + batch, len(source))))))
    return np.concatenate(out) if out else np.empty(0, np.int64)


def stage_train(ctx: Context) -> list[str]:
    """Train (as ``wants_training`` says) or load the attacked model; test predictions and accuracy."""
    train, test, classes = ctx.sources()
    m = ctx.cfg["model"]
    torch.manual_seed(ctx.cfg["seed"])  # the initial weights depend on the seed only
    model, _ = zoo.from_config(m)
    model = model.to(ctx.device)
    info: dict = {"model": m["name"], "weights": m["weights"] if m["name"] != "custom" else m["state_dict"],
                  "classes": len(classes)}
    t0 = time.perf_counter()
    info.update(fit(model, train, ctx.cfg, n_classes=len(classes), size=ctx.spec().size, device=ctx.device,
                             progress=ctx.progress, checkpoint=(ctx.run.path, ctx.keys.get("train", ""))))
    ctx.run.manifest.setdefault("summary", {})["train_seconds"] = round(time.perf_counter() - t0, 2)
    ctx.run.save_torch("model.pt", {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    pred = predict_source(model.eval(), test, progress=ctx.progress)
    info["test_accuracy"] = float((pred == test.labels).mean()) if len(pred) else float("nan")
    info["n_train"], info["n_test"] = len(train), len(test)
    log.info("test accuracy %.4f", info["test_accuracy"])
    ctx.run.save_npy("test_predictions.npy", pred.astype(np.int64))
    ctx.run.save_json("model.json", info)
    ctx.run.save_json("input.json", {"size": list(ctx.spec().size), "resize": ctx.spec().resize})
    ctx.forget_model()
    return ["model.pt", "test_predictions.npy", "model.json", "input.json"]
