"""The shape of the package, read from its source: what imports what, and who may ask what.

- **No cycle**: no module imports itself in a circle (function-level, lazy imports count: a
  cycle hidden inside a function is still a cycle a newcomer has to untangle).
- **Layers**: a unit (a subpackage such as ``cld_lake.lake``, or a top-level module such as
  ``cld_lake.export``) imports only units of the layers below its own (:data:`LAYERS`, from
  the bottom): the leaves ``errors``, ``_types``, ``_version`` < ``_meta``, ``storage`` <
  ``_io``, ``_duckdb``, ``_dask`` < ``lake`` < ``manifest`` < ``score``, ``sql``,
  ``export`` < ``select`` < ``diagnostics`` < ``report`` < ``_cli`` and the package's own
  ``__init__`` (the public API). ``torch`` (the recorder) stands beside the stages: it uses
  what ``score`` may use, and no unit imports it (``import cld_lake`` never imports torch);
  ``hf`` (Hugging Face) stands beside it and builds on it (:data:`BESIDE_USES`): it may import
  ``torch``, and nothing imports ``hf``.
- **Public faces**: a unit imports another's public face only (its ``__init__``, or a module
  without a leading underscore such as ``cld_lake.lake.scores``) and its names without a
  leading underscore; a unit's own private modules are its own business.
- **Storage behind its interface**: outside ``cld_lake/storage/`` no ``isinstance`` on a
  store or path type and no branching on a URL scheme.
- **DuckDB through its adapter**: ``import duckdb`` only in ``cld_lake/_duckdb.py`` (the
  adapter) and ``cld_lake/sql/`` (the SQL stage, whose engine DuckDB is: its parser
  tokenizes queries); ``duckdb.connect`` only in the adapter (settings and sandbox).
- **Dask through its adapter**: ``dask`` and ``distributed`` imported only in
  ``cld_lake/_dask.py``.
- **Small modules**: none over :data:`MAX_LINES` lines.
- **Benchmarks and pipelines** (the first examples users read) use public names only:
  :data:`PUBLIC_MODULES` and their names without a leading underscore, also in the code they
  run as text in a child process.

Every rule has a self-test that plants a violation in a small source tree and sees it found,
so a rule that cannot fail is caught.
"""

from __future__ import annotations

import ast
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "cld_lake"

# From the bottom up: a unit imports only units of lower layers.
LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(layer)
    for layer in (
        {"errors", "_types", "_version"},
        {"_meta", "storage"},
        {"_io", "_duckdb", "_dask"},
        {"lake"},
        {"manifest"},
        {"score", "sql", "export"},
        {"select"},
        {"diagnostics"},
        {"report"},
        {"_cli", "cld_lake"},  # "cld_lake": the package's __init__, the public API
    )
)
# Units beside the stages: they import what the named layer's units may; nothing imports them.
BESIDE = {"torch": "score", "hf": "score"}
# What a unit beside the stages may import of the others beside them (never the other way).
BESIDE_USES = {"hf": frozenset({"torch"})}
# The shared leaves: every unit may import them.
LEAVES = frozenset().union(*LAYERS[:3])
MAX_LINES = 800
# What benchmarks and pipelines may import of the package (and then only public names); of
# each other, they import public names only (their own private modules are theirs).
EXAMPLES = ("benchmarks", "pipelines")
PUBLIC_MODULES = frozenset(
    {
        "cld_lake",
        "cld_lake.torch",
        "cld_lake.hf",
        "cld_lake.lake",
        "cld_lake.score",
        "cld_lake.select",
        "cld_lake.sql",
        "cld_lake.storage",
        "cld_lake.diagnostics",
        "cld_lake.report",
        "cld_lake.manifest",
        "cld_lake.errors",
    }
)
STORAGE_TYPES = frozenset(
    {
        "Store",
        "StorePath",
        "LocalStore",
        "FsspecStore",
        "ObstoreStore",
        "ObjectPath",
        "Lock",
        "FileLock",
        "Lease",
        "Path",
        "PurePath",
        "PosixPath",
    }
)
URL_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs", "memory", "file", "az", "abfs", "http", "https"})
DUCKDB_IMPORTERS = ("cld_lake._duckdb", "cld_lake.sql")
DUCKDB_CONNECTS = ("cld_lake._duckdb",)
DASK_IMPORTERS = ("cld_lake._dask",)


