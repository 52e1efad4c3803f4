"""The shape of the house: no import cycle, and imports only go down the declared layers.

The graph is built from the AST of every module of the repository (imports at module level *and* inside
functions), so a cycle hidden behind a lazy import counts too. docs/architecture.md draws the layers.
"""
from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from tests.conftest import ROOT

#: Top-level packages, lowest first: a module may import its own package and those before it.
#: Entry points and tooling (benchmarks, tools, scripts, tests) sit above them all and nothing imports them.
TOP = ["core", "precompute", "app_ui", "app_pages", "app", "tools", "benchmarks", "tests"]
#: Packages inside core/, lowest first.
CORE = ["core._util", "core.errors", "core.runs", "core.uploads", "core.data", "core.models", "core.knn",
        "core.evaluation", "core.attacks", "core.config", "core.results", "core.detector", "core.peers", "core"]
#: Modules and packages inside app_ui/, lowest first.
APP_UI = ["app_ui.text", "app_ui.attack_limits", "app_ui.navigation", "app_ui.selection", "app_ui.cache",
          "app_ui.operating_point", "app_ui.current_image", "app_ui.url_state", "app_ui.charts", "app_ui.sidebar",
          "app_ui.widgets", "app_ui.launch", "app_ui"]
#: precompute/, lowest first.
PRECOMPUTE = ["precompute.distributed", "precompute.runlock", "precompute.context", "precompute.render",
              "precompute.stages", "precompute.runner", "precompute.__main__", "precompute"]
LAYERS = {"core": CORE, "app_ui": APP_UI, "precompute": PRECOMPUTE}


def module_files(root: Path) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module of the repository's packages and of ``app.py``."""
    out = {}
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if rel.parts[0] not in TOP and rel.as_posix() != "app.py":
            continue
        name = ".".join(rel.with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def import_graph(files: Mapping[str, Path]) -> dict[str, set[str]]:
    """``{module: modules it imports}`` among ``files``, from every import statement anywhere in a module."""
    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            targets |= {t for t in map(resolve, names) if t and t != mod}
        graph[mod] = targets
    return graph


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def rank(module: str, order: list[str]) -> int | None:
    """Index in ``order`` of the longest entry that is ``module`` or a package holding it (a top-level package's
    own entry, e.g. ``"core"``, stands for its ``__init__`` only: a module missing from the layers is reported)."""
    best = None
    for i, entry in enumerate(order):
        holds = module.startswith(entry + ".") and (order is TOP or "." in entry)
        if (module == entry or holds) and (best is None or len(entry) > len(order[best])):
            best = i
    return best


def upward_imports(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Every import against the declared order, as ``"a -> b (why)"``."""
    bad = []
    for a, targets in sorted(graph.items()):
        for b in sorted(targets):
            ta, tb = rank(a, TOP), rank(b, TOP)
            if ta is None or tb is None:
                continue
            if tb > ta:
                bad.append(f"{a} -> {b} ({TOP[ta]} is below {TOP[tb]})")
            elif ta == tb and TOP[ta] in LAYERS:
                order = LAYERS[TOP[ta]]
                la, lb = rank(a, order), rank(b, order)
                if la is None or lb is None:
                    bad.append(f"{a} -> {b} (not in the declared layers of {TOP[ta]}: add it to tests/test_layers.py)")
                elif lb > la:
                    bad.append(f"{a} -> {b} ({order[la]} is below {order[lb]})")
            elif ta == tb and TOP[ta] == "app_pages" and a != "app_pages" and b != "app_pages":
                bad.append(f"{a} -> {b} (a page never imports another page: move the shared code into app_ui/)")
    return bad


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(module_files(ROOT))


def test_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_only_go_down(graph):
    bad = upward_imports(graph)
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_the_checks_catch_a_planted_cycle_and_upward_import(tmp_path):
    """The two checks fail on a tree with a cycle and an upward import (what the closing note of issue 27 shows)."""
    (tmp_path / "core" / "knn").mkdir(parents=True)
    (tmp_path / "core" / "runs").mkdir()
    for f in ("core/__init__.py", "core/knn/__init__.py", "core/runs/__init__.py"):
        (tmp_path / f).write_text("")
    (tmp_path / "core/knn/a.py").write_text("from core.knn import b\n")
    (tmp_path / "core/knn/b.py").write_text("def f():\n    from core.knn.a import x\n")  # hidden in a function
    (tmp_path / "core/runs/folder.py").write_text("import core.knn.a\n")  # runs sits below knn
    g = import_graph(module_files(tmp_path))
    assert find_cycle(g) == ["core.knn.a", "core.knn.b", "core.knn.a"]
    assert upward_imports(g) == ["core.runs.folder -> core.knn.a (core.runs is below core.knn)"]


MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def test_no_module_over_400_lines():
    long = {p.relative_to(ROOT).as_posix(): n for p in module_files(ROOT).values()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by concept): {long}"


def test_no_function_over_80_lines_in_the_library_and_the_app():
    long = {}
    for name, p in module_files(ROOT).items():
        if name.split(".")[0] not in ("core", "app_ui", "app_pages", "app"):
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{p.relative_to(ROOT).as_posix()}:{node.lineno} {node.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_architecture_module_table_is_current():
    """docs/architecture.md's module table is what ``python -m tools.architecture_doc`` writes from the docstrings."""
    from tools import architecture_doc

    assert architecture_doc.main(["--check"]) == 0, "python -m tools.architecture_doc"
    assert architecture_doc.first_sentence("One job. More text.\n\nAnother paragraph.") == "One job."
