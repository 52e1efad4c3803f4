"""core.evaluation.setting_figures on the tiny run: the app's test-split figures against core.evaluation.report.honest_report and against a
hand-written weighted bootstrap; the split equals the report's."""
from __future__ import annotations

import json

import numpy as np
import pytest

N_BOOT = 200


@pytest.fixture(scope="module")
def setup(tiny_run):
    from core.evaluation.report import honest_report
    from core.evaluation.rundata import RunData
    from core.evaluation.setting_figures import EvaluationConfig, LiveFigures

    data = RunData(tiny_run, verify=False)
    cfg = EvaluationConfig.from_config(data.config)
    cfg = EvaluationConfig(cfg.protocol, cfg.validation_share, cfg.target_tpr, N_BOOT, cfg.seed)
    rep = honest_report(data, protocol=cfg.protocol, validation_share=cfg.validation_share,
                        target_tpr=cfg.target_tpr, seed=cfg.seed, n_boot=N_BOOT)
    return data, LiveFigures(data, cfg), rep


def _test_side(data, name: str, split_seed: int, share: float) -> np.ndarray:
    """Test mask of a set, from the split recomputed here."""
    from core.evaluation.splits import split_sources

    split = split_sources({s: data.evalset(s)["source"] for s in data.set_names}, share, split_seed)
    return np.isin(data.evalset(name)["source"], split.test)


def test_split_counts_equal_the_reports(setup, tiny_run):
    data, live, rep = setup
    assert live.split.to_dict() == rep["split"]
    assert live.split.to_dict()["test"] > 0
    stored = json.loads((tiny_run / "report.json").read_text()).get("split")
    if stored is not None:  # a run built by the issue-12 precompute
        assert live.split.to_dict() == stored


def test_figures_at_the_operating_point_equal_the_reports(setup):
    data, live, rep = setup
    op = rep["operating_point"]
    fig = live.at((op["layer"], op["processing"], op["fn"], op["k"]), op["threshold"])
    np.testing.assert_allclose(fig["tpr"], op["tpr_test"])
    assert set(fig["attacks"]) == set(rep["attacks"])
    for a, v in fig["attacks"].items():
        np.testing.assert_allclose(v["detection_rate"], rep["attacks"][a]["detection_rate"])
        np.testing.assert_allclose(v["guarded_success"], rep["attacks"][a]["guarded_success"])
        assert v["n_test"] == rep["attacks"][a]["n_test"]
        eer = live.eer((op["layer"], op["processing"], op["fn"], op["k"]))
        np.testing.assert_allclose(eer["attacks"][a], rep["attacks"][a]["eer_accuracy"])
    np.testing.assert_allclose(live.eer((op["layer"], op["processing"], op["fn"], op["k"]))["aggr"],
                               rep["aggr"]["eer_accuracy"])
    np.testing.assert_allclose(fig["detection_rate"], rep["aggr"]["detection_rate"])  # pooled, size-weighted


def test_figures_at_any_threshold_equal_a_weighted_bootstrap_by_hand(setup):
    data, live, _ = setup
    layer, mode = data.layers[0], data.modes[-1]
    k = int(data.summary["k_max"])
    share, seed = live.config.validation_share, live.config.seed
    counts = live.bootstrap.counts  # (B + 1, n_sources): row 0 = the sample
    col = {int(s): i for i, s in enumerate(live.bootstrap.sources)}

    def weights(src):
        return counts[:, [col[int(s)] for s in src]].astype(np.float64)  # (B + 1, n)

    def interval(num, den):
        r = num / den
        lo, hi = np.percentile(r[1:][~np.isnan(r[1:])], [2.5, 97.5])
        return [r[0], lo, hi]

    pos_sets = live.positive_sets
    pos = np.concatenate([np.nan_to_num(data.scores(s, layer, mode, "dwknn", k))[_test_side(data, s, seed, share)]
                          for s in pos_sets])
    pos_src = np.concatenate([data.evalset(s)["source"][_test_side(data, s, seed, share)] for s in pos_sets])
    th = float(np.median(pos))
    fig = live.at((layer, mode, "dwknn", k), th)
    w = weights(pos_src)
    np.testing.assert_allclose(fig["tpr"], interval(w @ (pos >= th), w.sum(1)))
    for a in live.attack_sets:
        m = _test_side(data, a, seed, share)
        neg = np.nan_to_num(data.scores(a, layer, mode, "dwknn", k))[m]
        if not len(neg):
            continue
        w = weights(data.evalset(a)["source"][m])
        np.testing.assert_allclose(fig["attacks"][a]["detection_rate"], interval(w @ (neg < th), w.sum(1)))


def test_eer_on_the_test_split_equals_core_metrics(setup):
    from core.evaluation import metrics

    data, live, _ = setup
    layer, mode, k = data.layers[-1], data.modes[0], int(data.summary["k_max"])
    share, seed = live.config.validation_share, live.config.seed
    pos = np.concatenate([data.scores(s, layer, mode, "knn", k)[_test_side(data, s, seed, share)]
                          for s in live.positive_sets])
    e = live.eer((layer, mode, "knn", k))
    accs, sizes = [], []
    for a in live.attack_sets:
        neg = data.scores(a, layer, mode, "knn", k)[_test_side(data, a, seed, share)]
        if len(neg):
            r = metrics.roc(pos, neg)
            assert e["attacks"][a][0] == pytest.approx(r.eer_accuracy)
            accs.append(r.eer_accuracy)
            sizes.append(len(neg))
    assert e["aggr"][0] == pytest.approx(metrics.aggregate(accs, sizes))


def test_a_run_without_source_ids_is_refused(setup):
    from core.evaluation.setting_figures import EvaluationConfig, LiveFigures

    data, _, _ = setup

    class NoSource:
        set_names, attack_sets, config, summary = data.set_names, data.attack_sets, data.config, data.summary

        def evalset(self, name):
            return {k: v for k, v in data.evalset(name).items() if k != "source"}

    with pytest.raises(ValueError, match="rebuild"):
        LiveFigures(NoSource(), EvaluationConfig())


def test_operating_layer_reads_the_operating_point_not_the_old_headline():
    from core.evaluation.setting_figures import operating_layer, operating_point

    layers = ["a", "b", "c"]
    assert operating_layer({"operating_point": {"layer": "b"}}, layers) == "b"
    assert operating_layer({"headline": {"best": {"layer": "a"}}}, layers) == "c"  # an old report: last layer
    assert operating_layer(None, layers) == "c" and operating_point({"attacks": []}) is None


def test_figures_at_a_threshold_seen_before_are_kept_and_handed_out_as_copies(setup, monkeypatch):
    import core.evaluation.setting_figures as live_mod

    data, live, _ = setup
    setting = (data.layers[0], data.modes[0], "knn", int(data.summary["k_max"]))
    first = live.at(setting, 0.4321)
    calls = []
    monkeypatch.setattr(live_mod, "measure", lambda *a, **kw: calls.append(a) or pytest.fail("counted again"))
    again = live.at(list(setting), 0.4321)  # the same setting, as another sequence type
    assert again == first and not calls
    again["tpr"][0] = -1.0  # a caller's change stays with the caller
    assert live.at(setting, 0.4321) == first
    with pytest.raises(pytest.fail.Exception, match="counted again"):
        live.at(setting, 0.4322)  # a new threshold is counted
