"""The shape of the package: layers import downwards only, and no module imports in a circle.

Function-level (lazy) imports count: a cycle hidden inside a function is still a cycle a
newcomer has to untangle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cld_lake"
# Modules every layer may use: the leaves of the graph.
LEAVES = (
    {
        "cld_lake.errors",
        "cld_lake._duckdb",
        "cld_lake._io",
        "cld_lake._meta",
        "cld_lake._storage",
        "cld_lake._version",
        "cld_lake._types",
    }
    | {f"cld_lake.storage.{p.stem}" for p in (PACKAGE / "storage").glob("_[!_]*.py")}
    | {"cld_lake.storage"}
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The cld_lake module an import statement names (a package's __init__ for a package)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name if is_package else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" for alias in node.names] + [module]
        for target in targets:
            if target.startswith("cld_lake"):
                resolved = _resolve(target, modules)
                if resolved and resolved != name:
                    found.add(resolved)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # importing a.b.c runs a/__init__ and a/b/__init__ first: those edges are implied, not
    # cycles of the code's own making, so a package's own __init__ is left out of its children
    for name, deps in graph.items():
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []
    sys.setrecursionlimit(10_000)

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_in_the_package():
    cycle = _find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _find_cycle(graph) is not None
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_lake_stands_on_its_own():
    """lake/ uses only itself and the leaf modules: nothing above it (score, sql, select...)."""
    outside = {
        (name, dep)
        for name, deps in _graph().items()
        if name.startswith("cld_lake.lake")
        for dep in deps
        if not dep.startswith("cld_lake.lake") and dep not in LEAVES
    }
    assert not outside, f"lake/ imports from layers above it: {sorted(outside)}"


def test_leaves_import_no_other_cld_lake_module():
    graph = _graph()
    for leaf in LEAVES:
        assert graph[leaf] <= LEAVES, f"{leaf} imports {graph[leaf] - LEAVES}"


def test_private_duckdb_module_has_one_owner():
    users = [
        name
        for name, path in _modules().items()
        if "duckdb._sources" in path.read_text() and name != "cld_lake._duckdb"
    ]
    assert users == [], f"only cld_lake._duckdb may touch duckdb._sources; also in {users}"


def test_every_importer_lives_in_lake():
    """Bringing data into the lake is the lake's job: no import_* function outside lake/ (the
    CLI's ``import_cmd`` only parses arguments and calls ``lake.import_file``)."""
    offenders = []
    for name, path in _modules().items():
        if name.startswith(("cld_lake.lake", "cld_lake._cli")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("import_"):
                offenders.append(f"{name}.{node.name}")
    assert offenders == []
