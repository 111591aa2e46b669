"""What a query may touch on disk: parsing its statements into steps and the sandbox's list.

The sandbox (:func:`cld_lake._duckdb.lock_down`) is the guarantee: a locked connection reaches
no file except the ones listed here and its private spill directory. This module decides the
list, before the connection is locked:

- ``COPY ... TO 'path'``: the target is checked by :func:`cld_lake._io.check_output_path`
  (outside the lake, directory exists, not a FIFO or device, not a hard link to a lake file),
  and the statement is rewritten to write a fresh temp file next to it instead
  (:class:`cld_lake._io.OutputFile`), renamed over the target once the statement succeeded.
  DuckDB never opens the target itself, so a link at the target is replaced, not written
  through, and a failed or interrupted COPY leaves the target as it was. Only the temp file
  (and the ``tmp_`` sibling DuckDB may write first) is listed. A COPY that writes a directory
  of files (``PARTITION_BY``, ``PER_THREAD_OUTPUT``, ...) is refused;
- files named as string literals in the query that exist outside the lake (e.g. a manifest
  joined with ``samples``), and Parquet files directly in ``LAKE/manifests/`` (the one folder
  of the lake users write to, with ``select --out``): readable. A file that is a hard link to
  another file of the lake is refused;
- ``--out``'s temp file.

Nothing else inside the lake is ever listed: the lake is read through the views (Python
sources that DuckDB cannot redirect). Refusing ``ATTACH``/``DETACH``/``EXPORT`` early only
gives a friendlier message than the sandbox's permission error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from cld_lake._duckdb import Connection, Error, sql_str
from cld_lake._io import MANIFESTS_DIR, OutputFile, check_output_path, is_inside, lake_file_like
from cld_lake.errors import BadInputError, CldLakeError, one_line
from cld_lake.storage import StorePath, local

REFUSED_STATEMENTS = {"ATTACH", "DETACH", "EXPORT"}


# COPY options that make DuckDB write a directory of files rather than one file
DIRECTORY_OPTIONS = ("PARTITION_BY", "PER_THREAD_OUTPUT", "FILE_SIZE_BYTES", "ROW_GROUPS_PER_FILE")


class SqlError(BadInputError):
    """A query DuckDB rejects (syntax, unknown column, ...) or one the lake refuses."""


class QueryTimeoutError(CldLakeError, TimeoutError):
    """A query ran past its timeout and was stopped (a failure of the run: exit 1)."""

    exit_code = 1


@dataclass
class Step:
    """One statement as it runs: its SQL (a ``COPY ... TO`` rewritten to write ``output``'s
    temp file) and its type name (``SELECT``, ``COPY``, ...)."""

    query: str
    kind: str
    output: OutputFile | None = None


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


def copy_target(statement: str) -> tuple[str, int, int] | None:
    """The path a ``COPY ... TO 'path'`` statement writes to and where its literal stands
    (``start, end`` offsets in ``statement``); None for ``COPY ... FROM``."""
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
            start = tokens[i + 1][0]
            stop = statement.index("'", start + 1)
            while statement.startswith("''", stop):
                stop = statement.index("'", stop + 2)
            _refuse_directory_options(statement[stop + 1 :])
            return literals[i + 1], start, stop + 1
    return None


def _refuse_directory_options(options: str) -> None:
    tokens = duckdb.tokenize(options)
    ends = [offset for offset, _ in tokens[1:]] + [len(options)]
    words = {
        options[offset:end].strip().upper()
        for (offset, _), end in zip(tokens, ends[: len(tokens)], strict=True)
    }
    found = [o for o in DIRECTORY_OPTIONS if o in words]
    if found:
        raise SqlError(
            f"COPY ... TO with {found[0]}: that writes a directory of files; cld-lake sql writes "
            "one file per COPY (drop the option, or split the file afterwards)"
        )


def _forms(path: Path) -> set[str]:
    """The spellings DuckDB may check a path under: as written, ``~`` expanded, absolute."""
    expanded = path.expanduser()
    return {str(path), str(expanded), os.path.abspath(expanded)}


def readable(path: Path, lake_root: StorePath) -> bool:
    """May a query read the file ``path`` names? An existing file outside the lake, or a
    ``.parquet`` file directly in ``LAKE/manifests/``; never a hard link to a lake file."""
    try:
        if not path.expanduser().is_file():
            return False
        resolved = path.expanduser().resolve()
        if is_inside(resolved, lake_root):
            in_manifests = local(resolved.parent) == lake_root.canonical() / MANIFESTS_DIR
            if not (in_manifests and resolved.suffix.lower() == ".parquet"):
                return False
    except (OSError, RuntimeError, ValueError):  # not a path at all
        return False
    twin = lake_file_like(resolved, lake_root)
    if twin is not None:
        raise SqlError(
            f"SQL: {path} is the same file as the lake's {twin} (a hard link); read the lake "
            "through its views (samples, scores, checkpoints, losses)"
        )
    return True


def plan(statements: list[Any], lake_root: StorePath) -> tuple[list[Step], list[str]]:
    """The steps that run ``statements`` and the files the locked connection may open for
    them (see the module docstring)."""
    steps: list[Step] = []
    files: set[str] = set()
    for st in statements:
        text, kind, output = st.query, st.type.name, None
        target = copy_target(text) if kind == "COPY" else None
        skip = None
        if target is not None:
            path, start, stop = target
            out = check_output_path(path, lake_root, what="COPY ... TO")
            output = OutputFile(out, keep_suffix=True)  # DuckDB infers the format from it
            for side in output.side_files():
                files |= _forms(side)
            skip = text[start:stop]
            text = text[:start] + sql_str(output.temp) + text[stop:]
        for _, literal in _literals(st.query):
            if sql_str(literal) == skip:
                continue
            if readable(Path(literal), lake_root):
                files |= _forms(Path(literal))
        steps.append(Step(text, kind, output))
    return steps, sorted(files)
