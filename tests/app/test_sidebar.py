"""The sidebar on a missing, unfinished or damaged run: it says so and gives the command that fixes it."""
from __future__ import annotations

import json

from app_ui.text import md  # run text reaches the page escaped
from tests.app.apptest import _app, _ok


# ------------------------------------------------------------------------------------------ missing runs
def test_no_run_shows_the_command_that_builds_one(tmp_path, monkeypatch):
    (tmp_path / "fmnist").mkdir()  # an empty folder: no manifest
    at = _ok(_app(tmp_path, monkeypatch))
    assert any("No run found" in e.value for e in at.error)
    assert [c.value for c in at.code] == ["python -m precompute --config precompute/configs/fmnist.toml"]
    assert not at.get("vega_lite_chart")


def test_unfinished_run_shows_the_command_that_finishes_it(tmp_path, monkeypatch):
    run = tmp_path / "fmnist"
    run.mkdir()
    stages = {s: {"status": "done"} for s in ("data", "train", "features")}
    (run / "manifest.json").write_text(json.dumps({"config": {"name": "fmnist"}, "stages": stages, "files": {}}))
    at = _ok(_app(tmp_path, monkeypatch))
    err = " ".join(e.value for e in at.error)
    assert "not finished" in err and "neighbours" in err and "report" in err
    assert any("python -m precompute --config precompute/configs/fmnist.toml" in c.value for c in at.code)


def test_damaged_run_says_which_file_and_how_to_rebuild(tiny_run_copy, monkeypatch):
    with open(tiny_run_copy / "model.pt", "ab") as f:
        f.write(b"\0")  # size no longer matches the manifest
    at = _ok(_app(tiny_run_copy.parent, monkeypatch))
    err = " ".join(e.value for e in at.error)
    assert "cannot be loaded" in err and md("model.pt") in err
    assert any(c.value.startswith("python -m precompute --config") for c in at.code)
