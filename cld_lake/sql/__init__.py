"""SQL over the lake with embedded DuckDB.

Every connection gets these views (see ``docs/sql.md``):

``samples``
    ``split, sample_id, label, <metadata...>``: one row per sample of every split.
``scores``
    ``sample_id, label, <one column per stored score>``: ``LAKE/scores.parquet``; an empty
    ``(sample_id, label)`` view when nothing is scored yet.
``checkpoints``
    ``split, checkpoint, epoch, step, wall_time, committed_at, nonfinite, complete``.
``losses``
    ``split, sample_id, label, checkpoint, loss[, correct, margin]``: the long form, streamed
    block by block from the trajectory store, never materialised. Filters on ``split``,
    ``sample_id``, ``label`` and ``checkpoint`` that compare with constants are pushed into
    the scan: only the row blocks holding matching samples and only the segments holding
    matching checkpoints are read, and only the channels the query uses.
``val_reference``
    ``label, checkpoint, mean_loss, n_samples``: the per-class mean validation loss at every
    checkpoint, over the validation samples whose loss is finite at every checkpoint.

Every connection is sandboxed (:func:`cld_lake._duckdb.lock_down`): no statement can write
into the lake, install or load an extension, or change a setting. Files outside the lake are
reachable only when the query names them as literal paths (``COPY ... TO 'out.csv'``,
``read_parquet('manifest.parquet')``) or through ``--out``.

Modules: ``_views`` (the views), ``_losses`` (the ``losses`` source), ``_pushdown`` (which
filters it takes), ``_guard`` (which files a query may touch).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cld_lake import _duckdb
from cld_lake._duckdb import sql_str
from cld_lake._io import check_output_path
from cld_lake.errors import CldLakeError, CorruptLakeError, one_line
from cld_lake.lake.store import Lake
from cld_lake.sql._guard import SqlError, parse, sandbox_files
from cld_lake.sql._losses import LossSource, ScanStats
from cld_lake.sql._views import create_views
from cld_lake.storage import local

__all__ = ["ScanStats", "SqlError", "connect", "iter_result", "query", "sql_str", "write_query"]

MEMORY_LIMIT = "2GB"
OUT_FORMATS = {".parquet": "PARQUET", ".csv": "CSV", ".json": "JSON"}
_SANDBOX_HINT = (
    "cld-lake sql reads the lake through its views and other files only when the query names "
    "them as literal paths outside the lake; it writes only with --out or COPY ... TO a literal "
    "path outside the lake"
)


def _as_lake(lake: Lake | str | os.PathLike[str]) -> Lake:
    return lake if isinstance(lake, Lake) else Lake(lake)


def _open(
    lake: Lake,
    query: str | None,
    *,
    files: tuple[str, ...] = (),
    stats: ScanStats | None = None,
    block_rows: int | None = None,
    memory_limit: str = MEMORY_LIMIT,
) -> tuple[_duckdb.Connection, list[Any], list[LossSource]]:
    """A locked connection with the views, the statements of ``query`` and the loss sources."""
    con = _duckdb.connect(memory_limit=memory_limit)
    try:
        statements = parse(con, query) if query is not None else []
        _duckdb.lock_down(con, [*sandbox_files(statements, lake.root), *files])
        sources = create_views(con, lake, stats=stats, block_rows=block_rows)
    except BaseException:
        con.close()
        raise
    return con, statements, sources


def connect(
    lake: Lake | str | os.PathLike[str],
    memory_limit: str = MEMORY_LIMIT,
    stats: ScanStats | None = None,
    block_rows: int | None = None,
) -> _duckdb.Connection:
    """A sandboxed DuckDB connection with the lake's views (see the module docstring).

    Parameters
    ----------
    lake : Lake or path
    memory_limit : str
        DuckDB's memory limit; larger sorts and joins spill to a private temp directory.
    stats : ScanStats, optional
        Filled with what the ``losses`` scans read.
    block_rows : int, optional
        Rows per block read from the store (default: the split's chunk rows).

    The connection opens no file itself (its settings are locked): use :func:`query`,
    :func:`write_query` or ``cld-lake sql`` to read or write files outside the lake.
    """
    con, _, _ = _open(
        _as_lake(lake), None, stats=stats, block_rows=block_rows, memory_limit=memory_limit
    )
    return con


def _error(exc: BaseException, sources: list[LossSource], lake: Lake) -> CldLakeError:
    """One line for a failed statement: the lake's own read error if a scan failed, else DuckDB's."""
    for source in sources:
        failure = source.failure
        if isinstance(failure, CldLakeError):
            return failure
        if failure is not None:
            return CorruptLakeError(
                f"SQL: reading the losses of split {source.split.name!r} failed: "
                f"{type(failure).__name__}: {one_line(failure)}; "
                f"run cld-lake verify {lake.root} to find damaged or missing files"
            )
    text = f"SQL: {one_line(exc)}"
    if isinstance(exc, _duckdb.SandboxError):
        text += f" ({_SANDBOX_HINT})"
    return SqlError(text)


@contextmanager
def _translated(sources: list[LossSource], lake: Lake) -> Iterator[None]:
    try:
        yield
    except _duckdb.Error as exc:
        raise _error(exc, sources, lake) from exc


def _run_all_but_last(con: _duckdb.Connection, statements: list[Any]) -> None:
    for st in statements[:-1]:
        con.execute(st.query)


def query(lake: Lake | str | os.PathLike[str], sql: str, lazy: bool = False) -> Any:
    """Run ``sql`` over the lake's views.

    Returns a Polars DataFrame (None for a statement without a result), or with ``lazy=True``
    the DuckDB relation (not yet run; its connection stays open while the relation lives).
    Raises :class:`SqlError` for a query DuckDB rejects or one the sandbox refuses.

    Examples
    --------
    >>> query(lake, "SELECT label, count(*) AS n FROM samples WHERE split = 'train' GROUP BY label")  # doctest: +SKIP
    """
    lake = _as_lake(lake)
    con, statements, sources = _open(lake, sql)
    try:
        with _translated(sources, lake):
            _run_all_but_last(con, statements)
            rel = con.sql(statements[-1].query)
            if lazy or rel is None:
                return rel
            return rel.pl()
    finally:
        if not lazy:
            con.close()


def write_query(
    lake: Lake | str | os.PathLike[str],
    sql: str,
    out: str | os.PathLike[str],
    stats: ScanStats | None = None,
    *,
    overwrite: bool = False,
) -> int:
    """Stream the result of ``sql`` to ``out`` (.parquet, .csv or .json); return the row count.

    ``out`` must lie outside the lake and may replace an existing file only with ``overwrite``.
    The file appears atomically: an interrupted run leaves no partial file under ``out``.
    """
    lake = _as_lake(lake)
    out = check_output_path(
        out, lake.root, suffixes=tuple(OUT_FORMATS), overwrite=overwrite, what="--out"
    )
    fmt_name = OUT_FORMATS[out.suffix.lower()]
    options = "FORMAT JSON, ARRAY true" if fmt_name == "JSON" else f"FORMAT {fmt_name}"
    with local(out).put_file() as tmp:
        con, statements, sources = _open(lake, sql, files=(str(tmp),), stats=stats)
        try:
            last = statements[-1]
            if last.type.name not in ("SELECT", "EXPLAIN"):
                raise SqlError(
                    f"--out needs a query returning rows (a SELECT); got {last.type.name}"
                )
            with _translated(sources, lake):
                _run_all_but_last(con, statements)
                body = last.query.strip().rstrip(";")
                row = con.execute(f"COPY ({body}) TO {sql_str(tmp)} ({options})").fetchone()
        finally:
            con.close()
    return int(row[0]) if row else 0


def iter_result(
    lake: Lake | str | os.PathLike[str], sql: str, batch_rows: int = 65536
) -> Iterator[Any]:
    """Yield the result's Arrow schema, then its record batches (bounded memory).

    A statement without a result (``CREATE``, ``COPY`` ...) yields only ``None``. Errors while
    reading are raised as one-line cld_lake errors, like :func:`query`'s.
    """
    lake = _as_lake(lake)
    con, statements, sources = _open(lake, sql)
    try:
        with _translated(sources, lake):
            _run_all_but_last(con, statements)
            rel = con.sql(statements[-1].query)
            if rel is None:
                yield None
                return
            reader = rel.to_arrow_reader(batch_rows)
            yield reader.schema
            yield from reader
    finally:
        con.close()
