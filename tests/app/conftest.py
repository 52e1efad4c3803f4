"""Fixtures of the app's tests: an AppTest session on the tiny run, and the figures the pages must show."""
from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from tests.app.apptest import _app, _ok


@pytest.fixture()
def app(tiny_run, monkeypatch) -> AppTest:
    """The app on the tiny run, first page (Inspect) rendered."""
    return _ok(_app(tiny_run.parent, monkeypatch))


@pytest.fixture(scope="module")
def truth(tiny_run) -> dict:
    """What the pages should show, computed from the run folder without the app."""
    from core.evaluation.rundata import RunData
    from core.evaluation.setting_figures import operating_layer

    data = RunData(tiny_run, verify=False)
    m = json.loads((tiny_run / "manifest.json").read_text())
    rep = json.loads((tiny_run / "report.json").read_text())
    d = m["summary"]["defaults"]
    attacks = [a for a in data.attack_sets if m["summary"]["sets"][a]["n"]]
    return {"data": data, "manifest": m, "report": rep, "classes": json.loads((tiny_run / "classes.json").read_text()),
            "layers": m["summary"]["layers"], "mode": d["mode"], "fn": d["fn"], "k": min(d["k"], m["summary"]["k_max"]),
            "attacks": attacks, "best_layer": operating_layer(rep, m["summary"]["layers"])}


@pytest.fixture(scope="module")
def honest(truth) -> dict:
    """The run's report.json with issue 12's keys (core.evaluation.report.honest_report at the run's evaluation config)."""
    from core.evaluation.report import honest_report
    from core.evaluation.setting_figures import EvaluationConfig

    c = EvaluationConfig.from_config(truth["data"].config)
    rep = honest_report(truth["data"], protocol=c.protocol, validation_share=c.validation_share,
                        target_tpr=c.target_tpr, seed=c.seed, n_boot=c.n_boot)
    old = {k: v for k, v in truth["report"].items() if k not in ("headline", "best_mode", "findings")}
    return {**old, **rep, "attack_sets": truth["attacks"]}
