"""Every third-party module that cld_lake imports is a declared dependency in pyproject.toml
(regression: ``google_crc32c`` was imported by the segment reader but only arrived through
zarr's dependencies)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib

from tests.conftest import REPO

PACKAGE = REPO / "cld_lake"


def _normalise(name: str) -> str:
    """PEP 503 normalised distribution name (``Google_CRC32C`` -> ``google-crc32c``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, f"unparsable requirement {requirement!r} in pyproject.toml"
    return _normalise(match.group(1))


def declared_distributions() -> dict[str, str]:
    """Declared distribution name -> where it is declared (``dependencies`` or ``extra:NAME``)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {_requirement_name(r): "dependencies" for r in project["dependencies"]}
    for extra, requirements in project.get("optional-dependencies", {}).items():
        for r in requirements:
            declared.setdefault(_requirement_name(r), f"extra:{extra}")
    return declared


def third_party_imports() -> dict[str, list[str]]:
    """Top-level module name -> files of cld_lake that import it (absolute imports only)."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "cld_lake" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(str(path.relative_to(REPO)))
    return {module: sorted(files) for module, files in found.items()}


def test_the_import_scan_sees_the_known_third_party_modules():
    # guards the scan itself: if it found nothing, the next test could not fail
    assert {"numpy", "pyarrow", "zarr", "google_crc32c", "click"} <= set(third_party_imports())


def test_every_third_party_import_is_a_declared_dependency():
    declared = declared_distributions()
    by_module = importlib.metadata.packages_distributions()
    undeclared = []
    for module, files in sorted(third_party_imports().items()):
        distributions = {_normalise(d) for d in by_module.get(module, [module])}
        if not distributions & declared.keys():
            undeclared.append(f"{module} (distribution {sorted(distributions)}, in {files[0]})")
    assert not undeclared, "imported but not declared in pyproject.toml: " + "; ".join(undeclared)


def test_core_modules_import_only_core_dependencies():
    # torch, transformers, dask and the object-store clients are extras: only cld_lake/torch,
    # cld_lake/hf, the dask engine and the storage module (when a URL of that scheme is opened)
    # may import them
    declared = declared_distributions()
    by_module = importlib.metadata.packages_distributions()
    wrong = []
    for module, files in sorted(third_party_imports().items()):
        distributions = {_normalise(d) for d in by_module.get(module, [module])}
        where = {declared[d] for d in distributions & declared.keys()}
        if not where or "dependencies" in where:
            continue  # undeclared ones are the previous test's failure
        allowed = {"cld_lake/torch/", "cld_lake/hf/", "cld_lake/_dask.py", "cld_lake/storage/"}
        outside = [f for f in files if not any(f.startswith(a) for a in allowed)]
        if outside:
            wrong.append(f"{module} ({sorted(where)}) imported by {outside}")
    assert not wrong, "optional dependencies imported outside their module: " + "; ".join(wrong)
