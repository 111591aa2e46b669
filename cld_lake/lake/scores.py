"""The scores table ``LAKE/scores.parquet``: its one reader and writer.

The table has one row per training sample (``sample_id, label`` in the train split's row
order) and one column per stored score; the Parquet key-value metadata ``cld_lake`` holds
``{"scores": {name: provenance}, "rows": {...}}``. Scoring stores a column with
:func:`store_score` (atomic replace); ``info``, ``select``, ``report`` and the SQL view read it
through :func:`stored_scores` and :func:`read_scores`.

An undefined score (NaN in the NumPy column scoring produces) is stored as null, so SQL
orderings put it last (``ORDER BY cld DESC`` in DuckDB) and aggregates skip it. Readers that
need NumPy get NaN back: Arrow's ``to_numpy`` turns a null float into NaN.

Integrity: the table is streamed (it is never whole in memory), so its checksums are computed
as the row groups are written and stored at the end, in the footer key ``cld_lake.checksum``:
a CRC32C of the ``cld_lake`` JSON and one per column (the canonical content of
:class:`cld_lake._meta.TableChecksum`). A reader checks the JSON and exactly the columns it
reads; ``verify`` and the SQL view check every column, streaming. In a checksummed lake
(format 2) a table without that key is refused. No Parquet statistics are written, so no
reader can skip rows on bytes the checksums do not cover.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from cld_lake._io import parquet_file, row_group_batches
from cld_lake._meta import (
    META_KEY,
    TableChecksum,
    canonical_json,
    crc32c_hex,
    meta_bytes,
    read_meta,
)
from cld_lake._types import Direction, choices
from cld_lake.errors import BadInputError, CorruptLakeError, one_line
from cld_lake.lake import _format as fmt
from cld_lake.lake._validate import RESERVED_SCORE_NAMES, check_case_clash
from cld_lake.lake._validate import check_score_name as check_score_name  # its users' name
from cld_lake.lake.store import Lake, Split, lock_root
from cld_lake.storage import StorePath

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

# rows [start, stop) of a score column
ScoreReader = Callable[[int, int], np.ndarray]

RESERVED = RESERVED_SCORE_NAMES
BATCH_ROWS = 1 << 16
DIRECTIONS = choices(Direction)


def score_direction(provenance: Mapping[str, Any]) -> Direction:
    """What a higher value of a stored score means, from its provenance: ``"higher_keep"``
    (more worth keeping, e.g. CLD) or ``"higher_harder"`` (harder, e.g. forgetting counts).

    A score stored before directions were recorded has none and is ``higher_keep``; a
    direction this version does not know (a newer cld_lake wrote it) is refused, since
    reading it the wrong way round would select the opposite end.
    """
    direction = provenance.get("direction", "higher_keep")
    if direction not in DIRECTIONS:
        raise BadInputError(
            f"score provenance has direction {direction!r}; expected one of "
            f"{', '.join(DIRECTIONS)} (recompute the score with this version of cld_lake)"
        )
    return direction  # type: ignore[no-any-return]


def scores_path(lake: Lake) -> StorePath:
    """Where the scores table of ``lake`` lives."""
    return lake.root / fmt.SCORES_FILE


CHECKSUMS_KEY = b"cld_lake.checksum"


def open_scores_file(lake: Lake) -> pq.ParquetFile:
    """The scores table as a ``pyarrow.parquet.ParquetFile``, its ``cld_lake`` JSON checked
    against its recorded CRC32C; read its columns through a :class:`ColumnCheck`."""
    path = scores_path(lake)
    try:
        pf = parquet_file(path)
    except Exception as exc:  # a damaged footer
        raise CorruptLakeError(f"{path}: unreadable ({one_line(exc)}); {lake.fix}") from exc
    recorded = _recorded_checksums(pf)
    if recorded is None:
        if lake.checksummed:
            raise CorruptLakeError(f"{path} fails its checksum (none recorded); {lake.fix}")
        return pf
    # the JSON is in the footer and again inside pyarrow's schema copy: both must match
    footer = {META_KEY: (pf.metadata.metadata or {}).get(META_KEY, b"")}
    for meta in (read_meta(pf.schema_arrow), read_meta(_Schema(footer))):
        if recorded.get("meta") != crc32c_hex(canonical_json(meta)):
            raise CorruptLakeError(f"{path} fails its checksum (metadata); {lake.fix}")
    return pf


class _Schema:
    """Just enough of a schema for :func:`read_meta`: its key-value metadata."""

    def __init__(self, metadata: dict[bytes, bytes]) -> None:
        self.metadata = metadata


def _recorded_checksums(pf: pq.ParquetFile) -> dict[str, Any] | None:
    raw = (pf.metadata.metadata or {}).get(CHECKSUMS_KEY)
    try:
        recorded = json.loads(raw) if raw is not None else None
    except ValueError:
        return {}  # present but damaged: every comparison fails
    return recorded if isinstance(recorded, dict) else ({} if raw is not None else None)


class _ColumnChecksums:
    """One :class:`TableChecksum` per column, fed row group by row group."""

    def __init__(self, schema: pa.Schema, names: list[str] | None = None) -> None:
        import pyarrow as pa

        wanted = schema.names if names is None else names
        self._sums = {
            n: (pa.schema([schema.field(n)]), TableChecksum(pa.schema([schema.field(n)])))
            for n in wanted
        }

    def update(self, part: pa.Table) -> None:
        import pyarrow as pa

        for name, (schema, acc) in self._sums.items():
            acc.update(pa.Table.from_arrays([part.column(name)], schema=schema))

    def values(self) -> dict[str, str]:
        return {name: acc.value({}) for name, (_, acc) in self._sums.items()}


class ColumnCheck:
    """The checksums of ``columns`` of the scores table ``pf`` (opened by
    :func:`open_scores_file`): :meth:`update` with each row group (or span of them) as it is
    read, :meth:`verify` once every row has been; :class:`CorruptLakeError` when one differs
    from what the table recorded. A table without checksums (format 1) checks nothing."""

    def __init__(self, lake: Lake, pf: pq.ParquetFile, columns: list[str] | None = None) -> None:
        self._lake = lake
        self._recorded = _recorded_checksums(pf)
        self._sums = (
            _ColumnChecksums(pf.schema_arrow, columns) if self._recorded is not None else None
        )

    def update(self, part: pa.Table) -> None:
        if self._sums is not None:
            self._sums.update(part)

    def verify(self) -> None:
        if self._sums is not None and self._recorded is not None:
            _compare_columns(self._lake, self._recorded, self._sums)


def _footer(meta: dict[bytes, bytes], sums: _ColumnChecksums) -> dict[bytes, bytes]:
    body = json.loads(meta[b"cld_lake"])
    record = {"meta": crc32c_hex(canonical_json(body)), "columns": sums.values()}
    return {CHECKSUMS_KEY: json.dumps(record, sort_keys=True).encode()}


def _compare_columns(lake: Lake, recorded: dict[str, Any], sums: _ColumnChecksums) -> None:
    """Each column ``sums`` covers has the CRC the table recorded for it."""
    expected = recorded.get("columns") if isinstance(recorded.get("columns"), dict) else {}
    for name, value in sums.values().items():
        if expected.get(name) != value:
            raise CorruptLakeError(
                f"{scores_path(lake)} fails its checksum (column {name!r}); {lake.fix}"
            )


def check_scores_file(lake: Lake) -> None:
    """Check every column of the scores table, one row group at a time (bounded memory).

    Raises :class:`CorruptLakeError` (one line) when anything differs from what was recorded.
    """
    if not scores_path(lake).exists():
        return
    pf = open_scores_file(lake)
    recorded = _recorded_checksums(pf)
    if recorded is None:
        return
    sums = _ColumnChecksums(pf.schema_arrow)
    try:
        for g in range(pf.metadata.num_row_groups):
            sums.update(pf.read_row_group(g))
    except Exception as exc:
        raise CorruptLakeError(
            f"{scores_path(lake)}: unreadable ({one_line(exc)}); {lake.fix}"
        ) from exc
    expected = recorded.get("columns") if isinstance(recorded.get("columns"), dict) else {}
    if sums.values() != expected:
        raise CorruptLakeError(f"{scores_path(lake)} fails its checksum (columns); {lake.fix}")


def stored_scores(lake: Lake) -> dict[str, dict[str, Any]]:
    """Name -> provenance of every stored score, in column order; ``{}`` before any score."""
    path = scores_path(lake)
    if not path.exists():
        return {}
    schema = open_scores_file(lake).schema_arrow
    provenance = read_meta(schema).get("scores", {})
    if not isinstance(provenance, dict):
        provenance = {}
    return {
        name: provenance.get(name, {}) if isinstance(provenance.get(name, {}), dict) else {}
        for name in schema.names
        if name not in RESERVED
    }


def read_scores(lake: Lake, columns: list[str] | None = None) -> pa.Table | None:
    """``sample_id, label`` and the score ``columns`` (default: all) as a pyarrow Table, or
    None when nothing is scored yet. Undefined scores are null (``to_numpy`` gives NaN)."""
    path = scores_path(lake)
    if not path.exists():
        return None
    pf = open_scores_file(lake)
    wanted = None if columns is None else ["sample_id", "label", *columns]
    try:
        table = pf.read(columns=wanted)
    except Exception as exc:
        raise CorruptLakeError(f"{path}: unreadable ({one_line(exc)}); {lake.fix}") from exc
    check = ColumnCheck(lake, pf, table.schema.names)
    check.update(table)
    check.verify()
    return table


def store_score(
    lake: Lake,
    train: Split,
    name: str,
    scores: np.ndarray | ScoreReader,
    provenance: dict[str, Any],
) -> None:
    """Add or replace column ``name`` of the scores table, with its provenance.

    The new file is streamed in row batches next to the old one and renamed over it
    (atomic); memory is one batch of the table, not the whole table. ``scores`` is the column
    (an array, NaN where undefined) or a function ``read(start, stop)`` returning rows of it;
    NaN is stored as null.
    """
    store_scores(lake, train, {name: scores}, {name: provenance})


def store_scores(
    lake: Lake,
    train: Split,
    columns: Mapping[str, np.ndarray | ScoreReader],
    provenance: Mapping[str, dict[str, Any]],
) -> None:
    """Add or replace several columns at once (one rewrite of the table): ``columns`` maps
    each name to its scores as in :func:`store_score`, ``provenance`` each name to its own."""
    readers = {
        name: scores if callable(scores) else _array_reader(np.asarray(scores, dtype=np.float64))
        for name, scores in columns.items()
    }
    path = scores_path(lake)
    with lock_root(lake.root):  # read-modify-write: one scorer at a time
        stored = list(stored_scores(lake)) if path.exists() else []
        for name in readers:
            check_case_clash("score", name, stored, "name")
        if path.exists() and not _same_rows(path, train):
            _store_realigned(path, train, readers, provenance)
        else:
            _store_streamed(path, train, readers, provenance)


def _array_reader(values: np.ndarray) -> ScoreReader:
    return lambda a, b: values[a:b]


def _nullable(values: np.ndarray) -> pa.Array:
    """A float64 score array with null where the value is NaN (undefined)."""
    import pyarrow as pa

    values = np.asarray(values, dtype=np.float64)
    return pa.array(values, type=pa.float64(), mask=np.isnan(values))


def _nan_to_null(column: pa.Array) -> pa.Array:
    """A stored score column as float64 with NaN (files of older versions) turned into null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.cast(pa.float64())
    return pc.if_else(pc.is_nan(column), pa.scalar(None, pa.float64()), column)


