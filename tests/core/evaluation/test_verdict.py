"""core.evaluation.verdict (trust rule, validation thresholds per layer, overall verdict) and core.evaluation.ood (unlike training)."""
from __future__ import annotations

import json

import numpy as np
import pytest

# ----------------------------------------------------------------------------------------------- verdict
from core.evaluation import ood, verdict


def test_trust_rule_follows_the_protocol_and_the_boundary():
    assert verdict.is_strict({"evaluation": {"protocol": "authors"}})
    assert not verdict.is_strict({"evaluation": {"protocol": "paper"}}) and not verdict.is_strict({})
    assert verdict.trusts(0.5, 0.5, strict=False) and not verdict.trusts(0.5, 0.5, strict=True)
    assert not verdict.trusts(float("nan"), 0.0, strict=True) and verdict.trusts(float("nan"), 0.0, strict=False)
    assert verdict.trust_text(True) == "score > threshold" and verdict.trust_text(False) == "score ≥ threshold"


SCORES = {"conv1": 0.1, "conv2": 0.9, "conv3": 0.6, "fc1": 0.2}
THRESH = {"conv1": 0.3, "conv2": 0.5, "conv3": 0.6, "fc1": 0.3}


def test_overall_verdict_combinations():
    v = verdict.overall_verdict(SCORES, THRESH, how="validation", operating_layer="conv3", strict=False)
    assert v.trusted and v.layers == ["conv3"] and v.rejecting == []
    v = verdict.overall_verdict(SCORES, THRESH, how="validation", operating_layer="conv3", strict=True)
    assert not v.trusted and v.rejecting == ["conv3"]  # 0.6 > 0.6 is false
    v = verdict.overall_verdict(SCORES, THRESH, how="any", operating_layer="conv3", strict=False)
    assert not v.trusted and v.rejecting == ["conv1", "fc1"]
    v = verdict.overall_verdict(SCORES, THRESH, how="majority", operating_layer="conv3", strict=False)
    assert v.trusted  # 2 of 4 reject: not a majority
    v = verdict.overall_verdict(SCORES, THRESH, how="majority", operating_layer="conv3", strict=True)
    assert not v.trusted and v.rejecting == ["conv1", "conv3", "fc1"]
    with pytest.raises(ValueError):
        verdict.overall_verdict(SCORES, THRESH, how="vote", operating_layer="conv3", strict=False)
    with pytest.raises(ValueError):
        verdict.overall_verdict(SCORES, THRESH, operating_layer="conv9", strict=False)


def test_validation_thresholds_give_the_reports_operating_threshold(tiny_run):
    from core.evaluation.rundata import RunData

    data = RunData(tiny_run, verify=False)
    op = json.loads((tiny_run / "report.json").read_text())["operating_point"]
    th = verdict.validation_thresholds(data, op["processing"], op["fn"], op["k"])
    assert set(th) == set(data.layers)
    assert th[op["layer"]] == pytest.approx(op["threshold"], abs=0)
    # About the target TPR of the validation positives is trusted at every layer.
    assert all(np.isfinite(v) for v in th.values())


# --------------------------------------------------------------------------------------------------- ood
def test_kth_distance_and_percentile():
    D = np.array([[1.0, 2.0, 3.0], [0.5, 4.0, 9.0]])
    assert ood.kth_distance(D, 2).tolist() == [2.0, 4.0]
    with pytest.raises(ValueError):
        ood.kth_distance(D, 4)
    ref = ood.OODReference("l", "m", 2, np.arange(100.0), 99.0, 98.0)
    assert ref.percentile([-1, 50, 1000]).tolist() == [0.0, 50.0, 100.0]
    assert ref.flags([98.0, 98.5]).tolist() == [False, True]


@pytest.fixture(scope="module")
def tiny(tiny_run):
    from core.detector import Detector
    from core.evaluation.rundata import RunData
    from core.evaluation.setting_figures import operating_layer

    data = RunData(tiny_run, verify=False)
    rep = json.loads((tiny_run / "report.json").read_text())
    return data, Detector.load(tiny_run), operating_layer(rep, data.layers), rep["operating_point"]


def test_ood_flags_white_and_noise_not_held_out_authentic(tiny):
    data, det, _, op = tiny
    mode, k, layers = op["processing"], int(op["k"]), data.layers
    refs = ood.references(data, layers, mode, k)
    assert all(r.limit_percentile == pytest.approx(100 - 1 / len(layers)) for r in refs.values())
    shape = data.evalset("authentic")["images"].shape[1:]
    white = np.full(shape, 255, np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    for img in (white, noise):
        nb = det.inspect(img, mode=mode, k=k, n_neighbours=k).neighbours
        a = ood.assess(refs, {la: nb[la].distances[k - 1] for la in layers})
        assert a.flagged and a.flagged_layers and a.percentile == 100.0
    # Held-out authentic images (both sides of the split) are flagged rarely; the test side is not the reference.
    flagged = {side: np.zeros(len(ood.reference(data, layers[0], mode, k, side=side).distances), bool)
               for side in ("validation", "test")}
    for side in flagged:
        src = data.evalset("authentic")["source"]
        from core.evaluation.setting_figures import EvaluationConfig
        from core.evaluation.splits import split_sources

        c = EvaluationConfig.from_config(data.config)
        m = split_sources({s: data.evalset(s)["source"] for s in data.set_names}, c.validation_share,
                          c.seed).mask(src, side)
        for la in layers:
            flagged[side] |= refs[la].flags(ood.kth_distance(data.neighbours("authentic", la, mode).D, k)[m])
    both = np.concatenate(list(flagged.values()))
    assert both.mean() < 0.05 and flagged["test"].mean() < 0.10
    # A live search reproduces the stored distance of an authentic image.
    e = data.evalset("authentic")
    stored = ood.kth_distance(data.neighbours("authentic", layers[0], mode).D, k)[0]
    live = det.inspect(e["images"][0], mode=mode, k=k, n_neighbours=k).neighbours[layers[0]].distances[k - 1]
    assert live == pytest.approx(stored, rel=1e-4, abs=1e-5)
