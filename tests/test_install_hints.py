"""A missing object-store client is one line ending in the one install hint,
``pip install 'cld-lake[EXTRA]'``, naming an extra that ``pyproject.toml`` defines with that
client (issue 22: the gs:// hint said ``pip install gcsfs``, the README ``cld_lake[gcs]``)."""

from __future__ import annotations

import re
import sys
import tomllib

import pytest

from cld_lake.storage import _fsspec, _obstore
from tests.conftest import REPO

HINT = re.compile(r"pip install '([a-z-]+)\[([a-z]+)\]'$")


@pytest.mark.parametrize(
    ("url", "blocked", "package"),
    [("gs://bucket/lake", ["gcsfs"], "gcsfs"), ("s3://bucket/lake", ["obstore"], "obstore")],
)
def test_a_missing_client_names_the_extra_to_install(cli, monkeypatch, url, blocked, package):
    for module in blocked:  # as if not installed, whether it is here or not
        monkeypatch.setitem(sys.modules, module, None)
        monkeypatch.setitem(sys.modules, f"{module}.store", None)
    monkeypatch.setattr(_fsspec, "_FILESYSTEMS", {})
    monkeypatch.setattr(_obstore, "_CLIENTS", {})
    monkeypatch.setenv("CLD_LAKE_S3_CLIENT", "obstore")
    r = cli("info", url)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    match = HINT.search(r.err.strip())
    assert match, r.err
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert match.group(1) == project["name"] == "cld-lake"
    extra = project["optional-dependencies"][match.group(2)]
    assert any(dep.startswith(package) for dep in extra), (match.group(2), extra)
