"""core.evaluation.paper_figures's page figures (EER thresholds, best layer, failure cases, trusted shares, perturbation norms)
against independent computations: scores from the stored ``.npz`` files with a plain kNN vote, rankings with a
stable numpy argsort, rates by brute force over thresholds.

    .venv/bin/python -m pytest tests/core/evaluation/test_paper_figures.py -q
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from core.evaluation import metrics
from core.evaluation import paper_figures as ev
from core.evaluation.rundata import RunData, SetNeighbours

FN = "knn"  # the plain vote, recomputed here without core.knn.scoring


@pytest.fixture(scope="module")
def run(tiny_run) -> dict:
    data = RunData(tiny_run, verify=False)
    m = json.loads((tiny_run / "manifest.json").read_text())
    return {"path": tiny_run, "data": data, "mode": m["summary"]["defaults"]["mode"],
            "k": min(20, m["summary"]["k_max"]), "labels": np.load(tiny_run / "train_labels.npy"),
            "report": json.loads((tiny_run / "report.json").read_text())}


def _nb(run: dict, name: str, layer: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(run["path"] / "neighbours" / name / f"{layer}-{run['mode']}.npz") as z:
        return z["I"], z["D"]


def _pred(run: dict, name: str) -> np.ndarray:
    with np.load(run["path"] / "evalsets" / f"{name}.npz") as z:
        return z["predicted"]


def _knn_scores(run: dict, name: str, layer: str) -> np.ndarray:
    """Share of the first k stored neighbours whose label is the predicted class."""
    I, _ = _nb(run, name, layer)
    I = I[:, :run["k"]]
    return (run["labels"][I] == _pred(run, name)[:, None]).mean(axis=1) if len(I) else np.zeros(0)


def _sets(run: dict) -> tuple[list[str], list[str]]:
    sets = json.loads((run["path"] / "manifest.json").read_text())["summary"]["sets"]
    return ([s for s in ("authentic", "noise") if s in sets],
            [s for s in sets if s not in ("authentic", "noise", "errors")])


def test_scores_match_an_independent_knn_vote(run):
    layer = run["data"].layers[0]
    for name in run["data"].set_names:
        np.testing.assert_allclose(run["data"].scores(name, layer, run["mode"], FN, run["k"]),
                                   _knn_scores(run, name, layer))


def test_eer_thresholds_split_positives_and_every_attack_at_equal_error(run):
    pos_sets, attacks = _sets(run)
    got = ev.eer_thresholds(run["data"], run["mode"], FN, run["k"])
    assert list(got) == run["data"].layers
    for layer, th in got.items():
        pos = np.concatenate([_knn_scores(run, s, layer) for s in pos_sets])
        neg = np.concatenate([_knn_scores(run, s, layer) for s in attacks])
        assert th == pytest.approx(metrics.roc(pos, neg).eer_threshold, abs=1e-12)
        # Brute force over the score values: th lies where FNR - FPR of trusting score >= t changes sign.
        u = np.unique(np.r_[pos, neg])
        lower, upper = u[u <= th], u[u > th]
        if len(lower):
            assert (pos < lower[-1]).mean() <= (neg >= lower[-1]).mean() + 1e-12
        if len(upper):
            assert (pos < upper[0]).mean() >= (neg >= upper[0]).mean() - 1e-12


class _Stub:
    """Just what eer_thresholds reads, with chosen score arrays."""

    def __init__(self, sets: dict[str, np.ndarray]):
        self.sets, self.layers = sets, ["a", "b"]
        self.set_names = list(sets)
        self.attack_sets = [s for s in sets if s not in ("authentic", "noise", "errors")]

    def scores(self, name, layer, mode, fn, k):
        return self.sets[name]

    def positives(self, layer, mode, fn, k):
        return np.concatenate([self.sets[s] for s in ("authentic", "noise") if s in self.sets])


def test_eer_thresholds_fall_back_to_errors_then_to_one_half():
    pos, err = np.array([0.9, 0.8, 0.7, 0.95]), np.array([0.1, 0.2, 0.3])
    got = ev.eer_thresholds(_Stub({"authentic": pos, "errors": err, "fgsm": np.zeros(0)}), "m", "f", 1)
    want = metrics.roc(pos, err).eer_threshold
    assert got == {"a": want, "b": want} and 0.3 <= want <= 0.7
    assert ev.eer_thresholds(_Stub({"authentic": pos}), "m", "f", 1) == {"a": 0.5, "b": 0.5}


def _round_robin(block: list[tuple[str, int, float]], sets: list[str]) -> list[tuple[str, int]]:
    """Items (set, index, key) of one tie block, each set's in key order, interleaved set by set."""
    per = [sorted([x for x in block if x[0] == s], key=lambda x: x[2]) for s in sets]
    out = []
    while any(per):
        for q in per:
            if q:
                out.append(q.pop(0)[:2])
    return out