def _same_rows(path: StorePath, train: Split) -> bool:
    """Does the old scores file hold the train split's rows, in order?

    O(1) when both carry the fingerprint of the sample ids recorded at the split's creation;
    otherwise the ids are compared batch by batch.
    """
    pf = parquet_file(path)
    if pf.metadata.num_rows != train.num_samples:
        return False
    recorded = read_meta(pf.schema_arrow).get("rows", {}).get("ids_sha1")
    if recorded is not None and train.ids_digest is not None:
        return bool(recorded == train.ids_digest)
    pos = 0
    for batch in row_group_batches(pf, ["sample_id"], BATCH_ROWS):
        part = batch.column(0).to_numpy()
        ids, _ = train.sample_rows(pos, pos + len(part))
        if not np.array_equal(part, ids):
            return False
        pos += len(part)
    return True


def _metadata(
    old_schema: pa.Schema | None, provenance: Mapping[str, dict[str, Any]], train: Split
) -> dict[bytes, bytes]:
    meta = read_meta(old_schema) if old_schema is not None else {}
    scores_meta = dict(meta.get("scores", {}))
    scores_meta.update(provenance)
    meta["scores"] = scores_meta
    meta["rows"] = {
        "split": train.name,
        "num_rows": train.num_samples,
        "ids_sha1": train.ids_digest,
    }
    return meta_bytes(meta)