# --- reading the source ---------------------------------------------------------------------
def _module_name(path: Path, package: Path) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {_module_name(p, package): p for p in sorted(package.rglob("*.py"))}


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The module an import names (a package's __init__ for a package)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def _absolute(name: str, path: Path, node: ast.ImportFrom) -> str:
    """The module a ``from ... import`` names, relative imports made absolute."""
    if not node.level:
        return node.module or ""
    base = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{node.module}" if node.module else base


def _imported(
    name: str, path: Path, modules: dict[str, Path], tree: ast.AST | None = None
) -> Iterator[tuple[ast.AST, str, str | None]]:
    """``(node, module, imported name)`` for each package module an import statement names:
    ``from a import b`` names module ``a.b`` when that is a module (name None), else module
    ``a`` and name ``b``; ``import a.b`` names ``a.b``."""
    for node in ast.walk(tree if tree is not None else ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                module = _resolve(alias.name, modules)
                if module is not None:
                    yield node, module, None
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(name, path, node)
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    yield node, f"{base}.{alias.name}", None
                    continue
                module = _resolve(base, modules)
                if module is not None:
                    yield node, module, alias.name


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    return {m for _, m, _ in _imported(name, path, modules) if m != name}


def _graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = _modules(package)
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # importing a.b.c runs a/__init__ and a/b/__init__ first: those edges are implied, not
    # cycles of the code's own making, so a package's own __init__ is left out of its children
    # (the top package's __init__ is the public API, which no module of it imports)
    top = package.name
    for name, deps in graph.items():
        graph[name] = {d for d in deps if d == top or not name.startswith(d + ".")}
    return graph


def _unit(module: str) -> str:
    """``cld_lake.lake._format`` -> ``lake``; ``cld_lake.export`` -> ``export``; the top
    package's __init__ is ``cld_lake``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _is_private_module(module: str) -> bool:
    """Is ``module`` private to its unit (an underscore name below the unit)?"""
    return any(p.startswith("_") for p in module.split(".")[2:])


def _is_private_name(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _in(module: str, owners: tuple[str, ...]) -> bool:
    return any(module == o or module.startswith(o + ".") for o in owners)


def _plant(root: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (relative path -> source) below ``root``; return ``root / "cld_lake"``."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "cld_lake"


# --- no cycle ------------------------------------------------------------------------------
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


def test_the_cycle_finder_finds_a_planted_cycle(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _find_cycle(graph) is not None
    assert _find_cycle({"a": {"b"}, "b": set()}) is None
    package = _plant(
        tmp_path,
        {
            "cld_lake/__init__.py": "",
            "cld_lake/lake/__init__.py": "",
            "cld_lake/lake/a.py": "def f():\n    from cld_lake.lake import b\n",
            "cld_lake/lake/b.py": "from cld_lake.lake.a import f\n",
        },
    )
    assert _find_cycle(_graph(package)) is not None


# --- layers --------------------------------------------------------------------------------
def _rank(unit: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if unit in layer:
            return i
    if unit in BESIDE:
        return _rank(BESIDE[unit])
    return None


def _layer_violations(package: Path = PACKAGE) -> list[str]:
    found = []
    for name, deps in sorted(_graph(package).items()):
        unit = _unit(name)
        rank = _rank(unit)
        if rank is None:
            found.append(f"{name}: unit {unit!r} is in no layer (add it to LAYERS)")
            continue
        for dep in sorted(deps):
            target = _unit(dep)
            if target == unit:
                continue
            if target in BESIDE_USES.get(unit, ()):
                continue
            if target in BESIDE:
                found.append(f"{name} imports {dep}: {target} stands beside the stages")
                continue
            target_rank = _rank(target)
            if target_rank is None or target_rank >= rank:
                found.append(f"{name} ({unit}) imports {dep} ({target}): not a lower layer")
    return found


def test_every_import_goes_to_a_lower_layer():
    assert _layer_violations() == []


def test_the_layer_check_finds_planted_upward_and_sideways_imports(tmp_path):
    files = {
        "cld_lake/__init__.py": "from cld_lake.lake import Lake\n",
        "cld_lake/errors.py": "",
        "cld_lake/lake/__init__.py": "from cld_lake.errors import CldLakeError\nLake = 1\n",
        "cld_lake/score/__init__.py": "from cld_lake.lake import Lake\n",
        "cld_lake/sql/__init__.py": "",
        "cld_lake/torch/__init__.py": "from cld_lake.lake import Lake\n",
        "cld_lake/hf/__init__.py": "from cld_lake.torch import LossRecorder\n",
    }
    assert _layer_violations(_plant(tmp_path / "clean", files)) == []
    planted = {
        "cld_lake/lake/up.py": "def f():\n    from cld_lake.score import x\n",
        "cld_lake/score/side.py": "import cld_lake.sql\n",
        "cld_lake/sql/rec.py": "from cld_lake.torch import LossRecorder\n",
        "cld_lake/sql/hub.py": "import cld_lake.hf\n",
        "cld_lake/torch/back.py": "from cld_lake.hf import select\n",
        "cld_lake/attic.py": "",
    }
    found = _layer_violations(_plant(tmp_path / "planted", {**files, **planted}))
    assert [v.split(" ", 1)[0].rstrip(":") for v in found] == [
        "cld_lake.attic",
        "cld_lake.lake.up",
        "cld_lake.score.side",
        "cld_lake.sql.hub",
        "cld_lake.sql.rec",
        "cld_lake.torch.back",
    ], found


def test_lake_stands_on_its_own():
    """lake/ uses only itself and the leaf modules: nothing above it (score, sql, select...)."""
    outside = {
        (name, dep)
        for name, deps in _graph().items()
        if name.startswith("cld_lake.lake")
        for dep in deps
        if not dep.startswith("cld_lake.lake") and _unit(dep) not in LEAVES
    }
    assert not outside, f"lake/ imports from layers above it: {sorted(outside)}"


def test_leaves_import_no_other_cld_lake_module():
    for name, deps in _graph().items():
        if _unit(name) in LEAVES:
            assert {_unit(d) for d in deps} <= LEAVES, f"{name} imports {deps}"


# --- public faces --------------------------------------------------------------------------
def _private_uses(package: Path = PACKAGE) -> list[str]:
    """Each place a module reaches a private part of another unit: a private module, a
    private name imported, or a private attribute of a module it bound to a name."""
    modules = _modules(package)
    found = []
    for name, path in modules.items():
        unit = _unit(name)
        tree = ast.parse(path.read_text())

        def reach(
            module: str, attr: str | None, line: int, unit: str = unit, name: str = name
        ) -> None:
            if _unit(module) == unit:
                return
            if _is_private_module(module):
                found.append(f"{name}:{line} reaches {module}")
            elif attr is not None and _is_private_name(attr):
                found.append(f"{name}:{line} reaches {module}.{attr}")

        bound: dict[str, str] = {}  # local name -> the module it names
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    module = _resolve(alias.name, modules)
                    if module is None:
                        continue
                    reach(module, None, node.lineno)
                    top = alias.name.split(".")[0]
                    bound[alias.asname or top] = module if alias.asname else top
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(name, path, node)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    if full in modules:
                        reach(full, None, node.lineno)
                        bound[alias.asname or alias.name] = full
                    elif (module := _resolve(base, modules)) is not None:
                        reach(module, alias.name, node.lineno)
        for node in ast.walk(tree):
            chain = _chain(node)
            if chain is None or chain[0] not in bound:
                continue
            module = bound[chain[0]]
            for attr in chain[1:]:
                if f"{module}.{attr}" in modules:
                    module = f"{module}.{attr}"
                    reach(module, None, node.lineno)  # type: ignore[attr-defined]
                    continue
                reach(module, attr, node.lineno)  # type: ignore[attr-defined]
                break
    return sorted(set(found))


def _chain(node: ast.AST) -> list[str] | None:
    """``["a", "b", "c"]`` for the expression ``a.b.c``; None for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not parts or not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def test_no_unit_reaches_into_another_units_private_parts():
    assert _private_uses() == []


def test_the_private_use_check_finds_planted_reaches(tmp_path):
    files = {
        "cld_lake/__init__.py": "",
        "cld_lake/lake/__init__.py": "from cld_lake.lake._format import CHANNELS\n",
        "cld_lake/lake/_format.py": "CHANNELS = ()\n_HIDDEN = 1\n",
        "cld_lake/lake/scores.py": "from cld_lake.lake import _format\n_helper = 1\nshown = 2\n",
        "cld_lake/score/__init__.py": (
            "from cld_lake.lake import CHANNELS\nfrom cld_lake.lake import scores\nscores.shown\n"
        ),
    }
    assert _private_uses(_plant(tmp_path / "clean", files)) == []
    planted = {
        "cld_lake/sql/__init__.py": "from cld_lake.lake import _format as fmt\n",
        "cld_lake/sql/a.py": "from cld_lake.lake.scores import _helper\n",
        "cld_lake/sql/b.py": "from cld_lake.lake import scores as s\ns._helper\n",
        "cld_lake/sql/c.py": "import cld_lake.lake._format\n",
    }
    found = _private_uses(_plant(tmp_path / "planted", {**files, **planted}))
    assert sorted(v.split(":", 1)[0] for v in found) == [
        "cld_lake.sql",
        "cld_lake.sql.a",
        "cld_lake.sql.b",
        "cld_lake.sql.c",
    ], found


# --- storage behind its interface ----------------------------------------------------------
def _type_names(node: ast.AST) -> Iterator[str]:
    """The type names an isinstance's second argument names (a tuple, a ``|`` union)."""
    if isinstance(node, ast.Name):
        yield node.id
    elif isinstance(node, ast.Attribute):
        yield node.attr
    elif isinstance(node, ast.Tuple):
        for element in node.elts:
            yield from _type_names(element)
    elif isinstance(node, ast.BinOp):
        yield from _type_names(node.left)
        yield from _type_names(node.right)


def _is_scheme_text(node: ast.AST) -> bool:
    """A string constant that names a URL scheme (``"s3"``) or holds one (``"memory://"``)."""
    if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
        return False
    return "://" in node.value or node.value.lower().rstrip(":") in URL_SCHEMES


def _storage_questions(package: Path = PACKAGE) -> list[str]:
    """Places outside ``storage/`` that ask which store or path type they hold, or branch on
    a URL scheme."""
    found = []
    for name, path in _modules(package).items():
        if _unit(name) == "storage":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{name}:{getattr(node, 'lineno', 0)}"
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("isinstance", "issubclass")
                and len(node.args) == 2
            ):
                asked = set(_type_names(node.args[1])) & STORAGE_TYPES
                if asked:
                    found.append(f"{where} asks isinstance(..., {', '.join(sorted(asked))})")
            elif isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                sides += [e for n in sides if isinstance(n, ast.Tuple | ast.List | ast.Set)
                          for e in n.elts]  # fmt: skip
                if any(_is_scheme_text(n) for n in sides):
                    found.append(f"{where} compares with a URL scheme")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("startswith", "endswith", "removeprefix")
                and any(_is_scheme_text(a) for a in node.args)
            ):
                found.append(f"{where} tests a URL scheme")
            elif isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                names += [a.name for a in node.names]
                if any(n.startswith("urllib.parse") or n == "urllib" for n in names):
                    found.append(f"{where} parses URLs")
    return found


