"""Training the models trained here (``fmnist-cnn``) and predicting a whole source, for the train stage."""
from __future__ import annotations

import logging

import numpy as np
import torch

from core import zoo
from core.data import ImageSource, to_float

__all__ = ["train", "predict_source"]

log = logging.getLogger(__name__)


def train(model: zoo.Classifier, source: ImageSource, m: dict, *, seed: int, device: torch.device,
          progress: bool = False) -> list[float]:
    """Train ``model`` in place with AdamW and a one-cycle schedule; leave it in eval mode.

    Parameters
    ----------
    model : Classifier
        On ``device``.
    source : ImageSource
        Training images and labels.
    m : dict
        The config's ``[model]`` table: ``epochs``, ``batch_size``, ``lr``, ``weight_decay``.
    seed : int, keyword-only
        Seeds the batch order and torch's global generator.
    device : torch.device, keyword-only
    progress : bool, keyword-only
        Show a progress bar per epoch.

    Returns
    -------
    list of float
        Mean training loss of each epoch.
    """
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n, bs = len(source), m["batch_size"]
    steps = m["epochs"] * ((n + bs - 1) // bs)
    opt = torch.optim.AdamW(model.parameters(), lr=m["lr"], weight_decay=m["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=m["lr"], total_steps=max(steps, 1))
    labels = torch.from_numpy(source.labels)
    losses = []
    fmt = torch.channels_last  # faster CPU training for this small CNN
    model.to(memory_format=fmt).train()
    for epoch in range(m["epochs"]):
        perm = torch.randperm(n, generator=g).numpy()
        bar = tqdm(range(0, n, bs), desc=f"train epoch {epoch + 1}/{m['epochs']}", unit="batch",
                   disable=not progress, dynamic_ncols=True, leave=False)
        total = 0.0
        for s in bar:
            idx = np.sort(perm[s:s + bs])
            x = torch.from_numpy(to_float(source.get(idx))).to(device).contiguous(memory_format=fmt)
            loss = torch.nn.functional.cross_entropy(model(x), labels[idx].to(device))
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


def predict_source(model: zoo.Classifier, source: ImageSource, batch: int = 256, progress: bool = False) -> np.ndarray:
    """Predicted classes, int64 (len(source),), read ``batch`` images at a time (never all in memory)."""
    from tqdm.auto import tqdm

    out = []
    for s in tqdm(range(0, len(source), batch), desc="predict test set", disable=not progress, dynamic_ncols=True):
        out.append(model.predict(source.get(np.arange(s, min(s + batch, len(source))))))
    return np.concatenate(out) if out else np.empty(0, np.int64)