@pytest.mark.parametrize("n", [3, 1000])
def test_failure_cases_rank_by_score_then_distance_mixing_attacks(run, n):
    data, layer, (pos_sets, attacks) = run["data"], run["data"].layers[-1], _sets(run)
    fc = ev.failure_cases(data, layer, run["mode"], FN, run["k"], attacks, n)
    pos = np.concatenate([_knn_scores(run, s, layer) for s in pos_sets])
    per = [_knn_scores(run, a, layer) for a in attacks]
    allsc = np.concatenate(per)
    d0 = np.concatenate([_nb(run, a, layer)[1][:, 0] for a in attacks])
    th = metrics.roc(pos, allsc).eer_threshold
    assert fc.threshold == pytest.approx(th, abs=1e-12)
    where = [(a, i) for a, sc in zip(attacks, per) for i in range(len(sc))]
    want = {"caught": [], "missed": []}
    for side, mask, sign in (("caught", allsc < th, 1), ("missed", allsc >= th, -1)):
        for v in sorted(set(allsc[mask]), key=lambda v: sign * v):  # caught: far first on ties; missed: near
            block = [(*where[j], -sign * d0[j] + 1e-9 * j) for j in np.flatnonzero(mask & (allsc == v))]
            want[side] += _round_robin(block, attacks)
    assert (fc.n_caught, fc.n_total) == (int((allsc < th).sum()), len(allsc))
    assert [(c.set, c.index) for c in fc.caught] == want["caught"][:n]
    assert [(c.set, c.index) for c in fc.missed] == want["missed"][:n]
    for c in fc.caught + fc.missed:
        I, D = _nb(run, c.set, layer)
        assert c.predicted == _pred(run, c.set)[c.index]
        hits = np.flatnonzero(run["labels"][I[c.index]] == c.predicted)
        assert c.nearest == ((int(I[c.index, hits[0]]), float(D[c.index, hits[0]])) if len(hits) else None)


def test_rank_ties_mixes_sets_on_equal_scores():
    items = [("a", 0, 0.0, 1.0), ("a", 1, 0.0, 3.0), ("a", 2, 0.0, 2.0), ("b", 0, 0.0, 5.0), ("b", 1, 0.5, 9.0)]
    assert [x[:2] for x in ev.rank_ties(items, descending=False)] == [("a", 1), ("b", 0), ("a", 2), ("a", 0),
                                                                     ("b", 1)]
    assert [x[:2] for x in ev.rank_ties(items, descending=True)] == [("b", 1), ("a", 0), ("b", 0), ("a", 2),
                                                                    ("a", 1)]


def test_failure_cases_search_within_the_class_when_no_stored_neighbour_has_it(run):
    from core.detector import Detector
    from core.knn import processing

    data, layer, (_, attacks) = run["data"], run["data"].layers[-1], _sets(run)
    det = Detector.load(run["path"], verify="none")
    asked = []

    def nearest(name, i, cls):
        asked.append((name, i))
        return det.nearest_of_class(data.evalset(name)["images"][i], layer, run["mode"], cls)

    fc = ev.failure_cases(data, layer, run["mode"], FN, run["k"], attacks, 1000, nearest=nearest)
    assert all(c.nearest is not None for c in fc.caught + fc.missed)
    feats = np.load(run["path"] / "features" / f"{layer}.npy")
    params = dict(np.load(run["path"] / "processing" / f"{layer}-{run['mode']}.npz"))
    xb = processing.apply(params, feats)
    for name, i in asked[:5]:
        c = next(c for c in fc.caught + fc.missed if (c.set, c.index) == (name, i))
        I, _ = _nb(run, name, layer)
        assert not (run["labels"][I[i]] == c.predicted).any()  # asked only when no stored neighbour has the class
        _, f = det.forward(det.prepare(data.evalset(name)["images"][i]))
        xq = processing.apply(params, f[layer])
        ids = np.flatnonzero(run["labels"] == c.predicted)
        d2 = ((xb[ids].astype(np.float64) - xq) ** 2).sum(axis=1)
        assert c.nearest[0] == ids[d2.argmin()] and c.nearest[1] == pytest.approx(d2.min(), rel=1e-4)


