"""Peer detectors beside the paper's kNN, fitted on the same run and split (issue 14).

>>> from core.peers import DETECTOR_NAMES, instances               # doctest: +SKIP
>>> dets = instances("lid", layout)                                     # {entry: LID}  # doctest: +SKIP
"""
from core.peers.base import Inputs, LogisticLayer, PeerDetector, TrainSet, Validation, concat_inputs, subset_inputs
from core.peers.fitting import (ALL, CLASSES, DETECTOR_NAMES, Fitted, RunLayout, fit_all, instances,
                                operating_threshold)
from core.peers.methods import (LID, DeepKNN, KNNLayer, KNNLogistic, KNNMean, KthNeighbour, Mahalanobis, MaxSoftmax,
                                lid_mle)

__all__ = ["Inputs", "LogisticLayer", "PeerDetector", "TrainSet", "Validation", "concat_inputs", "subset_inputs",
           "ALL", "CLASSES", "DETECTOR_NAMES", "Fitted", "RunLayout", "fit_all", "instances", "operating_threshold",
           "DeepKNN", "KNNLayer", "KNNLogistic", "KNNMean", "KthNeighbour", "LID", "Mahalanobis", "MaxSoftmax",
           "lid_mle"]