def test_nothing_outside_storage_asks_which_store_it_holds():
    assert _storage_questions() == []


def test_the_storage_check_finds_planted_questions(tmp_path):
    files = {
        "cld_lake/__init__.py": "",
        "cld_lake/storage/__init__.py": (
            "from pathlib import Path\ndef f(p):\n    return isinstance(p, Path) or p == 's3'\n"
        ),
        "cld_lake/lake/__init__.py": (
            "import os\ndef f(p, t):\n    return isinstance(p, str | os.PathLike) or t == 'train'\n"
        ),
    }
    assert _storage_questions(_plant(tmp_path / "clean", files)) == []
    planted = {
        "cld_lake/lake/a.py": "from pathlib import Path\nisinstance(1, (int, Path))\n",
        "cld_lake/lake/b.py": "import cld_lake.storage as s\nisinstance(1, s.StorePath | int)\n",
        "cld_lake/lake/c.py": "def f(u):\n    return u.startswith('memory://')\n",
        "cld_lake/lake/d.py": "def f(store):\n    return store.scheme in ('s3', 'gs')\n",
        "cld_lake/lake/e.py": "from urllib.parse import urlparse\n",
    }
    found = _storage_questions(_plant(tmp_path / "planted", {**files, **planted}))
    assert [v.split(":", 1)[0] for v in found] == [f"cld_lake.lake.{m}" for m in "abcde"], found


