"""Write the module table of docs/architecture.md from the modules' own docstrings, so it cannot go stale.

    python -m tools.architecture_doc            # rewrites the table between the markers
    python -m tools.architecture_doc --check    # exit 1 when the table is not what the code says

One row per module of ``core/``, ``precompute/``, ``app_ui/`` and ``app_pages/``, by path:
its path and the first sentence of its docstring (no line counts: the table changes only with the modules).
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

from tools import marked_block

__all__ = ["BEGIN", "END", "PACKAGES", "module_table", "first_sentence"]

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- modules:begin -->", "<!-- modules:end -->"
PACKAGES = ("core", "precompute", "app_ui", "app_pages")


def first_sentence(doc: str | None) -> str:
    """The docstring's first sentence (up to the first blank line or ". "), on one line, ``|`` escaped."""
    if not doc:
        return ""
    para = " ".join(doc.strip().split("\n\n")[0].split())
    m = re.search(r"(?<!e\.g)(?<!i\.e)\.\s", para + " ")
    return (para[: m.start() + 1] if m else para).replace("|", "\\|")


def module_table(root: Path = ROOT) -> str:
    """The Markdown table of every module under :data:`PACKAGES` (empty ``__init__`` files left out)."""
    rows = ["| module | what it is |", "|---|---|"]
    for pkg in PACKAGES:
        for p in sorted((root / pkg).rglob("*.py")):
            text = p.read_text()
            doc = ast.get_docstring(ast.parse(text))
            if p.name == "__init__.py" and not doc:
                continue
            rel = p.relative_to(root).as_posix()
            rows.append(f"| `{rel}` | {first_sentence(doc)} |")
    return "\n".join(rows) + "\n"


def replace_table(doc: str, table: str) -> str:
    return marked_block.replace(doc, BEGIN, END, table, name="docs/architecture.md")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 when the table is stale")
    ap.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    path = a.root / "docs" / "architecture.md"
    new = replace_table(path.read_text(), module_table(a.root))
    if a.check:
        if path.read_text() != new:
            print("docs/architecture.md is stale: python -m tools.architecture_doc", file=sys.stderr)
            return 1
        return 0
    path.write_text(new)
    print(f"wrote the module table of {path.relative_to(a.root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
