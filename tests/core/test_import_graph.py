"""The engine's import graph, type-only imports included: no cycle between vcrd_core modules, no vcrd_core import
hidden inside a function (the usual way to dodge a cycle, which says a helper lives in the wrong module), and
layers between packages: a module imports only from its own layer or the layers below it.

Layers, bottom first (a unit is a package or one module; a module belongs to its most specific unit):

0. foundations: ``errors``, ``decision_points``, ``regimes``, ``hookspecs``, ``runs.atomic``, ``runs.console``
1. ``plugins``: the plugin machinery (components, the kinds, the registry, the pluggy manager, param validation)
2. ``config``; 3. ``data``; 4. ``losses``; 5. ``judging``;
6. ``plan``, ``runs.models``, ``runs.provenance``; 7. ``runs.preflight`` (and the rest of ``runs``);
8. ``rollouts``; 9. ``evaluation``; 10. ``training``; 11. ``prm``; 12. ``grid``; 13. ``commands``, ``cli``,
``__main__``; 14. the package itself (``vcrd_core``: the public names, re-exported lazily).

Edges *into* a package's ``__init__`` (``from vcrd_core import __version__``, or importing a submodule, which
imports its package first) are the import system's, not a design dependency: they are left out.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import vcrd_core

CORE = Path(vcrd_core.__file__).parent

LAYERS: list[list[str]] = [
    ["errors", "decision_points", "regimes", "hookspecs", "runs.atomic", "runs.console"],
    ["plugins"],
    ["config"],
    ["data"],
    ["losses"],
    ["judging"],
    ["plan", "runs.models", "runs.provenance"],
    ["runs"],
    ["rollouts"],
    ["evaluation"],
    ["training"],
    ["prm"],
    ["grid"],
    ["commands", "cli", "__main__"],
    [""],  # vcrd_core itself
]


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(node: ast.AST, package: str) -> list[str]:
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        if node.module == package or node.module.startswith(package + "."):
            # `from vcrd_core.x import y` may import the submodule vcrd_core.x.y
            return [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name == package or a.name.startswith(package + ".")]
    return []


def import_graph(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """The import graph of the package at ``root`` (every import statement at module level, ``if TYPE_CHECKING``
    blocks included: a type-only cycle still couples the modules), without edges into package ``__init__``s, and
    the imports hidden inside functions or classes."""
    package = root.name
    modules = {_module_name(p, root): p for p in root.rglob("*.py")}
    packages = {m for m, p in modules.items() if p.name == "__init__.py"}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    hidden: list[str] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for stmt in tree.body:
            for node in ast.walk(stmt):
                targets = {t for t in _imports(node, package) if t in modules}
                if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and targets:
                    hidden.append(f"{name}: {', '.join(sorted(targets))}")
                    continue
                graph[name] |= targets - {name} - packages
    return graph, hidden


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
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


def layer_of(module: str) -> tuple[int, str]:
    """``(layer index, unit)`` of a ``vcrd_core.*`` module: its most specific unit in :data:`LAYERS`."""
    rel = module.removeprefix("vcrd_core").removeprefix(".")
    best: tuple[int, str] | None = None
    for i, units in enumerate(LAYERS):
        for unit in units:
            if (rel == unit or rel.startswith(unit + ".") or unit == "") and (best is None or len(unit) > len(best[1])):
                best = (i, unit)
    assert best is not None, module
    return best


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for source, targets in sorted(graph.items()):
        here, unit = layer_of(source)
        for target in sorted(targets):
            there, other = layer_of(target)
            if there > here:
                out.append(f"{source} (layer {here}, {unit or 'vcrd_core'}) imports {target} (layer {there}, {other})")
    return out


def test_no_import_cycle_between_core_modules_type_only_imports_included() -> None:
    graph, _ = import_graph(CORE)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_no_package_imports_one_above_it() -> None:
    graph, _ = import_graph(CORE)
    assert layer_violations(graph) == []


def test_no_core_import_is_hidden_inside_a_function() -> None:
    _, hidden = import_graph(CORE)
    assert hidden == []


def test_every_core_module_has_a_layer() -> None:
    graph, _ = import_graph(CORE)
    top = [m for m in graph if m != "vcrd_core" and layer_of(m)[1] == ""]
    assert top == [], "modules only the catch-all layer covers: add them to LAYERS"


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def _write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_a_type_only_cycle_in_a_temporary_package_is_found(tmp_path: Path) -> None:
    """The shape ``losses/chunked.py`` <-> ``losses/divergence.py`` had: one side imports only for annotations."""
    pkg = _write_package(
        tmp_path / "toypkg",
        {
            "__init__.py": "",
            "engine.py": """
                from __future__ import annotations
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    from toypkg.base import Base
                def run(x: Base) -> None: ...
            """,
            "base.py": """
                from toypkg.engine import run
                class Base:
                    def __call__(self) -> None:
                        run(self)
            """,
        },
    )
    graph, hidden = import_graph(pkg)
    assert hidden == []
    assert find_cycle(graph) == ["toypkg.base", "toypkg.engine", "toypkg.base"]
    # and without the type-only import there is none
    (pkg / "engine.py").write_text("def run(x: object) -> None: ...\n")
    assert find_cycle(import_graph(pkg)[0]) is None


def test_a_hidden_import_in_a_temporary_package_is_found(tmp_path: Path) -> None:
    pkg = _write_package(
        tmp_path / "toypkg", {"__init__.py": "", "a.py": "def f():\n    from toypkg.b import g\n", "b.py": "g = 1\n"}
    )
    assert import_graph(pkg)[1] == ["toypkg.a: toypkg.b"]


def test_an_upward_import_is_a_layer_violation() -> None:
    graph = {"vcrd_core.losses.objective": {"vcrd_core.training.step"}, "vcrd_core.training.step": set()}
    assert layer_violations(graph) == [
        "vcrd_core.losses.objective (layer 4, losses) imports vcrd_core.training.step (layer 10, training)"
    ]
