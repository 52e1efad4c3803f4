"""The Run page (AppTest)."""
from __future__ import annotations

import json

from tests.app.apptest import PAGES, _frame, _markdown, _md_table, _ok


# --------------------------------------------------------------------------------------------------- Run
def test_run_page_summarises_the_manifest(app, truth, tiny_run):
    _ok(app.switch_page(PAGES["run"]).run())
    model = json.loads((tiny_run / "model.json").read_text())
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Test accuracy"] == f"{model['test_accuracy']:.2%}"
    sets = _md_table(app, "set")  # the table of evaluation sets
    assert sets[0]["set"] == "authentic"
    want = {k: str(v["n"]) for k, v in truth["manifest"]["summary"]["sets"].items()}
    assert {r["set"]: r["images"] for r in sets} == want
    assert any("`python -m precompute --config precompute/configs/fmnist.toml`" in m for m in _markdown(app))
    assert not app.code  # no code block (the highlighter it loads cost the browser 0.5-0.8 s): the config on request
    app.session_state["run_config"] = True
    _ok(app.run())
    assert json.loads(app.code[0].value) == truth["manifest"]["config"]


def test_run_page_shows_the_split_operating_point_and_findings_per_layer(app, honest, monkeypatch):
    from app_ui import cache as loaders

    monkeypatch.setattr(loaders, "report", lambda run: honest)
    _ok(app.switch_page(PAGES["run"]).run())
    split = honest["split"]
    text = " ".join(_markdown(app))
    assert f"{split['validation']} validation, {split['test']} test" in text
    assert f"{honest['operating_point']['threshold']:.4f}" in text
    f = _frame(app, "run_findings")
    assert len(f) == len(honest["findings"])
    assert [r["verdict"] for r in f] == [e["verdict"] for e in honest["findings"]]
    assert {r["verdict"] for r in f} <= {"holds", "reversed", "not shown"}
    if honest["reversals"]:
        assert len(_frame(app, "run_reversals")) == len(honest["reversals"])
    attacks = _frame(app, "run_attacks")
    assert [r["attack"] for r in attacks] == list(honest["attacks"])
    for r in attacks:  # rates as percent with one decimal, a missing one as a dash
        v = honest["attacks"][r["attack"]].get("success_changed")
        assert r["success (prediction changed)"] == ("–" if v is None else f"{100 * v:.1f} %")
