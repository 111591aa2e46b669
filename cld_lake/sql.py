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

Statements that would write inside the lake's own directory (``COPY ... TO`` a path in the
lake, ``ATTACH``, ``EXPORT DATABASE``) are refused: the lake is only written through its writer.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cld_lake.errors import BadInputError
from cld_lake.lake import _format as fmt
from cld_lake.lake.store import Lake, Split

# Rows of the long form per Arrow batch handed to DuckDB.
LONG_BATCH_ROWS = 1 << 17
OUT_FORMATS = {".parquet": "PARQUET", ".csv": "CSV", ".json": "JSON"}
ID_COLUMNS = ("sample_id", "label", "checkpoint")
# Statement types that could write files where a guard cannot see the path.
REFUSED_STATEMENTS = {"ATTACH", "DETACH", "EXPORT"}

try:  # DuckDB >= 2.0: a scan source that is offered the query's filters
    from duckdb._sources import ArrowScanSource as _ScanBase
    from duckdb._sources.nodes import Binary, Col, In, Lit, Postfix, Unary

    PUSHDOWN = True
except ImportError:  # pragma: no cover - older DuckDB: plain Arrow stream, no pushdown
    _ScanBase = object  # type: ignore[assignment,misc]
    PUSHDOWN = False


class SqlError(BadInputError):
    """A query DuckDB rejects (syntax, unknown column, ...) or one the lake refuses."""


@dataclass
class ScanStats:
    """What the ``losses`` scans of one connection read (for tests and ``--stats``).

    ``row_blocks`` counts the row blocks read from the trajectory store, ``values`` the stored
    values decoded (rows x checkpoints x channels), ``bytes`` those values' stored size.
    """

    scans: int = 0
    row_blocks: int = 0
    values: int = 0
    bytes: int = 0
    rows_out: int = 0


# --- predicate analysis ------------------------------------------------------------------
_OPS = {
    "=": np.equal,
    "!=": np.not_equal,
    "<>": np.not_equal,
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
}


def _supported(node: Any) -> bool:
    """Whether ``node`` only compares the integer id columns with integer constants."""
    if isinstance(node, Binary):
        if node.op in ("AND", "OR"):
            return _supported(node.left) and _supported(node.right)
        return node.op in _OPS and _is_id_col(node.left) and _is_int(node.right)
    if isinstance(node, Unary):
        return node.op == "NOT" and _supported(node.operand)
    if isinstance(node, Postfix):
        return node.op in ("IS NULL", "IS NOT NULL") and _is_id_col(node.operand)
    if isinstance(node, In):
        return (
            _is_id_col(node.operand) and bool(node.values) and all(_is_int(v) for v in node.values)
        )
    return False


def _is_id_col(node: Any) -> bool:
    return isinstance(node, Col) and len(node.parts) == 1 and node.parts[0] in ID_COLUMNS


def _is_int(node: Any) -> bool:
    return (
        isinstance(node, Lit) and isinstance(node.value, int) and not isinstance(node.value, bool)
    )


def may_hold(node: Any, known: dict[str, np.ndarray]) -> tuple[Any, Any]:
    """Three-valued evaluation of a supported predicate over rows of ``known`` columns.

    Returns ``(may_be_true, may_be_false)`` as boolean arrays (or scalars, broadcastable).
    A comparison on a column not in ``known`` may be either. When every column the predicate
    names is known, ``may_be_true`` is exactly the predicate's value.
    """
    if isinstance(node, Binary) and node.op == "AND":
        lt, lf = may_hold(node.left, known)
        rt, rf = may_hold(node.right, known)
        return lt & rt, lf | rf
    if isinstance(node, Binary) and node.op == "OR":
        lt, lf = may_hold(node.left, known)
        rt, rf = may_hold(node.right, known)
        return lt | rt, lf & rf
    if isinstance(node, Unary):
        t, f = may_hold(node.operand, known)
        return f, t
    if isinstance(node, Postfix):  # the id columns are never NULL
        value = node.op == "IS NOT NULL"
        return np.bool_(value), np.bool_(not value)
    column = node.left.parts[0] if isinstance(node, Binary) else node.operand.parts[0]
    if column not in known:
        return np.bool_(True), np.bool_(True)
    values = known[column]
    if isinstance(node, Binary):
        hit = _OPS[node.op](values, np.int64(node.right.value))
    else:
        hit = np.isin(values, np.array([v.value for v in node.values], dtype=np.int64))
    return hit, ~hit


