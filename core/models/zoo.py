"""Registry of attackable models by name, each knowing its input, normalisation, classes and taps.

Every model the project builds is a :class:`Classifier`: it takes float images in ``[0, 1]`` shaped
``(N, C, H, W)`` and returns logits, with the normalisation inside, so any attack library can use it as is.
Its ``net`` attribute is the bare network whose graph node names are the layer names we tap (as
``torchvision.models.feature_extraction.get_graph_node_names`` lists them).

>>> from core.models import zoo
>>> zoo.available()
['fmnist-cnn', 'inception_v3', 'resnet50', 'vgg16']
>>> zoo.layers("vgg16")
['features.30', 'classifier.1', 'classifier.4']
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

__all__ = ["Classifier", "FashionCNN", "ConvBlock", "FCBlock", "ModelEntry", "available", "entry", "build", "layers",
           "graph_nodes", "FASHION_MNIST_CLASSES", "InputSpec", "input_spec", "from_config", "load_entry_point"]

log = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Classifier(nn.Module):
    """A network with its input normalisation inside: ``forward(x in [0,1]) -> logits``.

    Parameters
    ----------
    net : nn.Module
        The bare network (expects normalised input); its node names are the tappable layers.
    mean, std : sequence of float, length C
        Per-channel normalisation applied before ``net``.
    leaf_modules : tuple of type, optional
        Module classes the feature extractor must treat as single nodes (e.g. :class:`ConvBlock`).
    """

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...],
                 leaf_modules: tuple[type, ...] = ()):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.leaf_modules = tuple(leaf_modules)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` for ``x`` of shape (N, C, H, W) in [0, 1]."""
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, n_classes) of images ``x`` (N, C, H, W) in [0, 1]."""
        return self.net(self.normalize(x))

    @torch.no_grad()
    def predict(self, images: np.ndarray, *, batch: int = 512) -> np.ndarray:
        """Predicted classes of uint8 images.

        Parameters
        ----------
        images : uint8 ndarray (N, H, W, C)
        batch : int, keyword-only
            Images per forward pass.

        Returns
        -------
        int64 ndarray (N,)
        """
        from core.data.datasets import to_float

        device = self.mean.device
        out = [self(torch.from_numpy(to_float(images[s:s + batch])).to(device)).argmax(1).cpu().numpy()
               for s in range(0, len(images), batch)]
        return np.concatenate(out) if out else np.empty(0, np.int64)


class ConvBlock(nn.Sequential):
    """conv 3×3 → batch norm → ReLU; tapped as one node (its output is the ReLU map)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class FCBlock(nn.Sequential):
    """linear → ReLU; tapped as one node (its output is after the ReLU)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__(nn.Linear(d_in, d_out), nn.ReLU(inplace=True))


class FashionCNN(nn.Module):
    """The embedded default: four conv blocks and two fully connected layers for 1×28×28 inputs.

    Node names (taps): ``conv1`` (16×28×28), ``conv2`` (32×14×14), ``conv3`` (64×7×7), ``conv4``
    (64×7×7), ``fc1`` (128, after ReLU), ``fc2`` (logits). Sized to train in a few minutes on 2 CPU cores.

    Parameters
    ----------
    n_classes : int
    dropout : float
    in_channels : int
        Input channels C.
    image_size : int
        Input height = width S (at least 8); ``fc1`` takes 64 × (S // 8)².
    """

    def __init__(self, n_classes: int = 10, dropout: float = 0.2, in_channels: int = 1, image_size: int = 28):
        super().__init__()
        if image_size < 8:
            raise ValueError(f"FashionCNN needs images of at least 8×8, got {image_size}")
        self.conv1 = ConvBlock(in_channels, 16)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = ConvBlock(16, 32)
        self.pool2 = nn.MaxPool2d(2)
        self.conv3 = ConvBlock(32, 64)
        self.conv4 = ConvBlock(64, 64)
        self.pool4 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = FCBlock(64 * (image_size // 8) ** 2, 128)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(128, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.pool4(self.conv4(self.conv3(x)))
        return self.fc2(self.drop(self.fc1(self.flatten(x))))


@dataclass(frozen=True)
class ModelEntry:
    """What the project knows about one model.

    Attributes
    ----------
    name : str
    make_net : callable ``(weights: str | None) -> nn.Module``
        Builds the bare network; ``weights`` is a torchvision weights name (e.g. ``"IMAGENET1K_V1"``),
        ``"DEFAULT"``, or None for random initialisation.
    input_size : (C, H, W)
    resize : int
        Shorter-side resize before the centre crop to ``input_size`` (as the model's eval transforms do).
    mean, std : per-channel normalisation.
    taps : default layers (graph node names of the bare net).
    classes : callable returning the class names.
    leaf_modules : module classes traced as one node.
    trained_here : whether precompute trains it (else it is loaded).
    """

    name: str
    make_net: Callable[[str | None], nn.Module]
    input_size: tuple[int, int, int]
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    taps: tuple[str, ...]
    classes: Callable[[], list[str]]
    leaf_modules: tuple[type, ...] = field(default=())
    trained_here: bool = False


def _torchvision(builder_name: str, weights_enum_name: str, **kw) -> Callable[..., nn.Module]:
    """A ``make_net`` for a torchvision model that loads weights from the local cache only."""

    def make(weights: str | None, **extra) -> nn.Module:
        import torchvision.models as tvm

        enum = getattr(tvm, weights_enum_name)
        w = None
        if weights is not None:
            w = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
            cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(w.url))
            if not os.path.exists(cached):
                raise FileNotFoundError(
                    f"weights {w} are not in the torch cache ({cached}). Copy the file there (set TORCH_HOME to "
                    "use another cache), or set model_weights = \"none\" in the config to run with random "
                    "weights (numbers then mean nothing).")
        return getattr(tvm, builder_name)(weights=w, **kw, **extra)

    return make


def _imagenet_classes() -> list[str]:
    import torchvision.models as tvm

    return list(tvm.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


_ENTRIES: dict[str, ModelEntry] = {
    "fmnist-cnn": ModelEntry(
        name="fmnist-cnn", make_net=lambda weights, **kw: FashionCNN(**kw), input_size=(1, 28, 28), resize=28,
        mean=(0.2860,), std=(0.3530,), taps=("conv1", "conv2", "conv3", "conv4", "fc1"),
        classes=lambda: list(FASHION_MNIST_CLASSES), leaf_modules=(ConvBlock, FCBlock), trained_here=True),
    "inception_v3": ModelEntry(
        name="inception_v3", make_net=_torchvision("inception_v3", "Inception_V3_Weights", aux_logits=False,
                                                   init_weights=False),
        input_size=(3, 299, 299), resize=342, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        taps=("maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
              "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"),
        classes=_imagenet_classes),
    "vgg16": ModelEntry(
        name="vgg16", make_net=_torchvision("vgg16", "VGG16_Weights"), input_size=(3, 224, 224), resize=256,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, taps=("features.30", "classifier.1", "classifier.4"),
        classes=_imagenet_classes),
    "resnet50": ModelEntry(
        name="resnet50", make_net=_torchvision("resnet50", "ResNet50_Weights"), input_size=(3, 224, 224),
        resize=256, mean=IMAGENET_MEAN, std=IMAGENET_STD, taps=("layer2", "layer3", "layer4", "flatten"),
        classes=_imagenet_classes),
}


def available() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(_ENTRIES)


def entry(name: str) -> ModelEntry:
    """The :class:`ModelEntry` of ``name``; unknown names raise ``KeyError`` listing the valid ones."""
    try:
        return _ENTRIES[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(available())}") from None


def build(name: str, *, weights: str | None = None) -> Classifier:
    """Build model ``name`` as a :class:`Classifier` in eval mode.

    Parameters
    ----------
    name : str
        A registered model name (see :func:`available`).
    weights : str or None, keyword-only
        torchvision weights name, ``"DEFAULT"``, or None for random weights. Weights are read from the
        local torch cache only; nothing is downloaded.
    """
    e = entry(name)
    net = e.make_net(weights)
    return Classifier(net, e.mean, e.std, e.leaf_modules).eval()


@dataclass(frozen=True)
class InputSpec:
    """What a model takes: ``size`` (C, H, W), ``resize`` (shorter side before the centre crop)."""

    size: tuple[int, int, int]
    resize: int


def input_spec(m: dict) -> InputSpec:
    """The input size and resize a config's ``[model]`` table gives, without building the model.

    Parameters
    ----------
    m : dict
        ``name``, ``image_size``, ``resize``; for ``"custom"`` models ``input_size`` ([C, H, W]).

    Returns
    -------
    InputSpec

    Raises
    ------
    ValueError
        A custom model without ``input_size``.
    KeyError
        An unknown model name.
    """
    if m["name"] == "custom":
        if not m.get("input_size"):
            raise ValueError("a custom model needs model.entry ('package.module:build_fn') and model.input_size "
                             "([C, H, W])")
        c, h, w = m["input_size"]
        return InputSpec((c, h, w), m.get("resize") or max(h, w))
    e = entry(m["name"])
    c, h, w = e.input_size
    if m.get("channels") and e.trained_here:
        c = int(m["channels"])
    if m.get("image_size"):
        h = w = int(m["image_size"])
    resize = m.get("resize") or (e.resize if (h, w) == e.input_size[1:] else round(h * e.resize / e.input_size[1]))
    return InputSpec((c, h, w), resize)


def load_entry_point(spec: str) -> Callable[..., nn.Module]:
    """Import ``"package.module:function"`` (a user's model builder) and return the function.

    Only for a spec from the caller or a config file the user passed; never for one read from a run.

    Raises
    ------
    ValueError
        Malformed spec, missing module or attribute (the message says which).
    """
    from core.models import entrypoints

    return entrypoints.load(spec)


def from_config(m: dict, *, builder: str | Callable[[], nn.Module] | None = None) -> tuple[Classifier, InputSpec]:
    """Build the model a config's ``[model]`` table describes (weights from the local cache or a state dict).

    Parameters
    ----------
    m : dict
        ``name`` (a zoo name or ``"custom"``), ``weights``, ``num_classes``, ``image_size``, ``resize``, and for
        custom models ``entry``, ``state_dict``, ``input_size``, ``mean``, ``std``.
    builder : str or callable, optional, keyword-only
        Custom models: the builder (or its ``"package.module:fn"``) to call instead of ``m["entry"]``. Pass it
        whenever ``m`` comes from a run rather than from the user's own config file.

    Returns
    -------
    model : Classifier (eval mode)
    spec : InputSpec
    """
    weights = None if m.get("weights", "none") == "none" else m["weights"]
    if m["name"] == "custom":
        source = builder if builder is not None else m.get("entry")
        if not source or not m.get("input_size"):
            raise ValueError("a custom model needs model.entry ('package.module:build_fn') and model.input_size "
                             "([C, H, W])")
        build_fn = source if callable(source) else load_entry_point(source)
        net = build_fn()
        if not isinstance(net, nn.Module):
            raise ValueError(f"{source} returned {type(net).__name__}, not a torch.nn.Module")
        if m.get("state_dict"):
            sd = torch.load(m["state_dict"], map_location="cpu", weights_only=True)
            net.load_state_dict(sd)
        c = m["input_size"][0]
        mean = tuple(m.get("mean") or [0.0] * c)
        std = tuple(m.get("std") or [1.0] * c)
        return Classifier(net, mean, std).eval(), input_spec(m)
    e = entry(m["name"])
    spec = input_spec(m)
    if e.trained_here:
        c, s = spec.size[0], spec.size[1]
        extra = {"n_classes": m.get("num_classes") or len(e.classes()), "in_channels": c, "image_size": s}
        mean, std = _channel_stats(m, e, c)
        return Classifier(e.make_net(weights, **extra), mean, std, e.leaf_modules).eval(), spec
    extra = {}
    if m.get("num_classes"):
        if weights is not None:
            raise ValueError("model.num_classes only applies to random weights (model.weights = 'none')")
        extra["num_classes"] = m["num_classes"]
    net = e.make_net(weights, **extra) if extra else e.make_net(weights)
    return Classifier(net, e.mean, e.std, e.leaf_modules).eval(), spec


def _channel_stats(m: dict, e: ModelEntry, c: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation of a model trained here with ``c`` channels: the config's, else the entry's (repeated)."""
    if m.get("mean") and m.get("std"):
        if len(m["mean"]) != c or len(m["std"]) != c:
            raise ValueError(f"model.mean and model.std need {c} values (one per input channel)")
        return tuple(m["mean"]), tuple(m["std"])
    if len(e.mean) == c:
        return e.mean, e.std
    return e.mean[:1] * c, e.std[:1] * c


def layers(name: str) -> list[str]:
    """Default tapped layers (graph node names of the bare net) of model ``name``."""
    return list(entry(name).taps)


def graph_nodes(model: Classifier) -> list[str]:
    """Every node name of ``model.net`` that can be tapped (eval-mode graph), in execution order."""
    from torchvision.models.feature_extraction import get_graph_node_names

    _, eval_nodes = get_graph_node_names(model.net, tracer_kwargs={"leaf_modules": list(model.leaf_modules)})
    return [n for n in eval_nodes if n != "x"]