# --- DuckDB and Dask through their adapters ------------------------------------------------
def _engine_uses(package: Path = PACKAGE) -> list[str]:
    """Imports of duckdb / dask / distributed, and ``duckdb.connect``, outside their owners."""
    found = []
    for name, path in _modules(package).items():
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{name}:{getattr(node, 'lineno', 0)}"
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                base = node.module or ""
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                top = target.split(".")[0]
                if top == "duckdb" and not _in(name, DUCKDB_IMPORTERS):
                    found.append(f"{where} imports {target}")
                elif target == "duckdb.connect" and not _in(name, DUCKDB_CONNECTS):
                    found.append(f"{where} imports {target}")
                elif top in ("dask", "distributed") and not _in(name, DASK_IMPORTERS):
                    found.append(f"{where} imports {target}")
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "connect"
                and isinstance(node.value, ast.Name)
                and node.value.id == "duckdb"
                and not _in(name, DUCKDB_CONNECTS)
            ):
                found.append(f"{where} calls duckdb.connect")
    return sorted(set(found))


def test_duckdb_and_dask_only_through_their_adapters():
    assert _engine_uses() == []


def test_the_adapter_check_finds_planted_engine_uses(tmp_path):
    files = {
        "cld_lake/__init__.py": "",
        "cld_lake/_duckdb.py": "import duckdb\ncon = duckdb.connect()\n",
        "cld_lake/_dask.py": "def f():\n    import distributed\n",
        "cld_lake/sql/__init__.py": "import duckdb\nduckdb.tokenize('x')\n",
    }
    assert _engine_uses(_plant(tmp_path / "clean", files)) == []
    planted = {
        "cld_lake/lake/a.py": "def f():\n    import duckdb\n",
        "cld_lake/score/b.py": "from distributed import Client\n",
        "cld_lake/score/c.py": "import dask.array\n",
        "cld_lake/sql/d.py": "import duckdb\ncon = duckdb.connect()\n",
        "cld_lake/sql/e.py": "from duckdb import connect\n",
    }
    found = _engine_uses(_plant(tmp_path / "planted", {**files, **planted}))
    modules = sorted({v.split(":", 1)[0] for v in found})
    assert modules == [
        "cld_lake.lake.a",
        "cld_lake.score.b",
        "cld_lake.score.c",
        "cld_lake.sql.d",
        "cld_lake.sql.e",
    ], found


