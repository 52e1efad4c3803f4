"""Test-split figures of any detector setting at any threshold, with bootstrap 95 % intervals (the app's live
figures).

The split, the bootstrap draws, the positives and the trust rule are those of :func:`core.evaluation.report.honest_report`
for the run's recorded config (``evaluation.protocol``, ``validation_share``, ``n_boot`` and ``seed``), so the
figures at the report's operating point equal the report's. The bootstrap is drawn once per run; scores are
kept per setting, so a threshold change only counts.

>>> live = LiveFigures.for_run(RunData("data/runs/fmnist"))                      # doctest: +SKIP
>>> live.at(Setting("conv3", "pca", "dwknn", 1000), 0.25)["attacks"]["fgsm"]     # doctest: +SKIP
{'detection_rate': [v, lo, hi], 'guarded_success': [v, lo, hi], 'n_test': 104}
"""
from __future__ import annotations

import copy
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController

from core.evaluation.bootstrap import SourceBootstrap
from core.evaluation.findings import aggregate_eer
from core.evaluation.operating_point import AttackItems, Setting, measure
from core.evaluation.report import PROTOCOLS, attempted_sources, json_safe
from core.evaluation.rundata import ERRORS_SET, RunData
from core.evaluation.splits import SourceSplit, split_sources

