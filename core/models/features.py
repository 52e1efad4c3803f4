"""One forward pass that returns the logits and every tapped layer, global-average-pooled for conv maps.

Taps that are leaf modules are read by forward hooks; any other tap through
``torchvision.models.feature_extraction.create_feature_extractor``. The model is a
:class:`core.models.zoo.Classifier` (normalisation inside, taps are node names of ``model.net``).

>>> ext = FeatureExtractor(model, ["conv2", "fc1"])          # doctest: +SKIP
>>> logits, feats = ext(x)                                    # x: float (N, C, H, W) in [0, 1]
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from core.data.datasets import ImageSource, to_float

__all__ = ["FeatureExtractor", "extract", "gap"]

log = logging.getLogger(__name__)

_LOGITS = "__logits__"
_TRACE_LOCK = threading.RLock()  # FX tracing patches nn.Module.__call__ process-wide


def gap(t: torch.Tensor) -> torch.Tensor:
    """Global average pooling of a 4-D map (N, C, H, W) -> (N, C); other shapes are flattened to (N, D)."""
    return t.mean(dim=(2, 3)) if t.ndim == 4 else t.flatten(1)


def _traced_whole(m: nn.Module, leaf: tuple[type, ...]) -> bool:
    """Whether FX traces module ``m`` as one node (torch.fx's default leaves, or a class of ``leaf``)."""
    if isinstance(m, leaf):
        return True
    mod = type(m).__module__
    return (mod.startswith("torch.nn") or mod.startswith("torch.ao.nn")) and not isinstance(m, nn.Sequential)


def _one_node(mods: dict[str, nn.Module], layer: str, leaf: tuple[type, ...]) -> bool:
    """Whether tap ``layer`` is a module traced as one node and not inside another such module (its node's
    value is then the module's output)."""
    if not layer or layer not in mods or not _traced_whole(mods[layer], leaf):
        return False
    parts = layer.split(".")
    return not any(_traced_whole(mods[".".join(parts[:i])], leaf) for i in range(1, len(parts)))


class FeatureExtractor(nn.Module):
    """Logits and GAP-ed activations of ``layers`` in one forward pass.

    Parameters
    ----------
    model : core.models.zoo.Classifier
        Model with ``net``, ``normalize`` and ``leaf_modules``.
    layers : list of str
        Node names of ``model.net`` (see :func:`core.models.zoo.graph_nodes`).

    Raises
    ------
    ValueError
        If a layer is not a node of the network; the message lists how to find valid names.
    """

    def __init__(self, model: nn.Module, layers: list[str]):
        super().__init__()
        self.layers = list(layers)
        self.model = model
        self._ext: nn.Module | None = None
        mods = dict(model.net.named_modules())
        leaf = tuple(getattr(model, "leaf_modules", ()))
        self._hooked = all(_one_node(mods, layer, leaf) for layer in layers)
        if self._hooked:
            self._mods = [mods[layer] for layer in self.layers]
        else:
            self._trace()

    def _trace(self) -> None:
        """The torchvision FX extractor of the taps (raises ValueError for a tap that is not a node)."""
        from torchvision.models.feature_extraction import create_feature_extractor

        from core.models.zoo import graph_nodes

        with _TRACE_LOCK:
            model, layers = self.model, self.layers
            nodes = graph_nodes(model)
            # a module name stands for its last node (torchvision resolves it the same way), e.g. "Mixed_5b"
            bad = [layer for layer in layers
                   if layer not in nodes and not any(n.startswith(layer + ".") for n in nodes)]
            if bad:
                raise ValueError(f"layer(s) {bad} are not nodes of {type(model.net).__name__}. Hint: run "
                                 f"`python -m precompute --list-layers CONFIG`; valid examples: {nodes[-8:]}")
            was_training = model.training
            model.eval()
            ext = create_feature_extractor(
                model.net, return_nodes={**{layer: layer for layer in layers}, nodes[-1]: _LOGITS},
                tracer_kwargs={"leaf_modules": list(model.leaf_modules)})
            ext.eval()
            model.train(was_training)
        self._hooked, self._ext = False, ext

    def _hooked_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
        """Logits and taps read by forward hooks; None when a tap did not run exactly once."""
        seen: list[list[torch.Tensor]] = [[] for _ in self._mods]
        me = threading.get_ident()  # the model is shared across threads: keep only this thread's outputs

        def keep(acc: list[torch.Tensor]):
            return lambda _m, _i, out: acc.append(out) if threading.get_ident() == me else None

        handles = [m.register_forward_hook(keep(acc)) for m, acc in zip(self._mods, seen)]
        try:
            logits = self.model.net(x)
        finally:
            for h in handles:
                h.remove()
        if not isinstance(logits, torch.Tensor) or any(len(acc) != 1 or not isinstance(acc[0], torch.Tensor)
                                                       for acc in seen):
            return None
        return logits, {layer: acc[0] for layer, acc in zip(self.layers, seen)}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``x`` float (N, C, H, W) in [0, 1] -> (logits (N, K), {layer: (N, D_layer)})."""
        x = self.model.normalize(x)
        if self._hooked and not any(m.training for m in self.model.net.modules()):
            got = self._hooked_forward(x)
            if got is not None:
                logits, out = got
                return logits, {k: gap(v) for k, v in out.items()}
            self._trace()  # a tap ran twice or never: the traced graph decides
        if self._ext is None:
            self._trace()
        out = self._ext(x)
        logits = out.pop(_LOGITS)
        return logits, {k: gap(v) for k, v in out.items()}


class _BatchDataset(torch.utils.data.Dataset):
    """Batch ``b`` of a source: (start row, uint8 images)."""

    def __init__(self, source: ImageSource, batch_size: int):
        self.source, self.batch_size = source, batch_size

    def __len__(self) -> int:
        return (len(self.source) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, b: int) -> tuple[int, np.ndarray]:
        s = b * self.batch_size
        return s, self.source.get(np.arange(s, min(s + self.batch_size, len(self.source))))


def _batches(source: ImageSource, batch_size: int, workers: int):
    """Yield (start, uint8 images) batches in order, decoded in ``workers`` processes when > 0."""
    ds = _BatchDataset(source, batch_size)
    if workers <= 0:
        yield from (ds[b] for b in range(len(ds)))
        return
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, collate_fn=lambda x: x)
    for start, images in loader:
        yield int(start), np.asarray(images)


def extract(model: nn.Module, layers: list[str], source: ImageSource | np.ndarray, *, batch_size: int = 256,
            device: str | torch.device = "cpu", out: Mapping[str, np.ndarray] | None = None,
            amp: bool = False, progress: bool = False, desc: str = "features",
            workers: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run the model over every image of ``source`` and collect logits and layer features.

    Parameters
    ----------
    model : core.models.zoo.Classifier
    layers : list of str
    source : ImageSource or uint8 ndarray (N, H, W, C)
    batch_size : int
    device : torch device for the forward passes.
    out : mapping layer -> writable float32 array (N, D), optional
        Preallocated outputs (e.g. memory-mapped ``.npy`` files) so features never sit in RAM.
    amp : bool
        Mixed precision (bfloat16 autocast) on CUDA.
    progress : bool
        Show a tqdm bar with images/s.
    workers : int
        Decode batches in this many worker processes (for image folders); 0 = in this process.

    Returns
    -------
    logits : float32 ndarray (N, n_classes)
    feats : dict layer -> float32 ndarray (N, D_layer)  (the ``out`` arrays when given)
    """
    from tqdm.auto import tqdm

    if isinstance(source, np.ndarray):
        from core.data.datasets import ArraySource

        source = ArraySource(source, np.zeros(len(source), np.int64))
    n = len(source)
    device = torch.device(device)
    ext = FeatureExtractor(model, layers).to(device)
    was_training = model.training
    model.eval()
    feats: dict[str, np.ndarray] = dict(out) if out is not None else {}
    logits_all: np.ndarray | None = None
    t0 = time.perf_counter()
    bar = tqdm(total=n, desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
    try:
        with torch.no_grad():
            for start, images in _batches(source, batch_size, workers):
                idx = np.arange(start, start + len(images))
                x = torch.from_numpy(to_float(images)).to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
                    logits, f = ext(x)
                if logits_all is None:
                    logits_all = np.empty((n, logits.shape[1]), np.float32)
                logits_all[idx] = logits.float().cpu().numpy()
                for layer, v in f.items():
                    if layer not in feats:
                        feats[layer] = np.empty((n, v.shape[1]), np.float32)
                    feats[layer][idx] = v.float().cpu().numpy()
                bar.update(len(idx))
    finally:
        bar.close()
        model.train(was_training)
    log.info("extracted %d layers for %d images in %.1fs", len(layers), n, time.perf_counter() - t0)
    assert logits_all is not None or n == 0
    return (logits_all if logits_all is not None else np.empty((0, 0), np.float32)), feats