# Scores are random-looking doubles: dictionary encoding and general compression buy little
# and cost most of the write time; ids and labels compress well with lz4.
WRITE_OPTIONS = {"compression": "lz4", "use_dictionary": ["label"], "write_statistics": False}


def _store_streamed(
    path: StorePath,
    train: Split,
    readers: Mapping[str, ScoreReader],
    provenance: Mapping[str, dict[str, Any]],
) -> None:
    """The old file (if any) holds the train rows in order: copy it row group by row group.

    Memory is one row group of the table (``BATCH_ROWS`` rows), whatever the number of rows.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    old = open_scores_file(train.lake) if path.exists() else None
    old_columns = [c for c in old.schema_arrow.names if c not in RESERVED] if old else []
    columns = old_columns + [n for n in readers if n not in old_columns]
    fields = [pa.field("sample_id", pa.int64()), pa.field("label", pa.int64())]
    fields += [pa.field(c, pa.float64()) for c in columns]
    schema = pa.schema(
        fields, metadata=_metadata(old.schema_arrow if old else None, provenance, train)
    )
    n = train.num_samples
    starts = list(range(0, n, BATCH_ROWS)) or [0]
    copy_old = [c for c in old_columns if c not in readers]
    aligned = (
        old is not None
        and old.metadata.num_row_groups == len(starts)
        and all(
            old.metadata.row_group(i).num_rows == min(BATCH_ROWS, n - a)
            for i, a in enumerate(starts)
        )
    )
    old_batches = (
        _exact_batches(row_group_batches(old, copy_old, BATCH_ROWS))
        if old is not None and copy_old and not aligned
        else None
    )
    sums = _ColumnChecksums(schema)
    # the old columns copied over are checked as they are read, before the new table
    # replaces the old one: a damaged scores table is not silently carried forward
    old_check = ColumnCheck(train.lake, old, copy_old) if old is not None else None
    with path.put_file() as tmp, pq.ParquetWriter(tmp, schema, **WRITE_OPTIONS) as writer:
        for i, a in enumerate(starts):
            b = min(a + BATCH_ROWS, n)
            if not copy_old:
                batch = None
            elif aligned:
                batch = old.read_row_group(i, columns=copy_old)
            else:
                batch = next(old_batches)
            ids, labels = train.sample_rows(a, b)
            arrays = [pa.array(ids, pa.int64()), pa.array(labels, pa.int64())]
            for column in columns:
                if column in readers:
                    arrays.append(_nullable(readers[column](a, b)))
                else:
                    arrays.append(_nan_to_null(batch.column(column).combine_chunks()))
            part = pa.Table.from_arrays(arrays, schema=schema)
            if batch is not None and old_check is not None:
                old_check.update(batch)
            sums.update(part)
            writer.write_table(part)  # one row group
        if old_check is not None and copy_old:
            old_check.verify()
        writer.add_key_value_metadata(_footer(schema.metadata, sums))


def _exact_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.Table]:
    """Re-cut record batches (which may end early at row-group ends) to exactly BATCH_ROWS."""
    import pyarrow as pa

    pending: list[pa.RecordBatch] = []
    size = 0
    for batch in batches:
        pending.append(batch)
        size += batch.num_rows
        while size >= BATCH_ROWS:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, BATCH_ROWS)
            rest = table.slice(BATCH_ROWS)
            pending, size = rest.to_batches(), rest.num_rows
    if size:
        yield pa.Table.from_batches(pending)


def _store_realigned(
    path: StorePath,
    train: Split,
    readers: Mapping[str, ScoreReader],
    provenance: Mapping[str, dict[str, Any]],
) -> None:
    """The train split's rows differ from the old file's: carry old scores over by sample_id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = train.sample_ids
    old = read_scores(train.lake)
    rows = train.rows_of(old.column("sample_id").to_numpy())
    keep = rows >= 0
    table = pa.table(
        {"sample_id": pa.array(ids, pa.int64()), "label": pa.array(train.labels, pa.int64())}
    )
    for column in old.column_names:
        if column in RESERVED:
            continue
        if column in readers:
            table = table.append_column(column, _nullable(readers[column](0, len(ids))))
            continue
        carried = np.full(len(ids), np.nan)
        carried[rows[keep]] = old.column(column).to_numpy(zero_copy_only=False)[keep]
        table = table.append_column(column, _nullable(carried))
    for name, read in readers.items():
        if name not in table.column_names:
            table = table.append_column(name, _nullable(read(0, len(ids))))
    meta = _metadata(old.schema, provenance, train)
    table = table.replace_schema_metadata(meta)
    sums = _ColumnChecksums(table.schema)
    sums.update(table)
    with path.put_file() as tmp, pq.ParquetWriter(tmp, table.schema, **WRITE_OPTIONS) as writer:
        writer.write_table(table, row_group_size=BATCH_ROWS)
        writer.add_key_value_metadata(_footer(meta, sums))


