"""The precompute config schema: every key with its default, the numeric ranges and the allowed choices.

:mod:`core.config.loader` loads and checks TOML files against it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.errors import ConfigError

__all__ = ["ATTACK_SECTION", "EXTERNAL_SECTION", "ConfigError", "DEFAULTS", "MAX_K", "Range", "RANGES", "ATTACK_N",
           "CHOICES", "AUTO_KEYS", "AUGMENTATIONS"]

ATTACK_SECTION = "attacks"
EXTERNAL_SECTION = "external"



DEFAULTS: dict[str, Any] = {
    "name": "run",            # run folder name: <runs_dir>/<name>
    "data_root": "data",      # every path in the config must lie under this folder (no ../, no outside paths)
    "runs_dir": "data/runs",  # where run folders live
    "seed": 0,                # one seed for everything (training, sampling, targets, attacks)
    "device": "auto",         # auto | cpu | cuda
    "threads": 0,             # torch + faiss CPU threads (0 = every core)
    "data": {
        "dataset": "fashion-mnist",  # fashion-mnist | imagefolder
        "root": "",                  # fashion-mnist: folder of the idx .gz files ("" = search the usual places)
        "download": False,           # fashion-mnist: fall back to torchvision's downloader
        "train_dir": "",             # imagefolder: class-per-folder training images
        "eval_dir": "",              # imagefolder: class-per-folder evaluation images (same class folders),
                                     # or, with eval_csv, a flat folder of <ImageId>.png
        "eval_csv": "",              # NIPS 2017 DEV format: ImageId,TrueLabel,TargetClass (targets used by attacks)
        "csv_label_offset": 1,       # subtracted from TrueLabel/TargetClass (the DEV set counts from 1)
        "class_names": "",           # JSON list of class names ("" = the model's, else the folder names)
        "n_train": 0,                # use a seeded random subset of this many training images (0 = all)
        "n_test": 0,                 # use a seeded random subset of this many test images (0 = all)
    },
    "model": {
        "name": "fmnist-cnn",  # a core.models.zoo name
        "train": "auto",       # true | false | "auto" (train models trained here, and custom models without state_dict)
        "channels": 0,         # input channels of models trained here (fmnist-cnn: 1 or 3; 0 = the model's own)
        "weights": "none",     # torchvision weights name for loaded models ("none" = random init)
        "num_classes": 0,      # random-weight torchvision models: output classes (0 = the model's own)
        "image_size": 0,       # input height = width (0 = the model's own)
        "resize": 0,           # shorter side before the centre crop (0 = the model's own ratio)
        "entry": "",           # custom model: "package.module:build_fn" returning an nn.Module
        "state_dict": "",      # custom model: a state dict loaded with weights_only=True
        "input_size": [],      # custom model: [C, H, W]
        "mean": [],            # custom models and models trained here: per-channel normalisation (inside the model)
        "std": [],
        "epochs": 6,           # training epochs (models trained here)
        "batch_size": 128,
        "lr": 0.002,           # peak learning rate (Adam, one-cycle)
        "weight_decay": 0.0001,
        "augment": [],         # training augmentations: "flip" (horizontal), "crop" (pad by 1/8, random crop)
        "train_threads": 2,    # torch CPU threads while training: fixed, so the weights do not depend on the machine
    },
    "features": {
        "layers": [],          # node names to tap ([] = the zoo's default taps)
        "batch_size": 512,
        "amp": True,           # bfloat16 autocast for forward passes on CUDA
        "chunk": 8192,         # training images per resumable chunk of the streamed extraction
        "workers": 0,          # image-decoding worker processes for image folders
    },
    "processing": {
        "modes": ["none", "l2", "pca"],  # none | l2 | pca (PCA + whitening) | pca_nw (the authors': PCA above
                                         # pca_dim dims, no whitening; nothing at or below)
        "pca_dim": 256,                  # PCA output dims (capped by the layer's dims)
    },
    "index": {
        "kind": "auto",  # auto | flat | ivf | hnsw | ivfpq | pq (auto: flat below 500k training images, pq above)
        "nprobe": 16,    # IVF cells visited per query
    },
    "evalsets": {
        "n_authentic": 1000,  # correctly classified test images (positives; also the attacks' sources)
        "n_errors": 1000,     # misclassified test images kept (authentic errors), at most
        "noise_eps": 0.1,     # random noise of size eps added to authentic images (kept if still right)
        "noise": "uniform",   # uniform: U(-eps, eps) per pixel; sign: eps * sign(N(0, 1)) (the authors' code)
        "attacks": ["fgsm", "ifgsm", "pgd", "cw", "deepfool", "lbfgs"],  # adversarial sets to make
        "attack_batch": 250,  # images per attack call
    },
    ATTACK_SECTION: {},       # per attack: {n = images attacked, ...attack params (core.attacks.param_spec)}
    EXTERNAL_SECTION: {},     # adversarial sets made elsewhere: {name = {dir = folder of <ImageId>.png}}
    "thumbs": {
        "size": 64,           # neighbour thumbnails stored for runs whose training images are not kept
        "per_layer": 4,       # nearest (overall and of the predicted class) kept per image and layer
    },
    "evaluation": {
        "protocol": "paper",       # paper: positives = authentic + noise, thresholds at a target TPR on validation;
                                   # authors: positives = authentic only, one pooled threshold nearest FNR = FPR
        "validation_share": 0.5,   # share of source test images whose sets choose layer, settings and threshold
        "target_tpr": 0.95,        # the operating point keeps this share of validation positives
        "n_boot": 1000,            # bootstrap resamples (over source images) for the 95 % intervals
    },
    "detectors": {
        "enabled": ["knn", "knn_lr", "knn_mean", "dknn", "mahalanobis", "lid", "knn_ood", "msp"],  # peer
                                  # detectors fitted and reported beside the kNN scores (core.peers)
    },
    "adaptive": {
        "n": 150,                 # test-split authentic images attacked (0 = skip the stage's attacks)
        "linf": [0.02, 0.05, 0.1, 0.2, 0.3],  # L-inf budgets of the guarded-success curve
        "l2": [0.5, 1.0, 2.0, 3.0, 5.0],      # L2 budgets
        "steps": 20,              # PGD steps per attack
        "restarts": 1,            # random starts per attack
        "lam": 5.0,               # weight of the detector surrogate (the adaptive variants)
        "tau": 0.5,               # soft-kNN temperature, times the median candidate squared distance
        "k": 200,                 # k': nearest training features in the surrogate
        "k_class": 32,            # plus this many nearest of the target class
        "refresh": 2,             # steps between re-finding the surrogate's neighbours (and checking success)
        "kappa": 5.0,             # logit margin past which the CNN term stops pulling
        "unbounded_steps": 100,   # steps of the unbounded-budget sanity check (each image stops at success)
        "unbounded_restarts": 2,  # its random starts (only the images not yet through are restarted)
        "cw_n": 40,               # images of the CW confidence sweep (0 = none)
        "cw_kappas": [0.0, 5.0, 10.0, 20.0, 40.0],
        "cw_max_iter": 30,
        "cw_binary_steps": 3,
        "cw_initial_const": 10.0,  # first trade-off constant c of the CW sweep
        "cw_learning_rate": 0.5,   # its Adam step size (tanh space)
    },
    "scoring": {
        "k_max": 1000,                        # neighbours stored per evaluation image
        "k": 1000,                            # default k for scores
        "fn": "dwknn",                        # default score function: knn | wknn | dwknn
        "mode": "pca",                        # default processing for the app and the Detector
        "k_sweep": [10, 50, 100, 500, 1000],  # k values in the report's sweep
    },
}

#: Keys that take ``"auto"`` or a value of the given type (the default is ``"auto"``).
AUTO_KEYS: dict[str, type] = {"model.train": bool}

#: Allowed ``model.augment`` entries.
AUGMENTATIONS = ("flip", "crop")

#: Largest ``scoring.k_max`` (the Detector's own cap on k).
MAX_K = 10_000


@dataclass(frozen=True)
class Range:
    """Closed range ``[lo, hi]`` of a numeric key (of each element for a list key).

    A bound given as a string is the value of that config key. ``lo_open`` excludes ``lo``.
    """

    lo: float | str
    hi: float | str
    integer: bool = True
    lo_open: bool = False


_INT32 = 2 ** 31 - 1

#: Allowed range of every numeric config key (attack tables: ``n`` here, the rest from ``core.attacks``).
RANGES: dict[str, Range] = {
    "seed": Range(0, 2 ** 32 - 2),
    "threads": Range(0, 1024),
    "data.csv_label_offset": Range(0, 1),
    "data.n_train": Range(0, _INT32),
    "data.n_test": Range(0, _INT32),
    "model.num_classes": Range(0, 100_000),
    "model.image_size": Range(0, 4096),
    "model.resize": Range(0, 8192),
    "model.input_size": Range(1, 8192),
    "model.channels": Range(0, 3),
    "model.mean": Range(0.0, 1.0, integer=False),
    "model.std": Range(0.0, 1.0, integer=False, lo_open=True),
    "model.epochs": Range(1, 1000),
    "model.batch_size": Range(1, 65536),
    "model.lr": Range(0.0, 10.0, integer=False, lo_open=True),
    "model.weight_decay": Range(0.0, 1.0, integer=False),
    "model.train_threads": Range(1, 1024),
    "features.batch_size": Range(1, 65536),
    "features.chunk": Range(1, _INT32),
    "features.workers": Range(0, 256),
    "processing.pca_dim": Range(1, 65536),
    "index.nprobe": Range(1, 65536),
    "evalsets.n_authentic": Range(1, 10_000_000),
    "evalsets.n_errors": Range(0, 10_000_000),
    "evalsets.noise_eps": Range(0.0, 1.0, integer=False, lo_open=True),
    "evalsets.attack_batch": Range(1, 65536),
    "evaluation.validation_share": Range(0.0, 1.0, integer=False, lo_open=True),
    "evaluation.target_tpr": Range(0.0, 1.0, integer=False, lo_open=True),
    "evaluation.n_boot": Range(100, 100_000),
    "thumbs.size": Range(8, 1024),
    "thumbs.per_layer": Range(1, 1000),
    "adaptive.n": Range(0, 1_000_000),
    "adaptive.linf": Range(0.0, 1.0, integer=False, lo_open=True),
    "adaptive.l2": Range(0.0, 100.0, integer=False, lo_open=True),
    "adaptive.steps": Range(1, 2000),
    "adaptive.restarts": Range(1, 20),
    "adaptive.lam": Range(0.0, 1000.0, integer=False, lo_open=True),
    "adaptive.tau": Range(0.0, 100.0, integer=False, lo_open=True),
    "adaptive.k": Range(1, MAX_K),
    "adaptive.k_class": Range(1, MAX_K),
    "adaptive.refresh": Range(1, 2000),
    "adaptive.kappa": Range(0.0, 100.0, integer=False),
    "adaptive.unbounded_steps": Range(1, 2000),
    "adaptive.unbounded_restarts": Range(1, 20),
    "adaptive.cw_n": Range(0, 1_000_000),
    "adaptive.cw_kappas": Range(0.0, 50.0, integer=False),
    "adaptive.cw_max_iter": Range(1, 1000),
    "adaptive.cw_binary_steps": Range(1, 20),
    "adaptive.cw_initial_const": Range(0.001, 1000.0, integer=False),
    "adaptive.cw_learning_rate": Range(0.0001, 1.0, integer=False),
    "scoring.k_max": Range(1, MAX_K),
    "scoring.k": Range(1, "scoring.k_max"),
    "scoring.k_sweep": Range(1, "scoring.k_max"),
}
ATTACK_N = Range(1, 10_000_000)

CHOICES = {("device",): ("auto", "cpu", "cuda"), ("data", "dataset"): ("fashion-mnist", "imagefolder"),
            ("index", "kind"): ("auto", "flat", "ivf", "hnsw", "ivfpq", "pq"), ("scoring", "fn"): ("knn", "wknn", "dwknn"),
            ("scoring", "mode"): ("none", "l2", "pca", "pca_nw"), ("evalsets", "noise"): ("uniform", "sign"),
            ("evaluation", "protocol"): ("paper", "authors"),
            ("detectors", "enabled"): ("knn", "knn_lr", "knn_mean", "dknn", "mahalanobis", "lid", "knn_ood", "msp")}
