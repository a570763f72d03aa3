"""The package's import graph has no cycles.

A cycle between modules is what forces "import it inside the function" workarounds, makes
import order matter, and hides which module owns a rule. This test reads every module of
`pgtasks` with `ast` (nothing is imported), builds the graph of the imports it makes at
module level and inside functions, and fails listing each cycle it finds. Imports under
`if TYPE_CHECKING:` are left out: they never run.

Importing `pgtasks.a.b` also runs the package `pgtasks.a`'s `__init__`; those implicit edges
are left out too (every package would be a cycle with its own modules), but an explicit
`from pgtasks import x` counts: an edge to the submodule `pgtasks.x` when there is one,
else to the package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pgtasks

PACKAGE = Path(pgtasks.__file__).resolve().parent


def module_files(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package under `root`, by dotted name."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run: every one except those under `if TYPE_CHECKING:` (the
    `else:` branch of such an `if` runs, so it is kept)."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        for stmt in _imports(tree):
            if isinstance(stmt, ast.Import):
                targets = [alias.name for alias in stmt.names]
            else:
                if stmt.level:  # relative: from the package this module is in
                    base = name.split(".")
                    base = base[: len(base) - stmt.level + (1 if is_package else 0)]
                    stmt_module = ".".join([*base, *([stmt.module] if stmt.module else [])])
                else:
                    stmt_module = stmt.module or ""
                targets = []
                for alias in stmt.names:
                    sub = f"{stmt_module}.{alias.name}"
                    targets.append(sub if sub in files else stmt_module)
            for target in targets:
                # `import pgtasks.a.b` names the module itself; keep the longest known prefix.
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each shown as
    the shortest cycle through each of its modules, written from its alphabetically first
    module back to it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)

    out: set[tuple[str, ...]] = set()
    for component in components:
        for start in component:
            out.add(tuple(_shortest_cycle(graph, component, start)))
    return sorted(list(c) for c in out)


def _shortest_cycle(graph: dict[str, set[str]], component: set[str], start: str) -> list[str]:
    """The shortest way from `start` back to itself within its component (breadth first),
    rotated to begin at its alphabetically first module so that equal cycles compare equal."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    ring = paths[v]
                    first = ring.index(min(ring))
                    ring = ring[first:] + ring[:first]
                    return [*ring, ring[0]]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is in a component but on no cycle")


def test_the_package_has_no_import_cycles():
    found = cycles(import_graph(module_files()))
    assert not found, "import cycles in pgtasks:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_checker_sees_cycles_through_function_level_imports(tmp_path):
    """The checker itself: a cycle closed by an import inside a function is found, one
    under `if TYPE_CHECKING:` is not, and a relative import resolves."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from pkg import a\n")
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.d import x\n"
    )
    (pkg / "d.py").write_text("from . import c\n")
    graph = import_graph(module_files(pkg))
    assert graph["pkg.d"] == {"pkg.c"} and graph["pkg.c"] == set()
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]
