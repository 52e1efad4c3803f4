"""tools/results_doc.py: the README's results block and docs/results.md are generated from a run's report."""
from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT
from tools import results_doc


@pytest.fixture(scope="module")
def tiny_report(tiny_run) -> dict:
    return json.loads((tiny_run / "report.json").read_text())


def test_readme_block_has_the_shape_the_tiny_run_generates(tiny_report):
    """Regenerated from the tiny run's report, the block has the README's shape: same sections, same tables,
    same sentences with other numbers (so the README's block was written by the command, not by hand)."""
    readme = results_doc.readme_block_of((ROOT / "README.md").read_text())
    tiny = results_doc.readme_block(tiny_report)
    assert results_doc.block_shape(tiny) == results_doc.block_shape(readme)
    for label in results_doc.SECTIONS:
        assert label in tiny


def test_every_number_comes_from_the_report(tiny_report):
    """A changed figure in the report changes the block: the test-split TPR and one attack's detection rate."""
    before = results_doc.readme_block(tiny_report)
    rep = json.loads(json.dumps(tiny_report))
    rep["operating_point"]["tpr_test"] = [0.1234, 0.1, 0.2]
    a = rep["attack_sets"][0]
    rep["attacks"][a]["detection_rate"] = [0.4321, 0.4, 0.5]
    after = results_doc.readme_block(rep)
    assert "12.3 [10.0, 20.0]" in after and "43.2 [40.0, 50.0]" in after and after != before


def test_write_then_check_round_trip(tiny_run, tmp_path):
    """The command rewrites only the block and docs/results.md; ``--check`` then passes, and fails on a hand edit."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(f"# x\n\nbefore\n{results_doc.BEGIN}\nOLD-BLOCK\n{results_doc.END}\nafter\n")
    assert results_doc.main([str(tiny_run), "--check", "--root", str(tmp_path)]) == 1
    assert results_doc.main([str(tiny_run), "--root", str(tmp_path)]) == 0
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("# x\n\nbefore\n") and text.endswith(f"{results_doc.END}\nafter\n") and "OLD-BLOCK" not in text
    assert "do not edit by hand" in (tmp_path / "docs" / "results.md").read_text()
    assert results_doc.main([str(tiny_run), "--check", "--root", str(tmp_path)]) == 0
    (tmp_path / "README.md").write_text(text.replace("**Model.**", "**Model.** 99 %"))
    assert results_doc.main([str(tiny_run), "--check", "--root", str(tmp_path)]) == 1


def test_a_readme_without_one_block_is_refused():
    with pytest.raises(ValueError, match="exactly one"):
        results_doc.replace_block("no markers", "x")


def test_the_readme_is_read_in_five_minutes():
    """At most 150 lines: the rest lives in docs/ (results, architecture, reliability, performance, models),
    SECURITY.md and CHANGELOG.md."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150
