"""The report stage of issue 12: report.json's contract, the success rule, the noise variants, tables measured on
the test split only, and report.md's interval format."""
import re

import numpy as np
import pytest

from core.evaluation.bootstrap import SourceBootstrap
from core.evaluation.report import json_safe
from core.evaluation.rundata import RunData, SetNeighbours
from core.evaluation.splits import split_sources
from core.knn import processing
from core.runs.folder import RunDir
from precompute.stages import evalsets
from precompute.stages.report import paper_tables

CI = re.compile(r"-?\d+\.\d \[-?\d+\.\d, -?\d+\.\d\]")


def test_report_json_contract(tiny_run):
    rep = RunDir(tiny_run).load_json("report.json")
    for key in ("run", "model", "sets", "stage_seconds", "k", "layers", "modes", "k_sweep", "per_layer", "rows",
                "attack_sets", "protocol", "positives", "split", "operating_point", "attacks", "aggr", "errors",
                "findings", "reversals", "processing_labels"):
        assert key in rep, key
    assert "headline" not in rep and "best_mode" not in rep
    assert rep["protocol"] == "paper" and rep["positives"] == ["authentic", "noise"]
    assert set(rep["split"]) >= {"validation", "test", "seed"} and rep["split"]["test"] > 0
    op = rep["operating_point"]
    assert set(op) >= {"layer", "processing", "fn", "k", "threshold", "target_tpr", "tpr_test", "rule", "trust",
                       "criterion", "tpr_validation"}
    assert len(op["tpr_test"]) == 3 and op["layer"] in rep["layers"] and op["processing"] in rep["modes"]
    assert rep["attack_sets"] == ["fgsm", "ifgsm"] and set(rep["attacks"]) == {"fgsm", "ifgsm"}
    for a, v in rep["attacks"].items():
        for key in ("detection_rate", "guarded_success", "eer_accuracy", "auc"):
            assert len(v[key]) == 3 and (v[key][0] is None or v[key][1] <= v[key][0] <= v[key][2]), (a, key)
        assert 0 <= v["success_changed"] <= 1 and "success_target" in v and v["n_test"] > 0
    assert rep["attacks"]["fgsm"]["success_target"] is None  # FGSM is untargeted by default
    assert rep["attacks"]["ifgsm"]["success_target"] <= rep["attacks"]["ifgsm"]["success_changed"]
    assert len(rep["aggr"]["eer_accuracy"]) == 3 and len(rep["aggr"]["detection_rate"]) == 3
    for f in rep["findings"]:
        assert f["verdict"] in ("holds", "reversed", "not shown") and len(f["difference"]) == 3
    assert all(r["difference"][2] < 0 for r in rep["reversals"])
    # processing named by what it does, from the fitted parameters
    run = RunDir(tiny_run)
    for layer in rep["layers"]:
        d_in = run.load_npy(f"features/{layer}.npy", mmap=True).shape[1]
        assert rep["processing_labels"][layer] == {
            m: processing.describe(run.load_npz(f"processing/{layer}-{m}.npz"), d_in) for m in rep["modes"]}
    assert rep["processing_labels"]["conv2"]["none"] == "none (raw features)"
    assert rep["processing_labels"]["fc1"]["pca"].endswith("whitening")
    cols = set(rep["attack_sets"]) | {"aggr", "errors"}
    for r in rep["rows"]:
        assert set(r["ci"]) == cols and all(lo <= hi for lo, hi in r["ci"].values())
    assert all(set(r["ci"]) == {"aggr", "errors"} for r in rep["k_sweep"])
    assert {r["mode"] for r in rep["per_layer"]} == {rep["per_layer_mode"]} == {op["processing"]}
    # the manifest records the split and the operating point, the stage's labels
    summary = RunDir(tiny_run).manifest["summary"]
    assert summary["split"] == rep["split"] and summary["operating_point"] == op and "headline" not in summary
    assert summary["processing_labels"] == rep["processing_labels"]
    assert summary["sets"]["ifgsm"]["success_target"] == pytest.approx(rep["sets"]["ifgsm"]["success_target"])


def test_report_md_shows_intervals(tiny_run):
    md = (tiny_run / "report.md").read_text()
    for section in ("## Protocol and split", "## Operating point", "## Per attack (test split)",
                    "paper's metric, oracle threshold per attack", "## The paper's findings", "Reversals",
                    "## Processing, named by what it does", "Table 2 style", "Table 4 style", "k sweep",
                    "L2-normalised"):
        assert section in md, section
    per_attack = md[md.index("## Per attack"):md.index("## The paper's findings")]
    assert len(CI.findall(per_attack)) >= 2 * 4  # detection, guarded success, EER accuracy, AUC per attack
    table2 = md[md.index("Table 2 style"):md.index("Table 4 style")]
    assert CI.search(table2)


