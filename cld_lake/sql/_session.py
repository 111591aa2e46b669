"""One query's run: a locked connection with the views, its steps, its outputs, its stop.

:class:`Session` runs the steps :func:`cld_lake.sql._guard.plan` made, in order: each one but
the last runs to its end (its rows, if any, are not read), a ``COPY ... TO`` output is renamed
into place as soon as its statement succeeded, and the last statement's result is what the
caller reads. Every DuckDB call goes through a :class:`cld_lake._duckdb.Runner`, so Ctrl-C and
the timeout stop it. :meth:`Session.translated` turns what DuckDB raises into one-line
cld_lake errors.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cld_lake import _duckdb
from cld_lake._io import OutputFile
from cld_lake.errors import CldLakeError, CorruptLakeError, one_line
from cld_lake.lake.store import Lake
from cld_lake.sql._guard import QueryTimeoutError, SqlError, Step, parse, plan
from cld_lake.sql._losses import LossSource, ScanStats
from cld_lake.sql._views import create_views

_SANDBOX_HINT = (
    "cld-lake sql reads the lake through its views and other files only when the query names "
    "them as literal paths outside the lake (or in LAKE/manifests/); it writes only with --out "
    "or COPY ... TO a literal path outside the lake"
)
_DISK_FULL = os.strerror(errno.ENOSPC)


class Session:
    """The connection, steps, ``losses`` sources and runner of one query (see the module
    docstring); ``out`` is ``--out``'s file (its temp file is the connection's to write)."""

    def __init__(
        self,
        lake: Lake,
        query: str | None,
        *,
        out: OutputFile | None = None,
        stats: ScanStats | None = None,
        block_rows: int | None = None,
        memory_limit: str,
        timeout: float | None = None,
    ) -> None:
        self.lake = lake
        self.timeout = timeout
        self.out = out
        self.steps: list[Step] = []
        self.sources: list[LossSource] = []
        self.con = _duckdb.connect(memory_limit=memory_limit)
        self.run = _duckdb.Runner(self.con, timeout)
        try:
            allowed: list[str] = []
            if query is not None:
                self.steps, allowed = plan(parse(self.con, query), lake.root)
            if out is not None:
                allowed += [str(p) for p in out.side_files()]
            _duckdb.lock_down(self.con, allowed)
            self.sources = create_views(self.con, lake, stats=stats, block_rows=block_rows)
        except BaseException:
            self.close()
            raise

    @property
    def last(self) -> Step:
        return self.steps[-1]

    def run_all_but_last(self) -> None:
        for step in self.steps[:-1]:
            self.run(lambda step=step: self._complete(step.query))
            self._commit(step)

    def _complete(self, sql: str) -> None:
        self.con.execute(sql)
        _duckdb.finish(self.con)

    def relation(self) -> Any:
        """The last statement as a DuckDB relation (not yet run), or None when it returns no
        rows (it has run then). A ``COPY ... TO`` runs here, its output is put in place, and
        its result (the row count) is returned as a relation."""
        last = self.last
        if last.output is None:
            return self.run(lambda: self.con.sql(last.query))
        result = self.run(lambda: self.con.sql(last.query).to_arrow_table())
        self._commit(last)
        return self.con.from_arrow(result)

    @staticmethod
    def _commit(step: Step) -> None:
        if step.output is not None:
            step.output.commit()

    def outputs(self) -> list[OutputFile]:
        """Every file this query writes: its ``COPY ... TO`` targets and ``--out``."""
        found = [s.output for s in self.steps if s.output is not None]
        return found + ([self.out] if self.out is not None else [])

    def close(self) -> None:
        for output in self.outputs():
            output.discard()
        self.con.close()

    @contextmanager
    def translated(self) -> Iterator[None]:
        """What DuckDB raises inside, as one-line cld_lake errors (see :meth:`error`)."""
        try:
            yield
        except (_duckdb.Error, _duckdb.Stopped) as exc:
            raise self.error(exc) from exc

    def error(self, exc: BaseException) -> Exception:
        """One line for a failed statement: the timeout; the lake's own read error if a scan
        failed; a full disk as ``OSError(ENOSPC)``; a file the query names that does not
        exist; else DuckDB's own first line."""
        if isinstance(exc, _duckdb.Stopped):
            return QueryTimeoutError(
                f"SQL: the query ran past its timeout of {self.timeout:g} s and was stopped; "
                "narrow it (filters on split, sample_id, label, checkpoint are pushed into the "
                "losses scan) or allow more time"
            )
        for source in self.sources:
            failure = source.failure
            if isinstance(failure, CldLakeError):
                return failure
            if failure is not None:
                return CorruptLakeError(
                    f"SQL: reading the losses of split {source.split.name!r} failed: "
                    f"{type(failure).__name__}: {one_line(failure)}; "
                    f"run cld-lake verify {self.lake.root} to find damaged or missing files"
                )
        text = one_line(exc)
        if _DISK_FULL in str(exc):
            return OSError(errno.ENOSPC, _DISK_FULL, self._written_file(str(exc)))
        if isinstance(exc, _duckdb.SandboxError):
            missing = _missing_file(str(exc))
            if missing is not None:
                return SqlError(
                    f"SQL: {missing}: no such file; check the path (files outside the lake are "
                    "read by their literal path, e.g. read_parquet('coreset.parquet'))"
                )
            return SqlError(f"SQL: {text} ({_SANDBOX_HINT})")
        return SqlError(f"SQL: {text}")

    def _written_file(self, message: str) -> str | None:
        """The file a write error names, as the user knows it (an output's target, not its
        temp file); None when it names none."""
        found = re.search(r'file \\?"([^"\\]+)\\?"', message)
        if found is None:
            return None
        for output in self.outputs():
            if found.group(1) in {str(p) for p in output.side_files()}:
                return str(output.target)
        return found.group(1)


def _missing_file(message: str) -> str | None:
    """The path a sandbox refusal names, when nothing exists there (DuckDB refuses a path
    outside its list before it looks whether the file exists)."""
    found = re.search(r'Cannot access (?:file|directory) "([^"]+)"', message)
    if found is None or any(c in found.group(1) for c in "*?["):
        return None
    path = Path(found.group(1)).expanduser()
    return None if path.exists() or path.is_symlink() else found.group(1)