def test_private_duckdb_module_has_one_owner():
    users = [
        name
        for name, path in _modules().items()
        if "duckdb._sources" in path.read_text() and name != "cld_lake._duckdb"
    ]
    assert users == [], f"only cld_lake._duckdb may touch duckdb._sources; also in {users}"


# --- small modules -------------------------------------------------------------------------
def _long_modules(package: Path = PACKAGE, limit: int = MAX_LINES) -> list[str]:
    return [
        f"{name}: {lines} lines"
        for name, path in _modules(package).items()
        if (lines := len(path.read_text().splitlines())) > limit
    ]


def test_no_module_is_over_the_line_limit():
    assert _long_modules() == []


def test_the_size_check_finds_a_planted_long_module(tmp_path):
    package = _plant(
        tmp_path, {"cld_lake/__init__.py": "", "cld_lake/big.py": "x = 1\n" * (MAX_LINES + 1)}
    )
    assert _long_modules(package) == [f"cld_lake.big: {MAX_LINES + 1} lines"]
    assert _long_modules(package, limit=MAX_LINES + 1) == []


# --- benchmarks and pipelines on public names ----------------------------------------------
def _code_in(tree: ast.AST) -> Iterator[ast.AST]:
    """``tree`` and the code it runs as text (a string that parses as statements importing
    something: what a benchmark hands a child process)."""
    yield tree
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if "import " not in node.value:
                continue
            try:
                yield ast.parse(textwrap.dedent(node.value))
            except SyntaxError:
                continue


