"""Paired bootstrap over source images."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import binomtest

from core.evaluation import metrics
from core.evaluation.bootstrap import Estimate, SourceBootstrap


def test_binomial_ci_close_to_clopper_pearson():
    n, k = 400, 88
    flags = np.zeros(n, bool)
    flags[:k] = True
    bs = SourceBootstrap(np.arange(n), n_boot=4000, seed=0)
    v, lo, hi = bs.rate(flags, np.arange(n)).interval()
    ci = binomtest(k, n).proportion_ci(0.95, method="exact")
    assert v == pytest.approx(k / n)
    assert lo == pytest.approx(ci.low, abs=0.01) and hi == pytest.approx(ci.high, abs=0.01)


def test_resampling_keeps_pairs():
    # every source has one positive and one negative; a replicate weights both by the same count
    n = 50
    src = np.arange(100, 100 + n)
    bs = SourceBootstrap(src, n_boot=200, seed=1)
    c = bs.counts[1:]
    assert np.allclose(c.sum(axis=1), n) and (bs.counts[0] == 1).all()
    pos_w = bs.per_source(np.ones(n), src)
    neg_w = bs.per_source(np.ones(n), src[::-1])
    assert np.array_equal(bs.total(pos_w).replicates, bs.total(neg_w).replicates)
    # a paired difference of identical statistics has a zero-width interval
    a = bs.rate(np.arange(n) % 3 == 0, src)
    assert (a - a).interval() == [0.0, 0.0, 0.0]


def test_roc_matches_metrics_on_sample_and_on_each_replicate():
    rng = np.random.default_rng(2)
    warnings.simplefilter("ignore", RuntimeWarning)
    for trial in range(40):
        n = int(rng.integers(3, 80))
        src = np.arange(n) * 3 + 7
        pos = np.round(rng.random(n), int(rng.integers(0, 3)))  # rounding makes ties
        k = int(rng.integers(1, n + 1))
        neg = np.round(rng.random(k) * rng.random() * 1.5, int(rng.integers(0, 3)))
        neg_src = rng.choice(src, k, replace=False)
        bs = SourceBootstrap(src, n_boot=6, seed=trial)
        acc, auc = bs.roc(pos, src, neg, neg_src)
        r = metrics.roc(pos, neg)
        assert acc.value == pytest.approx(r.eer_accuracy, abs=1e-12)
        assert auc.value == pytest.approx(r.auc, abs=1e-12)
        for b in range(6):
            c = bs.counts[b + 1].astype(int)
            wp, wn = c[bs.positions(src)], c[bs.positions(neg_src)]
            if wn.sum() == 0:
                assert np.isnan(acc.replicates[b])
                continue
            rr = metrics.roc(np.repeat(pos, wp), np.repeat(neg, wn))
            assert acc.replicates[b] == pytest.approx(rr.eer_accuracy, abs=1e-12)
            assert auc.replicates[b] == pytest.approx(rr.auc, abs=1e-12)


def test_aggregate_weights_by_size_per_replicate():
    bs = SourceBootstrap(np.arange(4), n_boot=3, seed=0)
    a = Estimate(0.8, np.array([0.8, 0.7, np.nan]))
    b = Estimate(0.6, np.array([0.6, 0.5, 0.4]))
    sa = Estimate(3.0, np.array([3.0, 1.0, 2.0]))
    sb = Estimate(1.0, np.array([1.0, 3.0, 2.0]))
    g = bs.aggregate([a, b], [sa, sb])
    assert g.value == pytest.approx(metrics.aggregate([0.8, 0.6], [3, 1]))
    assert np.allclose(g.replicates, [0.75, 0.55, 0.4])


def test_deterministic_and_unknown_source_rejected():
    a, b = SourceBootstrap([3, 1, 2], n_boot=10, seed=5), SourceBootstrap([1, 2, 3], n_boot=10, seed=5)
    assert np.array_equal(a.counts, b.counts)
    with pytest.raises(ValueError, match="not resampled"):
        a.positions([4])
    with pytest.raises(ValueError):
        SourceBootstrap([], n_boot=10)


def test_aggregate_of_no_set_is_undefined_not_an_error():
    from core.evaluation.bootstrap import SourceBootstrap

    est = SourceBootstrap(np.arange(10), n_boot=50, seed=0).aggregate([], [])
    assert np.isnan(est.value) and est.replicates.shape == (50,) and np.isnan(est.replicates).all()
