"""What the precompute stages share: the config, the run folder, the device, and lazily loaded inputs."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import torch

from core.data.datasets import CsvSource, FolderSource, SourceBase, load_fashion_mnist
from core.models import zoo
from core.runs.folder import RunDir

__all__ = ["Context"]

log = logging.getLogger(__name__)


@dataclass
class Context:
    """The config, run folder and device of a precompute, and its inputs, each loaded once on first use.

    Parameters
    ----------
    cfg : dict
        The checked config (:func:`core.config.loader.load`).
    run : RunDir
    device : torch.device
    progress : bool
        Show progress bars.
    keys : dict
        Input key of every stage (set by :func:`precompute.runner.run_stages`).
    """

    cfg: dict
    run: RunDir
    device: torch.device
    progress: bool = True
    keys: dict[str, str] = field(default_factory=dict)
    _cache: dict = field(default_factory=dict)

    def spec(self) -> zoo.InputSpec:
        """Input size and resize of the run's model."""
        if "spec" not in self._cache:
            self._cache["spec"] = zoo.input_spec(self.cfg["model"])
        return self._cache["spec"]

    def sources(self) -> tuple[SourceBase, SourceBase, list[str]]:
        """(train source, test source, class names), subsetted as ``data.n_train`` / ``data.n_test`` say."""
        if "sources" not in self._cache:
            d = self.cfg["data"]
            if d["dataset"] == "fashion-mnist":
                train = load_fashion_mnist("train", root=d["root"] or None, download=d["download"])
                test = load_fashion_mnist("test", root=d["root"] or None, download=d["download"])
                classes = zoo.FASHION_MNIST_CLASSES
            else:
                train, test = self._folders()
                classes = _class_names(self.cfg, train.classes)
            train = train.subset(d["n_train"], self.cfg["seed"])
            test = test.subset(d["n_test"], self.cfg["seed"] + 1)
            self._cache["sources"] = (train, test, list(classes))
        return self._cache["sources"]

    def _folders(self) -> tuple[FolderSource, FolderSource]:
        d, (c, h, w), resize = self.cfg["data"], self.spec().size, self.spec().resize
        train = FolderSource(d["train_dir"], size=(h, w), channels=c, resize=resize)
        if d["eval_csv"]:
            test = CsvSource(d["eval_csv"], d["eval_dir"], size=(h, w), channels=c, resize=resize,
                             label_offset=d["csv_label_offset"])
        else:
            test = FolderSource(d["eval_dir"], size=(h, w), channels=c, resize=resize)
            if test.classes != train.classes:
                raise ValueError(f"{d['eval_dir']} and {d['train_dir']} have different class folders")
        return train, test

    def model(self) -> zoo.Classifier:
        """The attacked model with the run's weights (``model.pt``), in eval mode, on the run's device."""
        if "model" not in self._cache:
            m = zoo.from_config({**self.cfg["model"], "weights": "none", "state_dict": ""})[0]
            m.load_state_dict(self.run.load_torch("model.pt"))
            self._cache["model"] = m.eval().to(self.device)
        return self._cache["model"]

    def forget_model(self) -> None:
        """Drop the loaded model: the next :meth:`model` reads ``model.pt`` again (after the train stage)."""
        self._cache.pop("model", None)

    def reload_run(self) -> None:
        """Read the run's manifest from disk again on next use (another rank may have written it)."""
        self.run = RunDir(self.run.path, require_signature=self.run.require_signature)

    def layers(self) -> list[str]:
        """The tapped layers: ``features.layers`` or the model's defaults."""
        return self.cfg["features"]["layers"] or zoo.layers(self.cfg["model"]["name"])

    def pairs(self) -> list[tuple[str, str]]:
        """Every (layer, processing mode)."""
        return [(layer, mode) for layer in self.layers() for mode in self.cfg["processing"]["modes"]]


def _class_names(cfg: dict, folders: list[str]) -> list[str]:
    """A JSON list from ``data.class_names``, the model's own (1000 ImageNet names), or the folder names."""
    d, m = cfg["data"], cfg["model"]
    if d["class_names"]:
        with open(d["class_names"]) as f:
            names = json.load(f)
        if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
            raise ValueError(f"{d['class_names']}: expected a JSON list of strings")
        return names
    if m["name"] != "custom" and not m["num_classes"] and not zoo.entry(m["name"]).trained_here:
        return zoo.entry(m["name"]).classes()
    return folders