def _non_public_uses(folders: list[Path]) -> list[str]:
    """Names that benchmarks and pipelines use of cld_lake beyond :data:`PUBLIC_MODULES`, and
    private names of any module they import (a folder's own private modules allowed)."""
    found = []
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            where = f"{folder.name}/{path.relative_to(folder)}"
            for tree in _code_in(ast.parse(path.read_text())):
                found += _non_public_in(tree, where, folder.name)
    return sorted(set(found))


def _non_public_in(tree: ast.AST, where: str, own: str) -> list[str]:
    found = []
    bound: set[str] = set()  # local names of cld_lake modules
    for node in ast.walk(tree):
        line = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "cld_lake":
                    if alias.name not in PUBLIC_MODULES:
                        found.append(f"{line} imports {alias.name}")
                    bound.add(alias.asname or "cld_lake")
        elif isinstance(node, ast.ImportFrom) and node.module:
            top = node.module.split(".")[0]
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if top == "cld_lake":
                    module_ok = node.module in PUBLIC_MODULES
                    if not module_ok or _is_private_name(alias.name):
                        if full not in PUBLIC_MODULES:
                            found.append(f"{line} imports {full}")
                    if full in PUBLIC_MODULES:
                        bound.add(alias.asname or alias.name)
                elif (
                    top in EXAMPLES
                    and top != own
                    and any(_is_private_name(p) for p in node.module.split("."))
                ):
                    found.append(f"{line} imports {node.module}")
                elif _is_private_name(alias.name):
                    found.append(f"{line} imports {full}")
        elif (
            isinstance(node, ast.Attribute)
            and _is_private_name(node.attr)
            and isinstance(_root_name(node), ast.Name)
            and _root_name(node).id in bound  # type: ignore[union-attr]
        ):
            found.append(f"{line} uses .{node.attr}")
    return found


def _root_name(node: ast.AST) -> ast.AST:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node


def test_benchmarks_and_pipelines_use_public_names_only():
    assert _non_public_uses([REPO / "benchmarks", REPO / "pipelines"]) == []


def test_the_public_name_check_finds_planted_private_uses(tmp_path):
    clean = {
        "benchmarks/__init__.py": "",
        "benchmarks/_own.py": "",
        "benchmarks/a.py": (
            "import cld_lake\nfrom cld_lake import diagnostics\nfrom cld_lake.lake import Lake\n"
            "from benchmarks._own import helper\nfrom benchmarks.synth import make\n"
            "from tests._server import start\n"
            "import cld_lake.torch as t\ncld_lake.score.compute_scores\n"
            "CHILD = 'from cld_lake.lake import open_lake'\n"
        ),
    }
    _plant(tmp_path / "clean", clean)
    assert _non_public_uses([tmp_path / "clean" / "benchmarks"]) == []
    planted = {
        "benchmarks/b.py": "from cld_lake.lake._segments import ChunkReader\n",
        "benchmarks/c.py": "from cld_lake.lake.scores import stored_scores\n",
        "benchmarks/d.py": "from benchmarks.synth import _RowSource\n",
        "benchmarks/e.py": "CHILD = '''\nfrom cld_lake._cli import main\n'''\n",
        "benchmarks/f.py": "import cld_lake\ncld_lake.lake._format\n",
        "benchmarks/g.py": "from pipelines._common import train\n",
    }
    _plant(tmp_path / "planted", {**clean, **planted})
    found = _non_public_uses([tmp_path / "planted" / "benchmarks"])
    assert [v.split(":", 1)[0] for v in found] == [f"benchmarks/{m}.py" for m in "bcdefg"], found


# --- importers -----------------------------------------------------------------------------
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
