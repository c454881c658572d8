"""The engine's import graph: no cycle between vcrd_core modules, and no vcrd_core import hidden inside a
function (the usual way to dodge a cycle, which says a helper lives in the wrong module)."""

from __future__ import annotations

import ast
from pathlib import Path

import vcrd_core

CORE = Path(vcrd_core.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _core_imports(node: ast.AST) -> list[str]:
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        if node.module.startswith("vcrd_core"):
            # `from vcrd_core.x import y` may import the submodule vcrd_core.x.y
            return [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.startswith("vcrd_core")]
    return []


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    modules = {_module_name(p): p for p in CORE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    hidden: list[str] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for stmt in tree.body:
            if isinstance(stmt, ast.If) and _is_type_checking(stmt):
                continue  # annotations only: not imported at run time
            for node in ast.walk(stmt):
                targets = {t for t in _core_imports(node) if t in modules}
                if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and targets:
                    hidden.append(f"{name}: {', '.join(sorted(targets))}")
                    continue
                graph[name] |= targets - {name}
    # importing vcrd_core.a.b first imports the packages vcrd_core and vcrd_core.a
    return graph, hidden


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_core_modules() -> None:
    graph, _ = _graph()
    # The package's __init__ re-exports the public API, so every module reaches it; edges *into* a
    # package __init__ are the import system's, not a design dependency: leave them out.
    packages = {m for m in graph if (CORE.parent / m.replace(".", "/") / "__init__.py").exists()}
    pruned = {m: {t for t in deps if t not in packages} for m, deps in graph.items()}
    assert _cycle(pruned) is None, " -> ".join(_cycle(pruned) or [])


def test_no_core_import_is_hidden_inside_a_function() -> None:
    _, hidden = _graph()
    assert hidden == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