def test_trusted_share_equals_one_pass_per_threshold():
    rng = np.random.default_rng(0)
    grid = np.linspace(0, 1, 501)
    for sc in (rng.random(50), np.r_[rng.random(20), [np.nan, 0.0, 1.0, 0.5]]):
        want = [(np.nan_to_num(sc) >= t).mean() for t in grid]
        np.testing.assert_allclose(ev.trusted_share(sc, grid), want)


def test_separation_curves_and_operating_point():
    rng = np.random.default_rng(1)
    parts, negs = [rng.random(30), rng.random(10)], {"x": rng.random(25) / 2, "y": rng.random(5)}
    sep = ev.Separation(parts, negs)
    pos, neg = np.r_[parts[0], parts[1]], np.r_[negs["x"], negs["y"]]
    assert sep.roc.auc == metrics.roc(pos, neg).auc and sep.at(0.4) == metrics.rates_at(pos, neg, 0.4)
    assert 0 <= sep.eer_threshold <= 1
    centres, dens = sep.densities()
    assert len(centres) == 40 and len(dens) == 3
    for d, sc in zip(dens, (pos, negs["x"], negs["y"])):
        np.testing.assert_allclose(d.sum() / 40, 1.0)  # a density on [0, 1]
        np.testing.assert_allclose(d / 40 * len(sc), np.histogram(sc, bins=40, range=(0, 1))[0])
    grid, shares = sep.trusted_shares()
    np.testing.assert_allclose(shares[1], [(negs["x"] >= t).mean() for t in grid])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(ev.Separation(parts, {}).all_negatives) == 0  # no ROC computed until asked


def test_perturbation_norms_on_the_unit_scale():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    b = a.copy()
    b[0, 0, 0, 0] = 255 - b[0, 0, 0, 0] // 2 if b[0, 0, 0, 0] < 128 else 0
    b[1] = np.clip(a[1].astype(int) + 10, 0, 255)
    p = ev.perturbation_norms(a, b)
    for i in range(3):
        d = (b[i].astype(float) - a[i].astype(float)) / 255
        assert p.l2[i] == np.sqrt((d ** 2).sum()) or p.l2[i] == pytest.approx(np.sqrt((d ** 2).sum()), rel=1e-15)
        assert p.linf[i] == np.abs(d).max() and p.changed[i] == (d != 0).mean()
    assert p.l2[2] == p.linf[2] == p.changed[2] == 0


def test_rundata_takes_neighbours_from_a_search_and_lists_them(run):
    layer, mode = run["data"].layers[0], run["mode"]
    calls = []

    def search(name, layer_, mode_):
        calls.append((name, layer_, mode_))
        I, D = _nb(run, name, layer_)
        return SetNeighbours(I[:, ::-1].copy(), D[:, ::-1].copy())  # farthest first: different scores

    data = RunData(run["path"], verify=False, neighbours_from=search)
    got = data.scores("authentic", layer, mode, FN, 5)
    I, _ = _nb(run, "authentic", layer)
    want = (run["labels"][I[:, ::-1][:, :5]] == _pred(run, "authentic")[:, None]).mean(axis=1)
    np.testing.assert_allclose(got, want)
    data.scores("authentic", layer, mode, FN, 3)  # loaded once
    assert calls == [("authentic", layer, mode)]
    assert [key for key, _ in data.loaded_neighbours()] == [("authentic", layer, mode)]


def test_row_accuracy_reads_attacks_aggregate_and_errors(run):
    row = run["report"]["rows"][0]
    attack = next(iter(row["attacks"]))
    assert ev.row_accuracy(row, attack) == row["attacks"][attack]["eer_acc"]
    assert ev.row_accuracy(row, "aggr") == row["aggr"]
    assert ev.row_accuracy(row, "errors") == row.get("errors", {}).get("eer_acc", np.nan) or "errors" not in row
    assert np.isnan(ev.row_accuracy({"aggr": 0.5, "attacks": {}}, "pgd"))
    assert np.isnan(ev.row_accuracy({"aggr": 0.5, "attacks": {}}, "errors"))
