"""SQL over the lake with embedded DuckDB.

Every connection gets these views (see ``docs/sql.md``):

``samples``
    ``split, sample_id, label, <metadata...>``: one row per sample of every split.
``train_samples``
    ``samples`` of the training split only (``sample_id`` is unique in it, per run).
``scores``
    ``sample_id, label, <one column per stored score>, <metadata...>``: one row per training
    sample, its stored scores (``LAKE/scores.parquet``) and the training samples' metadata
    columns (``noisy``, ``clean_label``, ...), so that a score is grouped by metadata without a
    join (a join with ``samples`` would meet every split's rows). An empty ``(sample_id,
    label)`` view when nothing is scored yet.
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
``read_parquet('manifest.parquet')``; also manifests in ``LAKE/manifests/``) or through
``--out``. Every file written (``--out``, ``COPY ... TO``) is a new temp file renamed into
place when its statement succeeded: a hard link or symlink at the target is replaced, never
written through.

A query may hold several statements (``CREATE TABLE t AS ...; SELECT ... FROM t``): they run
in order, and the last one's result is returned. ``timeout`` stops a query that runs longer
(:class:`QueryTimeoutError`); Ctrl-C stops it too (``KeyboardInterrupt``, the connection
closed).

Modules: ``_views`` (the views), ``_losses`` (the ``losses`` source), ``_pushdown`` (which
filters it takes), ``_guard`` (which files a query may touch), ``_session`` (one query's run).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from cld_lake import _duckdb
from cld_lake._duckdb import sql_str
from cld_lake._io import OutputFile, check_output_path
from cld_lake.lake.store import Lake
from cld_lake.sql._guard import QueryTimeoutError, SqlError
from cld_lake.sql._losses import ScanStats
from cld_lake.sql._session import Session

__all__ = [
    "QueryTimeoutError",
    "ScanStats",
    "SqlError",
    "connect",
    "iter_result",
    "query",
    "sql_str",
    "write_query",
]

MEMORY_LIMIT = "2GB"
OUT_FORMATS = {".parquet": "PARQUET", ".csv": "CSV", ".json": "JSON"}


def _as_lake(lake: Lake | str | os.PathLike[str]) -> Lake:
    return lake if isinstance(lake, Lake) else Lake(lake)


def _check_timeout(timeout: float | None) -> None:
    number = isinstance(timeout, int | float) and not isinstance(timeout, bool)
    if timeout is not None and not (number and timeout > 0):
        raise SqlError(f"timeout {timeout!r}: give a number of seconds > 0 (or None)")


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
    session = Session(
        _as_lake(lake), None, stats=stats, block_rows=block_rows, memory_limit=memory_limit
    )
    return session.con


def query(
    lake: Lake | str | os.PathLike[str],
    sql: str,
    lazy: bool = False,
    *,
    timeout: float | None = None,
) -> Any:
    """Run ``sql`` over the lake's views.

    Returns a Polars DataFrame of the last statement's result (None for a statement without
    one), or with ``lazy=True`` the DuckDB relation (not yet run; its connection stays open
    while the relation lives). Several statements run in order. Raises :class:`SqlError` for
    a query DuckDB rejects or one the sandbox refuses, :class:`QueryTimeoutError` when it
    runs longer than ``timeout`` seconds (not applied to a lazy relation's later reads).

    Examples
    --------
    >>> query(lake, "SELECT label, count(*) AS n FROM train_samples GROUP BY label")  # doctest: +SKIP
    """
    _check_timeout(timeout)
    lake = _as_lake(lake)
    session = Session(lake, sql, memory_limit=MEMORY_LIMIT, timeout=timeout)
    try:
        with session.translated():
            session.run_all_but_last()
            rel = session.relation()
            if lazy or rel is None:
                return rel
            return session.run(rel.pl)
    finally:
        if not lazy:
            session.close()


def write_query(
    lake: Lake | str | os.PathLike[str],
    sql: str,
    out: str | os.PathLike[str],
    stats: ScanStats | None = None,
    *,
    overwrite: bool = False,
    timeout: float | None = None,
) -> int:
    """Stream the result of ``sql`` (its last statement) to ``out`` (.parquet, .csv or
    .json); return the row count.

    ``out`` must lie outside the lake and may replace an existing file only with
    ``overwrite``. The file appears atomically (a new file renamed into place): an
    interrupted, stopped or failed run leaves ``out`` as it was.
    """
    _check_timeout(timeout)
    lake = _as_lake(lake)
    out = check_output_path(
        out, lake.root, suffixes=tuple(OUT_FORMATS), overwrite=overwrite, what="--out"
    )
    fmt_name = OUT_FORMATS[out.suffix.lower()]
    options = "FORMAT JSON, ARRAY true" if fmt_name == "JSON" else f"FORMAT {fmt_name}"
    output = OutputFile(out)
    session = Session(
        lake, sql, out=output, stats=stats, memory_limit=MEMORY_LIMIT, timeout=timeout
    )
    try:
        last = session.last
        if last.kind not in ("SELECT", "EXPLAIN"):
            raise SqlError(f"--out needs a query returning rows (a SELECT); got {last.kind}")
        with session.translated():
            session.run_all_but_last()
            body = last.query.strip().rstrip(";")
            copy = f"COPY ({body}) TO {sql_str(output.temp)} ({options})"
            row = session.run(lambda: session.con.execute(copy).fetchone())
        output.commit()
    finally:
        session.close()
    return int(row[0]) if row else 0


def iter_result(
    lake: Lake | str | os.PathLike[str],
    sql: str,
    batch_rows: int = 65536,
    *,
    timeout: float | None = None,
) -> Iterator[Any]:
    """Yield the result's Arrow schema, then its record batches (bounded memory).

    The result is the last statement's (the others run first, in order). A statement without
    a result (``CREATE``, ``COPY`` ...) yields only ``None``. Errors while reading are raised
    as one-line cld_lake errors, like :func:`query`'s; ``timeout`` counts from the call.
    """
    _check_timeout(timeout)
    lake = _as_lake(lake)
    session = Session(lake, sql, memory_limit=MEMORY_LIMIT, timeout=timeout)
    try:
        with session.translated():
            session.run_all_but_last()
            rel = session.relation()
            if rel is None:
                yield None
                return
            reader = session.run(lambda: rel.to_arrow_reader(batch_rows))
            yield reader.schema
            while (batch := session.run(lambda: next(reader, None))) is not None:
                yield batch
    finally:
        session.close()