def stale_scores(lake: Lake) -> dict[str, str]:
    """Stored scores computed over other checkpoints than they would be now: name -> reason.

    A score's provenance records the checkpoint ids it used (``checkpoint_ids``), the window
    asked for (``window``, None = all) and, optionally, the splits it read (``splits``,
    default train and val). It is stale when that window over the checkpoints now committed
    in all of those splits picks other checkpoints, e.g. after checkpoints were appended.
    Scores without recorded checkpoint ids are not judged. ``select``, ``report`` and ``info``
    warn with the reason; nothing is refused.
    """
    import functools

    from cld_lake.errors import BadInputError
    from cld_lake.lake.store import parse_window

    stale: dict[str, str] = {}
    committed: dict[tuple[str, ...], np.ndarray] = {}
    for name, prov in stored_scores(lake).items():
        used = prov.get("checkpoint_ids")
        splits = tuple(prov.get("splits") or ("train", "val"))
        run = str(prov.get("run") or fmt.DEFAULT_RUN)  # an ensemble's runs are not judged
        if not isinstance(used, list) or not all(lake.has_split(s, run) for s in splits):
            continue
        if (run, *splits) not in committed:
            ids = (lake.split(s, run).checkpoint_ids for s in splits)
            committed[(run, *splits)] = functools.reduce(np.intersect1d, ids)
        window = prov.get("window")
        try:
            now = committed[(run, *splits)][parse_window(window) if window else slice(None)]
        except BadInputError:
            continue
        if [int(c) for c in now] == [int(c) for c in used]:
            continue
        window_arg = f" --checkpoints {window}" if window else ""
        stale[name] = (
            f"computed over {_span(used)}, but {' and '.join(splits)} now give {_span(now)}; "
            f"recompute it: cld-lake score {lake.root} --method {prov.get('method', name)} "
            f"--name {name}{window_arg}{'' if run == fmt.DEFAULT_RUN else f' --run {run}'}"
        )
    return stale


