"""The import graph of ``src/manyminds`` has no cycle, also between files of one folder, and no
arrow back up between top-level folders.

Every ``import`` counts, at module level and inside functions: an import moved into a function
still runs, it only hides the cycle from the first import. The graph is read with ``ast`` from
the source files (nothing is imported), so the test is fast and sees every branch.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "manyminds"


def _modules(src: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    out = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def _owner(name: str, modules: dict) -> str | None:
    """The module that defines ``name`` (the longest dotted prefix that is a module)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(src: Path = SRC) -> dict[str, dict[str, int]]:
    """``{module: {imported module of the package: first line}}`` over every import statement."""
    modules = _modules(src)
    graph: dict[str, dict[str, int]] = {}
    for name, (path, is_package) in modules.items():
        edges = graph.setdefault(name, {})
        package = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from .x import y / from .. import z
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                # `from pkg import sub` imports the submodule; `from mod import name` imports mod
                subs = [f"{stem}.{alias.name}" for alias in node.names if f"{stem}.{alias.name}" in modules]
                targets = subs or [stem]
            else:
                continue
            for target in targets:
                owner = _owner(target, modules) if target.split(".")[0] == PACKAGE else None
                if owner and owner != name:
                    edges.setdefault(owner, node.lineno)
    return graph


def cycles(graph: dict[str, dict]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _folder(module: str) -> str:
    """The top-level folder (or top-level module) of ``module``: ``manyminds.cli.eval`` -> ``cli``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _describe(component: list[str], graph: dict[str, dict[str, int]]) -> str:
    return "; ".join(f"{a} -> {b} (line {line})" for a in component for b, line in sorted(graph[a].items())
                     if b in component)


def test_no_import_cycle_between_modules():
    graph = import_graph()
    assert len(graph) > 50  # the walk found the package
    found = cycles(graph)
    assert not found, "import cycles: " + " | ".join(_describe(c, graph) for c in found)


def test_no_arrow_back_up_between_top_level_folders():
    graph = import_graph()
    folders: dict[str, dict[str, int]] = {}
    for a, edges in graph.items():
        for b in edges:
            if _folder(a) != _folder(b):
                folders.setdefault(_folder(a), {})[_folder(b)] = 0
    found = cycles(folders)
    assert not found, f"folders that import each other: {found}"
    up = [(a, b) for a, edges in graph.items() for b in edges
          if (a.startswith(b + ".") or b == PACKAGE) and not a.endswith(".__main__")]
    assert not up, f"modules that import a package above them: {up}"


@pytest.mark.parametrize("source, found", [
    ({"a.py": "from manyminds import b\n", "b.py": "def f():\n    from manyminds.a import x\n"},
     [["manyminds.a", "manyminds.b"]]),
    ({"p/__init__.py": "from .x import X\n", "p/x.py": "def f():\n    from .y import Y\n",
      "p/y.py": "from manyminds.p.x import X\n"}, [["manyminds.p.x", "manyminds.p.y"]]),
    ({"a.py": "import manyminds.b\n", "b.py": "import os\n"}, []),
])
def test_the_graph_sees_imports_inside_functions_and_relative_imports(tmp_path, source, found):
    for name, text in {"__init__.py": "", **source}.items():
        path = tmp_path / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert cycles(import_graph(tmp_path)) == found
