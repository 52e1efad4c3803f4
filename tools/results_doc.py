"""Write a run's results into README.md's results block and docs/results.md, from its report.json.

    python -m tools.results_doc data/runs/fmnist            # rewrites both
    python -m tools.results_doc data/runs/fmnist --check    # exit 1 when either is not what the run says

The README's block lies between ``<!-- results:begin -->`` and ``<!-- results:end -->``; every number in it comes
from the report (:func:`readme_block`), so a figure in the README cannot drift from the run it names.
docs/results.md is the run's whole ``report.md`` (:func:`precompute.render.render_markdown`) under a header that
names this command.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from core.knn.scoring import SCORE_FNS
from core.runs.folder import RunDir
from precompute.render import VARIANTS, ci, pct, render_markdown
from tools import marked_block

__all__ = ["BEGIN", "END", "SECTIONS", "readme_block", "replace_block", "results_page", "block_shape"]

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
#: The block's sections in order, each opened by its bold label; a section whose data the report lacks is left out.
SECTIONS = ("**Model.**", "**Operating point**", "**Peer detectors**", "**Adaptive attacks**")
#: The adaptive curve as docs/results.md shows it (scripts/screenshots.py copies it from the default run).
CURVE = "docs/screenshots/adaptive_curve.png"
#: The only plot path a report may name (a run folder is untrusted: never a path taken from it).
RUN_CURVE = "adaptive/curve.png"


def _model(rep: dict) -> list[str]:
    m, sp = rep["model"], rep["split"]
    return [f"{SECTIONS[0]} `{m['model']}` trained on {m['n_train']} images: test accuracy "
            f"**{100 * m['test_accuracy']:.2f} %**. Evaluation sets split by source image into {sp['validation']} "
            f"validation and {sp['test']} test sources (seed {sp['seed']}); everything chosen is chosen on "
            "validation, every figure is a test figure as `value [95 % interval]` of a paired bootstrap over "
            "source images."]


def _operating_point(rep: dict) -> list[str]:
    op = rep["operating_point"]
    label = rep.get("processing_labels", {}).get(op["layer"], {}).get(op["processing"], op["processing"])
    L = [f"{SECTIONS[1]} (chosen on validation): `{op['layer']}`, {label}, {SCORE_FNS[op['fn']]}, k = {op['k']}, "
         f"threshold {op['threshold']:.4f} (trusted when {op['trust']}). On test it trusts **{ci(op['tpr_test'])} %** of "
         "the positives and rejects:", "",
         "| attack | prediction changed | detection rate | guarded success | EER accuracy (paper's metric) |",
         "|---|---|---|---|---|"]
    for a in rep["attack_sets"]:
        v = rep["attacks"].get(a)
        if v:
            L.append(f"| {a} | {pct(v['success_changed'])} % | {ci(v['detection_rate'])} | "
                     f"{ci(v['guarded_success'])} | {ci(v['eer_accuracy'])} |")
    L.append(f"| all attacks | | **{ci(rep['aggr']['detection_rate'])}** | | Aggr. {ci(rep['aggr']['eer_accuracy'])} |")
    return L


def _peers(rep: dict) -> list[str]:
    means, labels = rep.get("detector_means") or {}, rep.get("detector_labels", {})
    if not means:
        return []
    layer = rep["operating_point"]["layer"]  # one kNN layer shown: the one chosen on validation, not the best on test
    shown = [e for e in means if not e.startswith("knn-") or e == f"knn-{layer}"]
    order = sorted(shown, key=lambda e: -(means[e]["detection_rate"][0] or 0.0))
    L = [f"{SECTIONS[2]} at a threshold keeping 95 % of validation positives, mean over the attacks:", "",
         "| detector | detection rate | AUC |", "|---|---|---|"]
    for e in order:
        label = labels.get(e, {}).get("label", e)
        if e.startswith("knn-"):
            label = f"{label}, `{e[4:]}` (the operating point's layer) at the config's default setting"
        L.append(f"| {label} | {ci(means[e]['detection_rate'])} | {ci(means[e]['auc'])} |")
    return L


def _adaptive(rep: dict) -> list[str]:
    ad = rep.get("adaptive") or {}
    curves = ad.get("curves", {})
    budgets = curves.get("oblivious", {}).get("linf", {}).get("budgets") or []
    if not budgets:
        return []
    L = [f"{SECTIONS[3]} on {ad['n']} test images (PGD with a random wrong target, the report's protocol): "
         "guarded success — fooled *and* trusted — at each L∞ budget. A lower bound on what an attacker who "
         "knows the detector achieves (a stronger attack can only raise it), so the robustness it suggests is an "
         "upper bound.", "",
         "| L∞ budget | " + " | ".join(VARIANTS[v] for v in VARIANTS) + " |", "|---|" + "---|" * len(VARIANTS)]
    for i, b in enumerate(budgets):
        L.append(f"| {b:g} | " + " | ".join(ci(curves[v]["linf"]["guarded_success"][i]) for v in VARIANTS) + " |")
    return L


def readme_block(rep: dict) -> str:
    """The README's results block (without its markers) from a report dict, every number taken from it."""
    parts = [p for p in (_model(rep), _operating_point(rep), _peers(rep), _adaptive(rep)) if p]
    cmd = f"python -m tools.results_doc data/runs/{rep['run']}"
    text = "\n\n".join("\n".join(p) for p in parts)
    return f"{text}\n\nWritten by `{cmd}` from the run's report.json; every table of the run: docs/results.md.\n"