def _span(ids: Any) -> str:
    """``5 checkpoints (0..4)`` for a list of checkpoint ids."""
    ids = [int(c) for c in ids]
    ends = f" ({ids[0]}..{ids[-1]})" if ids else ""
    return f"{len(ids)} checkpoint{'s' if len(ids) != 1 else ''}{ends}"


def iter_scores(lake: Lake, columns: list[str]) -> Iterator[pa.Table]:
    """:func:`read_scores` one row group at a time: ``sample_id, label`` and ``columns``.

    Memory is one row group, whatever the number of rows. The JSON is checked before the
    first group; the columns' checksums after the last one has been read (and before the
    iterator ends, raising :class:`CorruptLakeError`), so a consumer that reads to the end has
    checked everything it used. Nothing when no scores table exists.
    """
    path = scores_path(lake)
    if not path.exists():
        return
    pf = open_scores_file(lake)
    wanted = ["sample_id", "label", *columns]
    try:
        check = ColumnCheck(lake, pf, wanted)
    except KeyError as exc:
        raise CorruptLakeError(f"{path}: unreadable (no column {exc}); {lake.fix}") from exc
    for g in range(pf.metadata.num_row_groups):
        try:
            part = pf.read_row_group(g, columns=wanted)
        except Exception as exc:
            raise CorruptLakeError(f"{path}: unreadable ({one_line(exc)}); {lake.fix}") from exc
        check.update(part)
        yield part
    check.verify()
