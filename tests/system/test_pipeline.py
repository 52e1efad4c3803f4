"""End to end: the real precompute CLI on a tiny config, then the Detector on its run."""

import numpy as np
import pytest

from core.detector import Detector, IncompleteRun
from core.errors import ArtefactError
from core.evaluation import metrics
from core.knn import scoring
from core.runs.folder import RunDir
from tests.conftest import ROOT, TINY


def _cli(tiny_run, *extra):
    from precompute.__main__ import main
    return main(["--config", str(ROOT / "precompute/configs/fmnist.toml"), "--no-progress",
                 f"--set=runs_dir='{tiny_run.parent}'", f"--set=data_root='{tiny_run.parent}'", *[f"--set={s}" for s in TINY], *extra])


def test_run_is_complete_and_hashes_match(tiny_run):
    run = RunDir(tiny_run)
    run.verify()  # every recorded file matches its sha256
    stages = run.manifest["stages"]
    from precompute.stages import STAGE_NAMES
    assert all(stages[s]["status"] == "done" for s in STAGE_NAMES)
    assert run.leftovers() == []
    assert not list(tiny_run.rglob("*.pkl"))
    sets = run.manifest["summary"]["sets"]
    assert sets["authentic"]["n"] == 120 and sets["fgsm"]["attempted"] == 120 and sets["ifgsm"]["attempted"] == 60


def test_report_numbers_are_computed_from_neighbours(tiny_run):
    """Recompute one cell of the report independently (labels, neighbours -> scores -> brute-force EER), on the
    test side of the split only."""
    from core.evaluation.splits import split_sources

    run = RunDir(tiny_run)
    rep = run.load_json("report.json")
    labels = run.load_npy("train_labels.npy")
    k = rep["k"]
    row = next(r for r in rep["rows"] if r["layer"] == "fc1" and r["mode"] == "pca" and r["fn"] == "dwknn")
    sets = {s: run.load_npz(f"evalsets/{s}.npz") for s in run.manifest["summary"]["sets"]}
    ev = run.manifest["config"]["evaluation"]
    split = split_sources({s: z["source"] for s, z in sets.items()}, ev["validation_share"], run.manifest["config"]["seed"])
    assert (len(split.validation), len(split.test)) == (rep["split"]["validation"], rep["split"]["test"])

    def set_scores(name):
        nb = run.load_npz(f"neighbours/{name}/fc1-pca.npz")
        keep = np.isin(sets[name]["source"], split.test)
        pred = sets[name]["predicted"][keep]
        w = 1 / np.maximum(nb["D"][keep, :k].astype(np.float64), 1e-12)
        return (w * (labels[nb["I"][keep, :k]] == pred[:, None])).sum(1) / w.sum(1)

    pos = np.r_[set_scores("authentic"), set_scores("noise")]
    for attack, cell in row["attacks"].items():
        neg = set_scores(attack)
        assert cell["n"] == len(neg)
        # brute force: the threshold where FPR and FNR cross
        ths = np.unique(np.r_[pos, neg])
        gaps = [abs((neg >= t).mean() - (pos < t).mean()) for t in ths]
        t = ths[int(np.argmin(gaps))]
        brute = 1 - ((neg >= t).mean() + (pos < t).mean()) / 2
        assert cell["eer_acc"] == pytest.approx(brute, abs=1.5 / min(len(pos), len(neg)) + 0.02)
        assert cell["auc"] == pytest.approx(metrics.roc(pos, neg).auc)
        lo, hi = row["ci"][attack]
        assert lo <= cell["eer_acc"] <= hi
    assert row["aggr"] == pytest.approx(metrics.aggregate([c["eer_acc"] for c in row["attacks"].values()],
                                                          [c["n"] for c in row["attacks"].values()]))
    md = (tiny_run / "report.md").read_text()
    assert "Table 2 style" in md and "k sweep" in md and "findings" in md
    assert f"{100 * rep['model']['test_accuracy']:.2f} %" in md


def test_rerun_skips_everything(tiny_run, capsys):
    assert _cli(tiny_run) == 0
    out = capsys.readouterr().out
    from precompute.stages import STAGE_NAMES
    assert out.count("skipped") == len(STAGE_NAMES)
    assert _cli(tiny_run, "--dry-run") == 0
    assert "nothing (complete)" in capsys.readouterr().out


def test_bad_config_fails_before_work(tiny_run, capsys):
    assert _cli(tiny_run, "--set=evalsets.typo=1") == 2
    assert "unknown config key" in capsys.readouterr().err


def test_detector_matches_stored_neighbours(tiny_run):
    det = Detector.load(tiny_run)
    run = RunDir(tiny_run)
    auth = run.load_npz("evalsets/authentic.npz")
    res = det.score(auth["images"][:16])
    np.testing.assert_array_equal(res.predicted, auth["predicted"][:16])
    nb = run.load_npz(f"neighbours/authentic/conv2-{det.defaults['mode']}.npz")
    stored = scoring.score(nb["I"][:16], nb["D"][:16], det.train_labels, auth["predicted"][:16],
                           k=det.defaults["k"], fn=det.defaults["fn"])
    np.testing.assert_allclose(res.scores["conv2"], stored, atol=1e-6)
    one = det.inspect(auth["images"][0], n_neighbours=5)
    assert one.predicted.shape == (1,) and len(one.top5) == 5 and set(one.scores) == {"conv2", "fc1"}
    assert (one.class_neighbours["fc1"].labels == one.predicted[0]).all()
    assert len(one.neighbours["conv2"].ids) == 5
    # the model is a plain nn.Module on [0, 1] floats
    import torch
    x = torch.from_numpy(auth["images"][:4].transpose(0, 3, 1, 2).astype(np.float32) / 255)
    assert det.model(x).argmax(1).tolist() == auth["predicted"][:4].tolist()
    with pytest.raises(ValueError, match="k must be"):
        det.score(auth["images"][:1], k=10 ** 9)


def test_detector_refuses_tampered_and_missing(tiny_run_copy, tmp_path):
    p = tiny_run_copy / "index" / "fc1-pca.faiss"
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(ArtefactError, match="fc1-pca.faiss"):
        Detector.load(tiny_run_copy)
    (tiny_run_copy / "model.pt").write_bytes(b"")
    with pytest.raises(ArtefactError, match="model.pt"):
        Detector.load(tiny_run_copy)
    with pytest.raises(IncompleteRun, match="precompute"):
        Detector.load(tmp_path / "nothing")