def replace_block(readme: str, block: str) -> str:
    """``readme`` with the text between :data:`BEGIN` and :data:`END` replaced by ``block``."""
    return marked_block.replace(readme, BEGIN, END, block, name="README.md")


def readme_block_of(readme: str) -> str:
    """The text between the README's markers."""
    return marked_block.between(readme, BEGIN, END, name="README.md")


def block_shape(block: str) -> list[str]:
    """The block with its numbers masked and each table's body rows folded into one ``ROWS`` line: two runs of
    one config family give the same shape whatever their figures and attack lists."""
    out: list[str] = []
    for line in block.splitlines():
        if line.startswith("| ") and not line.startswith(("| attack |", "| detector |", "| L∞ budget |")):
            if out[-1:] != ["ROWS"]:
                out.append("ROWS")
            continue
        out.append(re.sub(r"`[^`]*`", "`x`", re.sub(r"[-+]?\d+(\.\d+)?", "#", line)))
    return out


def results_page(rep: dict) -> str:
    """docs/results.md: the run's report.md under a header naming the command, its plot path made docs-relative."""
    body = render_markdown(rep).replace(f"]({RUN_CURVE})", f"]({Path(CURVE).relative_to('docs').as_posix()})")
    return (f"<!-- Written by `python -m tools.results_doc data/runs/{rep['run']}`: do not edit by hand. -->\n\n"
            + body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a finished run folder, e.g. data/runs/fmnist")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 when README.md or "
                    "docs/results.md is not what the run says")
    ap.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    rep = RunDir(a.run).load_json("report.json")
    readme_path, page_path = a.root / "README.md", a.root / "docs" / "results.md"
    readme = replace_block(readme_path.read_text(), readme_block(rep))
    page = results_page(rep)
    if a.check:
        stale = [str(p.relative_to(a.root)) for p, text in ((readme_path, readme), (page_path, page))
                 if not p.is_file() or p.read_text() != text]
        if stale:
            print(f"out of date with {a.run}/report.json: {', '.join(stale)} "
                  f"(python -m tools.results_doc {a.run})", file=sys.stderr)
        return 1 if stale else 0
    readme_path.write_text(readme)
    page_path.write_text(page)
    print(f"wrote {readme_path.relative_to(a.root)} (results block) and {page_path.relative_to(a.root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