__all__ = ["EvaluationConfig", "LiveFigures", "operating_point", "operating_layer"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluationConfig:
    """The evaluation settings a run was (or, for a run older than them, would be) built with."""

    protocol: str = "paper"
    validation_share: float = 0.5
    target_tpr: float = 0.95
    n_boot: int = 1000
    seed: int = 0

    @classmethod
    def from_config(cls, config: Mapping) -> EvaluationConfig:
        """From a run's config (``manifest["config"]``); absent values take the defaults."""
        ev = config.get("evaluation", {}) or {}
        d = cls()
        return cls(str(ev.get("protocol", d.protocol)), float(ev.get("validation_share", d.validation_share)),
                   float(ev.get("target_tpr", d.target_tpr)), int(ev.get("n_boot", d.n_boot)),
                   int(config.get("seed", d.seed)))


@dataclass(frozen=True)
class _Scored:
    pos: np.ndarray
    pos_source: np.ndarray
    attacks: dict[str, AttackItems]


class LiveFigures:
    """Figures on the test split of a run for any setting and threshold.

    Parameters
    ----------
    data : RunData
    config : EvaluationConfig
    max_settings : int
        Settings whose scores are kept (least recently used dropped); :meth:`at` keeps eight times as many
        figures (setting and threshold).
    scores : callable, optional
        ``(set, layer, mode, fn, k) -> scores (n,)`` of every item of the set (default ``data.scores``; the app
        passes its cached one so a setting is scored once).

    Raises
    ------
    ValueError
        If a set has no ``source`` array (a run older than the split), the protocol is unknown or the test side
        is empty.
    """

    def __init__(self, data: RunData, config: EvaluationConfig = EvaluationConfig(), *, max_settings: int = 64,
                 scores: Callable[[str, str, str, str, int], np.ndarray] | None = None):
        if config.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {config.protocol!r}")
        self.data, self.config, self.max_settings = data, config, int(max_settings)
        sets = data.set_names
        missing = [s for s in sets if "source" not in data.evalset(s)]
        if missing:
            raise ValueError(f"sets {missing} have no source ids; rebuild the run")
        self.score = scores or data.scores
        self.source = {s: np.asarray(data.evalset(s)["source"], dtype=np.int64) for s in sets}
        positives, rule = PROTOCOLS[config.protocol]
        self.positive_sets = [s for s in positives if s in sets]
        self.attack_sets = [a for a in data.attack_sets if len(self.source[a])]
        self.strict = rule == "nearest_eer"
        self.split: SourceSplit = split_sources(self.source, config.validation_share, config.seed)
        self.bootstrap = SourceBootstrap(self.split.test, n_boot=config.n_boot, seed=config.seed)
        self.test = {s: self.split.mask(self.source[s], "test") for s in sets}
        self.fooled, self.attempts = {}, {}
        auth = self.source.get("authentic", np.empty(0, np.int64))
        for a in self.attack_sets:
            z = data.evalset(a)
            m = self.test[a]
            attempted = int(z["attempted"]) if "attempted" in z else int(data.summary["sets"][a]["attempted"])
            ids, n_att, _ = attempted_sources(auth, attempted, z["source"])
            on_test = np.isin(ids, self.split.test)
            per = np.zeros(len(self.bootstrap.sources))
            np.add.at(per, self.bootstrap.positions(ids[on_test]), n_att[on_test])
            self.attempts[a] = per
            self.fooled[a] = np.asarray(z["predicted"])[m] != np.asarray(z["true"])[m]
        bs = self.bootstrap  # each attack's test size per replicate: the weights of the pooled detection rate
        self.sizes = {a: bs.total(bs.per_source(np.ones(int(self.test[a].sum())), self.source[a][self.test[a]]))
                      for a in self.attack_sets}
        self._scored: OrderedDict[Setting, _Scored] = OrderedDict()
        self._eer: dict[Setting, dict] = {}
        self._at: OrderedDict[tuple[Setting, float], dict] = OrderedDict()
        self._lock = threading.Lock()
        self._blas = ThreadpoolController()  # found once: threadpool_limits() looks for the libraries every call
        log.info("live figures: %d test sources, %d replicates, positives %s", len(self.split.test),
                 config.n_boot, self.positive_sets)

    @classmethod
    def for_run(cls, data: RunData, **kw) -> LiveFigures:
        """Live figures with the run's recorded evaluation config."""
        return cls(data, EvaluationConfig.from_config(data.config), **kw)

    @property
    def trust_rule(self) -> str:
        """``"score > threshold"`` or ``"score >= threshold"``."""
        return "score > threshold" if self.strict else "score >= threshold"

    def _scores(self, s: Setting) -> _Scored:
        s = Setting(str(s[0]), str(s[1]), str(s[2]), int(s[3]))
        with self._lock:
            hit = self._scored.get(s)
            if hit is not None:
                self._scored.move_to_end(s)
                return hit

        def test(name: str) -> np.ndarray:
            return np.asarray(self.score(name, *s))[self.test[name]]

        pos = [test(n) for n in self.positive_sets]
        pos_src = [self.source[n][self.test[n]] for n in self.positive_sets]
        attacks = {a: AttackItems(test(a), self.source[a][self.test[a]], self.fooled[a], self.attempts[a])
                   for a in self.attack_sets}
        hit = _Scored(np.concatenate(pos or [np.zeros(0)]), np.concatenate(pos_src or [np.zeros(0, np.int64)]),
                      attacks)
        with self._lock:
            self._scored[s] = hit
            while len(self._scored) > self.max_settings:
                self._scored.popitem(last=False)
        return hit

    def at(self, setting: Setting | Sequence, threshold: float) -> dict:
        """Figures at ``threshold`` for ``setting`` on the test split.

        Returns
        -------
        dict
            JSON-safe: ``tpr`` ``[v, lo, hi]`` (share of test positives trusted), ``n_positives``, ``attacks[name]``
            ``{"detection_rate", "guarded_success": [v, lo, hi], "n_test"}`` (guarded success = attempts that fool
            the CNN and are trusted, over attempts), ``detection_rate`` ``[v, lo, hi]``: every attack pooled
            (the attacks' rates weighted by their test sizes, as the report's ``aggr.detection_rate``).
        """
        s = Setting(str(setting[0]), str(setting[1]), str(setting[2]), int(setting[3]))
        key = (s, float(threshold))
        with self._lock:
            hit = self._at.get(key)
            if hit is not None:
                self._at.move_to_end(key)
                return copy.deepcopy(hit)
        sc = self._scores(s)
        with self._blas.limit(limits=1, user_api="blas"):
            m = measure(self.bootstrap, float(threshold), sc.pos, sc.pos_source, sc.attacks, strict=self.strict)
        pooled = self.bootstrap.aggregate([m["attacks"][a]["detection_rate"] for a in self.attack_sets],
                                          [self.sizes[a] for a in self.attack_sets])
        out = json_safe({"tpr": m["tpr"].interval(), "n_positives": len(sc.pos), "detection_rate": pooled.interval(),
                         "attacks": {a: {"detection_rate": v["detection_rate"].interval(),
                                         "guarded_success": v["guarded_success"].interval(),
                                         "n_test": len(sc.attacks[a].scores)}
                                     for a, v in m["attacks"].items()}})
        with self._lock:  # a page opened again, or a slider back where it was: counted once
            self._at[key] = out
            while len(self._at) > 8 * self.max_settings:
                self._at.popitem(last=False)
        return copy.deepcopy(out)

    def eer(self, setting: Setting | Sequence) -> dict:
        """The paper's EER accuracy (per-attack oracle threshold) on the test split, cached per setting.

        Returns
        -------
        dict
            JSON-safe: ``aggr`` ``[v, lo, hi]``, ``attacks[name]`` ``[v, lo, hi]`` (non-empty sets only) and
            ``errors`` ``[v, lo, hi]`` (None when the run has no authentic errors on the test side).
        """
        s = Setting(str(setting[0]), str(setting[1]), str(setting[2]), int(setting[3]))
        hit = self._eer.get(s)
        if hit is None:
            sc = self._scores(s)
            negs = {a: (it.scores, it.source) for a, it in sc.attacks.items()}
            with self._blas.limit(limits=1, user_api="blas"):
                aggr, per = aggregate_eer(self.bootstrap, sc.pos, sc.pos_source, negs)
                errors = None
                if ERRORS_SET in self.test and self.test[ERRORS_SET].any():
                    m = self.test[ERRORS_SET]
                    errors = self.bootstrap.roc(sc.pos, sc.pos_source, np.asarray(self.score(ERRORS_SET, *s))[m],
                                                self.source[ERRORS_SET][m])[0].interval()
            hit = json_safe({"aggr": aggr.interval(), "attacks": {a: e.interval() for a, e in per.items()},
                             "errors": errors})
            with self._lock:
                self._eer[s] = hit
        return hit


def operating_point(report: Mapping | None) -> dict | None:
    """The report's operating point (docs/report-schema.md), or None for a report without one."""
    op = (report or {}).get("operating_point")
    return op if isinstance(op, Mapping) and "layer" in op else None


def operating_layer(report: Mapping | None, layers: Sequence[str]) -> str:
    """The layer of the report's operating point when it is one of ``layers``, else the last layer."""
    layer = (operating_point(report) or {}).get("layer")
    return layer if layer in layers else layers[-1]
