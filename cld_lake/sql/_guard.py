"""What a query may touch on disk: parsing its statements into the sandbox's file list.

The sandbox (:func:`cld_lake._duckdb.lock_down`) is the guarantee: a locked connection reaches
no file except the ones listed here and its private spill directory. This module decides the
list, before the connection is locked:

- ``COPY ... TO 'path'`` targets, each checked by :func:`cld_lake._io.check_output_path`
  (outside the lake, directory exists), with the ``tmp_<name>`` sibling DuckDB writes first
  when the file already exists;
- files named as string literals in the query that exist outside the lake (e.g. a manifest
  joined with ``samples``): readable, and writable only because they lie outside the lake;
- ``--out``'s temp file.

Nothing inside the lake is ever listed: the lake is read through the views (Python sources
that DuckDB cannot redirect). Refusing ``ATTACH``/``DETACH``/``EXPORT`` early only gives a
friendlier message than the sandbox's permission error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import duckdb

from cld_lake._duckdb import Connection, Error
from cld_lake._io import check_output_path, is_inside
from cld_lake.errors import BadInputError, one_line
from cld_lake.storage import StorePath

REFUSED_STATEMENTS = {"ATTACH", "DETACH", "EXPORT"}


class SqlError(BadInputError):
    """A query DuckDB rejects (syntax, unknown column, ...) or one the lake refuses."""


def parse(con: Connection, query: str) -> list[Any]:
    """The statements of ``query``; refuse an empty query and statements that attach or export."""
    try:
        statements = con.extract_statements(query)
    except Error as exc:
        raise SqlError(f"SQL: {one_line(exc)}") from exc
    if not statements:
        raise SqlError("SQL: empty query; give a statement such as SELECT count(*) FROM samples")
    for st in statements:
        kind = st.type.name
        if kind in REFUSED_STATEMENTS:
            raise SqlError(
                f"SQL: {kind} is not allowed in cld-lake sql (it could write files); "
                "use COPY ... TO or --out"
            )
    return statements


def _literals(statement: str) -> list[tuple[int, str]]:
    """``(token index, value)`` of every plain quoted string constant in ``statement``."""
    found = []
    for i, (offset, kind) in enumerate(duckdb.tokenize(statement)):
        if kind == duckdb.token_type.string_const and statement.startswith("'", offset):
            end = offset + 1
            while True:
                end = statement.find("'", end)
                if end < 0 or not statement.startswith("''", end):
                    break
                end += 2
            if end > offset:
                found.append((i, statement[offset + 1 : end].replace("''", "'")))
    return found


def copy_target(statement: str) -> str | None:
    """The path a ``COPY ... TO 'path'`` statement writes to (None for ``COPY ... FROM``)."""
    tokens = duckdb.tokenize(statement)
    literals = dict(_literals(statement))
    depth = 0
    for i, (offset, kind) in enumerate(tokens):
        end = tokens[i + 1][0] if i + 1 < len(tokens) else len(statement)
        text = statement[offset:end].strip()
        if kind == duckdb.token_type.operator:
            depth += text.count("(") - text.count(")")
        elif depth == 0 and kind == duckdb.token_type.keyword and text.upper() == "TO":
            if i + 1 not in literals:
                raise SqlError(
                    "COPY ... TO: give the target as a literal 'path' so it can be checked"
                )
            return literals[i + 1]
    return None


def _forms(path: Path) -> set[str]:
    """The spellings DuckDB may check a path under: as written, ``~`` expanded, absolute."""
    expanded = path.expanduser()
    return {str(path), str(expanded), os.path.abspath(expanded)}


def sandbox_files(statements: list[Any], lake_root: StorePath) -> list[str]:
    """The files the locked connection may open for ``statements`` (see the module docstring)."""
    files: set[str] = set()
    for st in statements:
        target = copy_target(st.query) if st.type.name == "COPY" else None
        if target is not None:
            out = check_output_path(target, lake_root, what="COPY ... TO")
            files |= _forms(out) | _forms(out.with_name(f"tmp_{out.name}"))
        for _, text in _literals(st.query):
            path = Path(text)
            try:
                usable = path.expanduser().is_file() and not is_inside(path, lake_root)
            except (OSError, RuntimeError, ValueError):  # not a path at all
                usable = False
            if usable:
                files |= _forms(path)
    return sorted(files)
