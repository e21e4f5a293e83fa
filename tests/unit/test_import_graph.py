"""The llmctl package has no import circle.

Every llmctl/**/*.py is parsed with ast; every import statement counts, at module level
and inside functions alike (a function-level import still ties the two modules together,
it only hides the circle until that function runs). Relative imports are resolved;
`from pkg import name` points at `pkg.name` when that is a module, else at `pkg`.
Imports under `if TYPE_CHECKING:` never run, so they are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "llmctl"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE


def module_names(root: Path = ROOT) -> dict[str, Path]:
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Import nodes anywhere in the tree except under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the llmctl modules it imports."""
    modules = module_names(root)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                targets = []
                for alias in node.names:
                    sub = f"{prefix}.{alias.name}"
                    targets.append(sub if sub in modules else prefix)
            for target in targets:
                # `import llmctl.a.b` names a module; walk up to the nearest one we have.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.split(".")[0] == PACKAGE:
                    graph[name].add(target)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One concrete circle (a -> b -> ... -> a) per strongly connected component."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[set[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:  # Tarjan; the package is small enough to recurse
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
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
            strongconnect(v)

    cycles = []
    for component in components:
        start = min(component)
        # breadth-first inside the component for the shortest way back to start
        parents = {start: None}
        queue = [start]
        found = None
        while queue and found is None:
            v = queue.pop(0)
            for w in sorted(graph[v] & component):
                if w == start:
                    found = v
                    break
                if w not in parents:
                    parents[w] = v
                    queue.append(w)
        path = []
        v = found
        while v is not None:
            path.append(v)
            v = parents[v]
        cycles.append(list(reversed(path)) + [start])
    return sorted(cycles)


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import a\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from ..b import g\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from llmctl import c\n"
        "import llmctl.sub.a as a\n")
    (pkg / "c.py").write_text("from llmctl.b import thing\n")
    graph = import_graph(pkg)
    assert graph["llmctl.sub"] == {"llmctl.sub.a"}
    assert graph["llmctl.sub.a"] == {"llmctl.b"}
    assert graph["llmctl.b"] == {"llmctl.sub.a"}  # the TYPE_CHECKING import is left out
    assert graph["llmctl.c"] == {"llmctl.b"}
    assert find_cycles(graph) == [["llmctl.b", "llmctl.sub.a", "llmctl.b"]]


def test_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50, "the walk found too few modules"
    cycles = find_cycles(graph)
    assert not cycles, "import circles:\n" + "\n".join("  " + " -> ".join(c) for c in cycles)