def _all_true(filters: Sequence[Any], known: dict[str, np.ndarray], n: int) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    for node in filters:
        mask &= may_hold(node, known)[0]
    return mask


def _names(node: Any) -> set[str]:
    if isinstance(node, Col):
        return {node.parts[0]}
    children = {
        Binary: lambda x: (x.left, x.right),
        Unary: lambda x: (x.operand,),
        Postfix: lambda x: (x.operand,),
        In: lambda x: (x.operand,),
    }
    for cls, get in children.items():
        if isinstance(node, cls):
            return set().union(*(_names(c) for c in get(node)))
    return set()


# --- the losses source -------------------------------------------------------------------
_ARROW_TYPES = {"float32": "float32", "float16": "float32", "float64": "float64", "bool": "bool_"}


class LossSource(_ScanBase):  # type: ignore[misc,valid-type]
    """The long form of one split as a DuckDB scan source with filter and projection pushdown.

    Declared columns: ``sample_id, label, checkpoint, <channels...>``. DuckDB offers each filter
    of a query to :meth:`accepts`; those on the id columns compared with integer constants are
    accepted and applied here exactly, after pruning: checkpoints the filter rules out are not
    read, and only the row blocks holding rows it may keep are read. Each scan walks the
    store afresh (self-joins and sub-queries work); memory is one row block.
    """

    schema_is_stable = True

    def __init__(
        self, split: Split, block_rows: int | None = None, stats: ScanStats | None = None
    ) -> None:
        if PUSHDOWN:
            super().__init__(self)
        self.split = split
        self.block_rows = int(block_rows or split.row_chunk)
        self.stats = stats if stats is not None else ScanStats()
        known = [c for c in fmt.CHANNELS if c in split.channels]
        self.channel_order = known + [c for c in split.channels if c not in known]  # loss first

    # Arrow interface -------------------------------------------------------------------
    @property
    def schema(self) -> Any:
        import pyarrow as pa

        fields = [pa.field(c, pa.int64(), nullable=False) for c in ID_COLUMNS]
        for channel in self.channel_order:
            fields.append(
                pa.field(channel, getattr(pa, _ARROW_TYPES[self.split.channels[channel]])())
            )
        return pa.schema(fields)

    def __arrow_c_schema__(self) -> Any:
        return self.schema.__arrow_c_schema__()

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self._reader(None, ()).__arrow_c_stream__(requested_schema)

    # DuckDB source protocol ------------------------------------------------------------
    def accepts(self, predicate: Any) -> bool:
        return _supported(predicate)

    def stream(self, columns: Sequence[int] | None, filters: Sequence[Any]) -> tuple[object, bool]:
        names = self.schema.names
        chosen = None if columns is None else [names[i] for i in columns]
        return self._reader(chosen, filters).__arrow_c_stream__(), chosen is not None

    # reading ---------------------------------------------------------------------------
    def _reader(self, columns: list[str] | None, filters: Sequence[Any]) -> Any:
        import pyarrow as pa

        schema = (
            self.schema if columns is None else pa.schema([self.schema.field(c) for c in columns])
        )
        return pa.RecordBatchReader.from_batches(schema, self.batches(columns, filters))

    def plan(self, filters: Sequence[Any]) -> tuple[np.ndarray, np.ndarray | None]:
        """Checkpoints to read and a mask of the rows that may match (None: all rows)."""
        split = self.split
        ckpts = split.checkpoint_ids
        named = set().union(*(_names(f) for f in filters)) if filters else set()
        if "checkpoint" in named:
            ckpts = ckpts[_all_true(filters, {"checkpoint": ckpts}, len(ckpts))]
        rows = None
        if named & {"sample_id", "label"}:
            known = {"sample_id": split.sample_ids, "label": split.labels}
            rows = _all_true(filters, known, split.num_samples)
        return ckpts, rows

    def row_ranges(self, rows: np.ndarray | None) -> list[tuple[int, int, int]]:
        """``(aligned_start, first_row, stop)`` of each run of row blocks holding wanted rows."""
        n, size = self.split.num_samples, self.block_rows
        if rows is None:
            return [(0, 0, n)] if n else []
        hits = np.flatnonzero(rows)
        if not len(hits):
            return []
        blocks = np.unique(hits // size)
        breaks = np.flatnonzero(np.diff(blocks) > 1) + 1
        ranges = []
        for run in np.split(blocks, breaks):
            first = int(hits[np.searchsorted(hits, run[0] * size)])
            last = int(hits[np.searchsorted(hits, (run[-1] + 1) * size) - 1])
            ranges.append((int(run[0]) * size, first, last + 1))
        return ranges

    def batches(
        self, columns: list[str] | None = None, filters: Sequence[Any] = ()
    ) -> Iterator[Any]:
        """The long form as Arrow record batches, only ``columns``, only rows passing ``filters``."""
        import pyarrow as pa

        split, stats = self.split, self.stats
        stats.scans += 1
        columns = list(self.schema.names) if columns is None else columns
        channels = [c for c in columns if c in split.channels]
        ckpts, rows = self.plan(filters)
        if not len(ckpts):
            return
        itemsize = {c: np.dtype(split.channels[c]).itemsize for c in channels}
        out_schema = pa.schema([self.schema.field(c) for c in columns])
        for aligned, first, stop in self.row_ranges(rows):
            for block in split.blocks(
                block_rows=self.block_rows,
                checkpoints=ckpts,
                channels=channels,
                start=aligned,
                stop=stop,
            ):
                stats.row_blocks += 1
                stats.values += len(block) * len(ckpts) * len(channels)
                stats.bytes += len(block) * len(ckpts) * sum(itemsize.values())
                keep = np.arange(len(block)) + block.start >= first
                if rows is not None:
                    keep &= rows[block.start : block.start + len(block)]
                yield from self._long_batches(block, keep, columns, channels, filters, out_schema)

    def _long_batches(self, block, keep, columns, channels, filters, schema) -> Iterator[Any]:
        import pyarrow as pa

        idx = np.flatnonzero(keep)
        if not len(idx):
            return
        k = len(block.checkpoints)
        step = max(1, LONG_BATCH_ROWS // max(k, 1))
        for a in range(0, len(idx), step):
            sel = idx[a : a + step]
            n = len(sel)
            long = {
                "sample_id": np.repeat(block.sample_ids[sel], k),
                "label": np.repeat(block.labels[sel], k),
                "checkpoint": np.tile(block.checkpoints, n),
            }
            for channel in channels:
                values = block.values[channel][sel].reshape(-1)
                long[channel] = values.astype(np.float32) if values.dtype == np.float16 else values
            if filters:  # exact: every column the accepted filters name is known here
                mask = _all_true(filters, long, n * k)
                if not mask.all():
                    long = {c: v[mask] for c, v in long.items()}
            rows_out = len(long["sample_id"])
            if not rows_out:
                continue
            self.stats.rows_out += rows_out
            yield pa.RecordBatch.from_arrays([pa.array(long[c]) for c in columns], schema=schema)


# Kept for callers of the first form: a plain Arrow C stream of one split, every column.
LongLossStream = LossSource


# --- connection --------------------------------------------------------------------------
def sql_str(value: str | os.PathLike[str]) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def _as_lake(lake: Lake | str | os.PathLike[str]) -> Lake:
    return lake if isinstance(lake, Lake) else Lake(lake)


def connect(
    lake: Lake | str | os.PathLike[str],
    memory_limit: str = "2GB",
    stats: ScanStats | None = None,
    block_rows: int | None = None,
) -> Any:
    """A DuckDB connection with the lake's views registered (see the module docstring).

    Parameters
    ----------
    lake : Lake or path
    memory_limit : str
        DuckDB's memory limit; larger sorts and joins spill to the temp directory.
    stats : ScanStats, optional
        Filled with what the ``losses`` scans read.
    block_rows : int, optional
        Rows per block read from the store (default: the split's chunk rows).
    """
    import duckdb

    lake = _as_lake(lake)
    con = duckdb.connect(
        config={"memory_limit": memory_limit, "temp_directory": tempfile.gettempdir()}
    )
    splits = [lake.split(name) for name in lake.splits()]
    sample_parts, ck_parts, loss_parts = [], [], []
    for i, split in enumerate(splits):
        name = sql_str(split.name)
        sample_parts.append(
            f"SELECT * REPLACE (sample_id::BIGINT AS sample_id, label::BIGINT AS label) FROM (SELECT {name} AS split, * "
            f"FROM read_parquet({sql_str(split.path / fmt.SAMPLES_FILE)}))"
        )
        ck_parts.append(
            f"SELECT {name} AS split, checkpoint::BIGINT AS checkpoint, epoch, step, wall_time, committed_at, "
            f"nonfinite, true AS complete FROM read_parquet({sql_str(split.path / fmt.CHECKPOINTS_FILE)})"
        )
        con.register(f"_losses_{i}", LossSource(split, block_rows=block_rows, stats=stats))
        loss_parts.append(f"SELECT {name} AS split, * FROM _losses_{i}")
    if splits:
        con.execute("CREATE VIEW samples AS " + " UNION ALL BY NAME ".join(sample_parts))
        con.execute("CREATE VIEW checkpoints AS " + " UNION ALL ".join(ck_parts))
        con.execute("CREATE VIEW losses AS " + " UNION ALL BY NAME ".join(loss_parts))
    else:
        con.execute(
            "CREATE VIEW samples AS SELECT NULL::VARCHAR split, NULL::BIGINT sample_id, NULL::BIGINT label WHERE false"
        )
        con.execute(
            "CREATE VIEW checkpoints AS SELECT NULL::VARCHAR split, NULL::BIGINT checkpoint WHERE false"
        )
        con.execute(
            "CREATE VIEW losses AS SELECT NULL::VARCHAR split, NULL::BIGINT sample_id, NULL::BIGINT label, "
            "NULL::BIGINT checkpoint, NULL::FLOAT loss WHERE false"
        )
    scores = lake.path / fmt.SCORES_FILE
    if scores.exists():
        con.execute(
            "CREATE VIEW scores AS SELECT * REPLACE (sample_id::BIGINT AS sample_id, label::BIGINT AS label) "
            f"FROM read_parquet({sql_str(scores)})"
        )
    else:
        con.execute(
            "CREATE VIEW scores AS SELECT NULL::BIGINT sample_id, NULL::BIGINT label WHERE false"
        )
    con.execute(
        "CREATE VIEW val_reference AS "
        "WITH v AS (SELECT sample_id, label, checkpoint, loss FROM losses WHERE split = 'val'), "
        "bad AS (SELECT DISTINCT sample_id FROM v WHERE NOT isfinite(loss)) "
        "SELECT label, checkpoint, avg(loss::DOUBLE) AS mean_loss, count(*) AS n_samples FROM v "
        "WHERE sample_id NOT IN (SELECT sample_id FROM bad) GROUP BY label, checkpoint ORDER BY label, checkpoint"
    )
    return con


# --- guarding writes ---------------------------------------------------------------------
def _inside(path: Path, root: Path) -> bool:
    return path.expanduser().resolve().is_relative_to(root.resolve())


def copy_target(statement: str) -> str | None:
    """The path a ``COPY ... TO 'path'`` statement writes to (None for ``COPY ... FROM``)."""
    import duckdb

    tokens = duckdb.tokenize(statement)
    depth, seen_to = 0, False
    for i, (offset, kind) in enumerate(tokens):
        end = tokens[i + 1][0] if i + 1 < len(tokens) else len(statement)
        text = statement[offset:end].strip()
        if seen_to:
            if kind != duckdb.token_type.string_const:
                raise SqlError(
                    "COPY ... TO: give the target as a literal 'path' so it can be checked"
                )
            return text.rstrip(";").strip()[1:-1].replace("''", "'")
        if kind == duckdb.token_type.operator:
            depth += text.count("(") - text.count(")")
        elif depth == 0 and kind == duckdb.token_type.keyword and text.upper() == "TO":
            seen_to = True
    return None


def check_statements(con: Any, query: str, lake: Lake) -> list[Any]:
    """Parse ``query`` into statements; refuse any that would write inside the lake."""
    import duckdb

    try:
        statements = con.extract_statements(query)
    except duckdb.Error as exc:
        raise SqlError(f"SQL: {first_line(exc)}") from exc
    if not statements:
        raise SqlError("SQL: empty query; give a statement such as SELECT count(*) FROM samples")
    for st in statements:
        kind = st.type.name
        if kind in REFUSED_STATEMENTS:
            raise SqlError(
                f"SQL: {kind} is not allowed in cld-lake sql (it could write files); use COPY ... TO or --out"
            )
        if kind == "COPY":
            target = copy_target(st.query)
            if target is not None:
                check_out_path(Path(target), lake, what="COPY ... TO")
    return statements


def check_out_path(out: Path, lake: Lake, what: str = "--out") -> None:
    """Refuse an output path inside the lake or whose directory does not exist."""
    if _inside(out, lake.path):
        raise SqlError(
            f"{what} {out}: inside the lake {lake.path}; the lake is only written by cld-lake, write elsewhere"
        )
    parent = out.expanduser().parent
    if not parent.exists():
        raise BadInputError(f"{what} {out}: directory {parent} does not exist; create it first")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _run(con: Any, statements: list[Any], last: bool = True) -> Any:
    """Run every statement but the last; return the relation of the last (None if it has none).

    With ``last=False`` the last statement is left to the caller.
    """
    import duckdb

    try:
        for st in statements[:-1]:
            con.execute(st.query)
        return con.sql(statements[-1].query) if last else None
    except duckdb.Error as exc:
        raise SqlError(f"SQL: {first_line(exc)}") from exc


# --- public entry points -----------------------------------------------------------------
def query(lake: Lake | str | os.PathLike[str], sql: str, lazy: bool = False) -> Any:
    """Run ``sql`` over the lake's views.

    Returns a Polars DataFrame, or with ``lazy=True`` the DuckDB relation (not yet run; its
    connection stays open while the relation lives). Raises :class:`SqlError` for a query
    DuckDB rejects or one that would write inside the lake.

    Examples
    --------
    >>> lake.sql("SELECT label, count(*) AS n FROM samples WHERE split = 'train' GROUP BY label")  # doctest: +SKIP
    """
    import duckdb

    lake = _as_lake(lake)
    con = connect(lake)
    try:
        rel = _run(con, check_statements(con, sql, lake))
        if lazy:
            return rel
        if rel is None:
            return None
        return rel.pl()
    except duckdb.Error as exc:
        raise SqlError(f"SQL: {first_line(exc)}") from exc
    finally:
        if not lazy:
            con.close()


def write_query(
    lake: Lake | str | os.PathLike[str],
    sql: str,
    out: str | os.PathLike[str],
    stats: ScanStats | None = None,
) -> int:
    """Stream the result of ``sql`` to ``out`` (.parquet, .csv or .json); return the row count.

    The file appears atomically: an interrupted run leaves no partial file under ``out``.
    """
    import duckdb

    from cld_lake._io import atomic_path

    lake = _as_lake(lake)
    out = Path(out)
    fmt_name = OUT_FORMATS.get(out.suffix.lower())
    if fmt_name is None:
        raise BadInputError(
            f"--out {out}: unknown format {out.suffix!r}; use .parquet, .csv or .json"
        )
    check_out_path(out, lake)
    con = connect(lake, stats=stats)
    try:
        statements = check_statements(con, sql, lake)
        if statements[-1].type.name not in ("SELECT", "EXPLAIN"):
            raise SqlError(
                f"--out needs a query returning rows (a SELECT); got {statements[-1].type.name}"
            )
        _run(con, statements, last=False)
        last = statements[-1].query.strip().rstrip(";")
        options = "FORMAT JSON, ARRAY true" if fmt_name == "JSON" else f"FORMAT {fmt_name}"
        try:
            with atomic_path(out) as tmp:
                rows = con.execute(f"COPY ({last}) TO {sql_str(tmp)} ({options})").fetchone()[0]
        except duckdb.Error as exc:
            raise SqlError(f"SQL: {first_line(exc)}") from exc
        return int(rows)
    finally:
        con.close()


def iter_result(
    lake: Lake | str | os.PathLike[str], sql: str, batch_rows: int = 65536
) -> Iterator[Any]:
    """Yield the schema, then the result of ``sql`` as Arrow record batches (bounded memory).

    A statement without a result (``SET``, ``CREATE``...) yields nothing after ``None``.
    """
    lake = _as_lake(lake)
    con = connect(lake)
    try:
        rel = _run(con, check_statements(con, sql, lake))
        if rel is None:
            yield None
            return
        reader = rel.to_arrow_reader(batch_rows)
        yield reader.schema
        yield from reader
    finally:
        con.close()


def format_table(
    lake: Lake | str | os.PathLike[str], sql: str, max_rows: int = 40, max_width: int = 32
) -> str:
    """The result of ``sql`` as an aligned text table: the first and last rows when there are
    more than ``max_rows``, cells cut at ``max_width`` characters, and the row count."""
    from collections import deque

    import duckdb

    head_n = max(1, (max_rows + 1) // 2)
    tail_n = max(0, max_rows - head_n)
    results = iter_result(lake, sql)
    try:
        schema = next(results)
        if schema is None:
            return "ok"
        head: list[tuple[Any, ...]] = []
        tail: deque[tuple[Any, ...]] = deque(maxlen=tail_n or 1)
        total = 0
        for batch in results:
            cols = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
            for row in zip(*cols, strict=True) if cols else ([()] * batch.num_rows):
                if len(head) < head_n:
                    head.append(row)
                elif tail_n:
                    tail.append(row)
                total += 1
    except duckdb.Error as exc:
        raise SqlError(f"SQL: {first_line(exc)}") from exc
    finally:
        results.close()
    names = list(schema.names)
    types = [str(t) for t in schema.types]
    body = [[_cell(v, max_width) for v in row] for row in head]
    shown = len(head) + (len(tail) if tail_n else 0)
    gap = total > shown
    tail_rows = [[_cell(v, max_width) for v in row] for row in (tail if tail_n else [])]
    widths = [
        max([len(n), len(t)] + [len(r[i]) for r in body + tail_rows])
        for i, (n, t) in enumerate(zip(names, types, strict=True))
    ]
    numeric = [t.startswith(("int", "uint", "float", "double", "decimal")) for t in types]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    out = [line(names), line(types), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in body]
    if gap:
        out.append("  ".join("…".center(w) for w in widths).rstrip())
    out += [line(r) for r in tail_rows]
    noun = "row" if total == 1 else "rows"
    out.append(f"({total:,} {noun}{f', {shown} shown' if gap else ''})")
    return "\n".join(out)


def _cell(value: Any, max_width: int) -> str:
    text = "NULL" if value is None else (f"{value:.6g}" if isinstance(value, float) else str(value))
    text = " ".join(text.split()) if "\n" in text else text
    return text if len(text) <= max_width else text[: max_width - 1] + "…"