def _picked(images: np.ndarray, true: np.ndarray) -> evalsets.Picked:
    n = len(true)
    return evalsets.Picked(None, true.copy(), np.arange(n), np.zeros(0, np.int64), 0, images, 10)


def test_success_rule_counts_changed_and_target():
    """An attempt counts when the stored image's prediction differs from the true class; target reached is
    counted apart."""
    true = np.array([0, 1, 2, 3, 4, 5])
    pred = np.array([0, 7, 9, 3, 8, 6])      # 4 changed (rows 1, 2, 4, 5)
    target = np.array([5, 7, 2, 1, 8, 9])    # reached on rows 1 and 4 only
    keep = evalsets.kept(true, pred)
    assert keep.tolist() == [False, True, True, False, True, True]
    images = np.zeros((6, 2, 2, 1), np.uint8)
    z = {"images": images[keep] + 3, "true": true[keep], "predicted": pred[keep], "target": target[keep],
         "source": np.arange(6)[keep], "attempted": np.array(6)}
    st = evalsets.set_stats(z, _picked(images, true), 6)
    assert st["n"] == 4 and st["attempted"] == 6
    assert st["success_changed"] == pytest.approx(4 / 6) and st["success_target"] == pytest.approx(2 / 6)
    assert st["mean_linf"] == pytest.approx(3 / 255)
    z["target"] = np.full(4, -1)  # untargeted: no target rate
    assert evalsets.set_stats(z, _picked(images, true), 6)["success_target"] is None


def test_sign_noise_is_plus_minus_eps_and_uniform_unchanged():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(20, 28, 28, 1)).astype(np.uint8)
    eps = 0.1
    d = evalsets.noise_delta("sign", eps, images.shape, seed=7)
    assert set(np.unique(d).tolist()) <= {-eps, eps} and (d > 0).any() and (d < 0).any()
    noisy = np.clip(np.rint(images + d * 255), 0, 255).astype(np.uint8)
    free = (images.astype(int) + 26 <= 255) & (images.astype(int) - 26 >= 0)  # never clipped
    step = noisy.astype(int) - images.astype(int)
    expected = np.rint(images + np.sign(d) * eps * 255).astype(int) - images.astype(int)
    assert np.array_equal(step[free], expected[free])
    assert set(np.unique(np.abs(step[free])).tolist()) <= {25, 26}  # eps * 255 = 25.5, rounded half to even
    # the default stays byte-identical with the former uniform noise
    old = np.random.default_rng([7, 1]).uniform(-eps, eps, size=images.shape)
    assert np.array_equal(evalsets.noise_delta("uniform", eps, images.shape, seed=7), old)
    with pytest.raises(ValueError, match="unknown noise"):
        evalsets.noise_delta("gauss", eps, images.shape, seed=7)


def _tables(data: RunData, split) -> dict:
    sc = data.config["scoring"]
    return json_safe(paper_tables(data.restricted(split.test), SourceBootstrap(split.test, n_boot=200, seed=0),
                                  k=sc["k"], k_sweep=sc["k_sweep"], fn=sc["fn"], mode=data.modes[-1]))


def _scrambled(data: RunData, side_ids: np.ndarray):
    """Neighbours with the items of the sources in ``side_ids`` pointed at other training images."""
    def nb(name, layer, mode):
        orig = data.neighbours(name, layer, mode)
        m = np.isin(data.evalset(name)["source"], side_ids)
        I = orig.I.copy()
        I[m] = (I[m] + 1 + np.arange(I.shape[1])) % len(data.train_labels)
        return SetNeighbours(I, orig.D)
    return nb


def test_tables_use_only_the_test_split(tiny_run):
    data = RunData(tiny_run, verify=False)
    split = split_sources({s: data.evalset(s)["source"] for s in data.set_names}, 0.5, 0)
    base = _tables(data, split)
    same = _tables(RunData(tiny_run, verify=False, neighbours_from=_scrambled(data, split.validation)), split)
    assert same["rows"] == base["rows"] and same["k_sweep"] == base["k_sweep"]
    moved = _tables(RunData(tiny_run, verify=False, neighbours_from=_scrambled(data, split.test)), split)
    assert moved["rows"] != base["rows"]
    n_test = {s: int(np.isin(data.evalset(s)["source"], split.test).sum()) for s in data.attack_sets}
    assert {a: c["n"] for a, c in base["rows"][0]["attacks"].items()} == {a: n for a, n in n_test.items() if n}
