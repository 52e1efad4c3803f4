"""The detectors stage on the tiny real run: stored fits and scores, the report's Detectors table, one image."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.peers import ALL, DETECTOR_NAMES, store
from core.runs.folder import RunDir


@pytest.fixture(scope="module")
def report(tiny_run) -> dict:
    return json.loads((tiny_run / "report.json").read_text())


def test_every_detector_is_fitted_and_reported_with_the_reports_fields(tiny_run, report):
    run = RunDir(tiny_run)
    assert run.manifest["stages"]["detectors"]["status"] == "done"
    metas = store.entries(run)
    layers = run.manifest["summary"]["layers"]
    assert list(metas) == [f"knn-{la}" for la in layers] + [n for n in DETECTOR_NAMES if n != "knn"]
    attacks = list(report["attacks"])
    for entry, meta in metas.items():
        assert set(report["detectors"][entry]) == set(attacks)
        want_fits = {ALL, *attacks} if meta["supervised"] else {ALL}
        assert set(meta["fits"]) == want_fits
        for a in attacks:
            row = report["detectors"][entry][a]
            assert set(report["attacks"][a]) <= set(row)
            assert row["fit"] == (a if meta["supervised"] else ALL)
            v, lo, hi = row["detection_rate"]
            assert lo <= v <= hi
    for f in run.manifest["files"]:
        if f.startswith("detectors/"):
            run.verify([f], full=True)  # hashed in the manifest


def test_the_knn_layer_detector_is_the_reports_knn_score(tiny_run):
    from core.evaluation.rundata import RunData

    data = RunData(tiny_run)
    d = data.summary["defaults"]
    la = data.layers[0]
    stored = store.load_scores(data.run, f"knn-{la}")
    for s in data.set_names:
        if len(data.evalset(s)["source"]):
            assert np.allclose(stored[s], np.nan_to_num(data.scores(s, la, d["mode"], d["fn"], d["k"])))


def test_detection_rate_is_measured_at_the_stored_validation_threshold(tiny_run, report):
    from core.evaluation.rundata import RunData
    from core.evaluation.splits import split_sources

    data = RunData(tiny_run)
    cfg = data.config["evaluation"]
    split = split_sources({s: data.evalset(s)["source"] for s in data.set_names}, cfg["validation_share"],
                          data.config["seed"])
    a = data.attack_sets[0]
    meta = data.run.load_json(store.meta_rel("msp"))
    s = store.load_scores(data.run, "msp")[a][split.mask(data.evalset(a)["source"], "test")]
    assert report["detectors"]["msp"][a]["detection_rate"][0] == pytest.approx(
        float((s < meta["fits"][ALL]["threshold"]).mean()))


def test_one_image_through_the_bank_gets_the_stored_score_of_every_detector(tiny_run):
    from core.detector import Detector
    from core.peers.single import DetectorBank

    det = Detector.load(tiny_run)
    bank = DetectorBank.load(det.run)
    img = RunDir(tiny_run).load_npz("evalsets/authentic.npz")["images"][3]
    verdicts = bank.verdicts(det, img)
    assert [v.entry for v in verdicts] == list(store.entries(det.run))
    for v in verdicts:
        stored = store.load_scores(det.run, v.entry)["authentic"][3]
        assert v.score == pytest.approx(stored, rel=1e-4, abs=1e-6), v.entry
        assert v.trusted == (v.score >= v.threshold)


def test_report_md_has_the_detectors_table(tiny_run):
    md = (tiny_run / "report.md").read_text()
    assert "## Detectors (test split)" in md and "`knn_lr` against the best single kNN layer" in md


def test_a_killed_detectors_stage_resumes_at_the_first_unfinished_detector(tiny_run_copy):
    from precompute.__main__ import main
    from tests.conftest import ROOT, TINY

    run = RunDir(tiny_run_copy)
    m = run.manifest
    m["stages"]["detectors"]["status"] = "running"  # as a kill mid-stage leaves it
    del m["files"][store.meta_rel("msp")]  # msp's last file was not written
    run.save_manifest()
    kept = (tiny_run_copy / store.scores_rel("dknn", ALL)).stat().st_mtime_ns
    (tiny_run_copy / store.meta_rel("msp")).unlink()
    rc = main(["--config", str(ROOT / "precompute/configs/fmnist.toml"), "--no-progress",
               f"--set=runs_dir='{tiny_run_copy.parent}'", f"--set=data_root='{tiny_run_copy.parent}'",
               *[f"--set={s}" for s in TINY]])
    assert rc == 0
    run = RunDir(tiny_run_copy)
    assert run.manifest["stages"]["detectors"]["status"] == "done"
    assert (tiny_run_copy / store.scores_rel("dknn", ALL)).stat().st_mtime_ns == kept  # not refitted
    assert run.is_recorded(store.meta_rel("msp"), verify=True)
    assert "msp" in json.loads((tiny_run_copy / "report.json").read_text())["detectors"]
