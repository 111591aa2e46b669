"""Writing one version of the scores table: the old columns carried over, the new ones added,
checksums computed as the row groups stream; and the rule that keeps every stored score: a
table's rows are one set of training samples, and a score of another set is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from cld_lake._io import row_group_batches
from cld_lake._meta import meta_bytes, read_meta
from cld_lake.errors import CorruptLakeError, ScoringError, one_line
from cld_lake.lake._scores_checks import ColumnCheck, ColumnChecksums, footer, footer_record
from cld_lake.lake._validate import RESERVED_SCORE_NAMES
from cld_lake.lake.store import Split

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cld_lake.storage import StorePath

# rows [start, stop) of a score column
ScoreReader = Callable[[int, int], np.ndarray]

RESERVED = RESERVED_SCORE_NAMES
_READ_ROWS = 1 << 16  # rows per batch when ids or labels are compared
# Scores are random-looking doubles: dictionary encoding and general compression buy little
# and cost most of the write time; ids and labels compress well with lz4.
WRITE_OPTIONS = {"compression": "lz4", "use_dictionary": ["label"], "write_statistics": False}


def array_reader(values: np.ndarray) -> ScoreReader:
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


# --- which rows a table holds ------------------------------------------------------------------
def rows_fit(old: pq.ParquetFile, path: StorePath, train: Split) -> bool:
    """Can a score of ``train`` go into the table ``old`` (at ``path``) without dropping any of
    its scores? True when the table holds the train split's rows (ids and labels) in order;
    False when it holds the same samples with the same labels in another order (its columns
    are then carried over by sample id). Anything else (other samples, other labels) is a
    :class:`ScoringError` naming the run, both sample sets and what to do."""
    fix = train.lake.fix
    rows = read_meta(old.schema_arrow).get("rows")
    rows = rows if isinstance(rows, dict) else {}
    try:
        n = old.metadata.num_rows
        if n == train.num_samples and _same_ids_in_order(old, rows, train):
            if rows.get("run") == train.run or _same_labels_in_order(old, train):
                return True
            raise _other_samples(old, train, "the same sample ids with other labels")
        if n == train.num_samples and _same_set(old, train):
            return False
    except (CorruptLakeError, ScoringError):
        raise
    except Exception as exc:
        raise CorruptLakeError(f"{path}: unreadable ({one_line(exc)}); {fix}") from exc
    raise _other_samples(old, train, None)


def _same_ids_in_order(old: pq.ParquetFile, rows: dict[str, Any], train: Split) -> bool:
    """O(1) when both carry the fingerprint of the sample ids recorded at the split's
    creation; otherwise the ids are compared batch by batch."""
    recorded = rows.get("ids_sha1")
    if recorded is not None and train.ids_digest is not None:
        return bool(recorded == train.ids_digest)
    return _same_column_in_order(old, train, "sample_id")


def _same_labels_in_order(old: pq.ParquetFile, train: Split) -> bool:
    return _same_column_in_order(old, train, "label")


def _same_column_in_order(old: pq.ParquetFile, train: Split, column: str) -> bool:
    """Is the table's ``column`` (``sample_id`` or ``label``) the split's, row for row?"""
    which = 0 if column == "sample_id" else 1
    pos = 0
    for batch in row_group_batches(old, [column], _READ_ROWS):
        part = batch.column(0).to_numpy()
        if not np.array_equal(part, train.sample_rows(pos, pos + len(part))[which]):
            return False
        pos += len(part)
    return True


def _same_set(old: pq.ParquetFile, train: Split) -> bool:
    """The same (sample id, label) pairs in another order? (Both sorted by id, in memory:
    16 bytes per row of each, only when the orders differ.)"""
    table = old.read(columns=["sample_id", "label"])
    ids = table.column("sample_id").to_numpy()
    labels = table.column("label").to_numpy()
    mine = [np.concatenate(p) if p else np.zeros(0, np.int64) for p in _split_columns(train)]
    a, b = np.argsort(ids, kind="stable"), np.argsort(mine[0], kind="stable")
    return bool(np.array_equal(ids[a], mine[0][b]) and np.array_equal(labels[a], mine[1][b]))


def _split_columns(train: Split) -> tuple[list[np.ndarray], list[np.ndarray]]:
    ids, labels = [], []
    for part_ids, part_labels in train.iter_samples():
        ids.append(part_ids)
        labels.append(part_labels)
    return ids, labels


def _other_samples(old: pq.ParquetFile, train: Split, how: str | None) -> ScoringError:
    """The one line refusing a score of ``train`` for a table of other rows."""
    ids = old.read(columns=["sample_id"]).column(0).to_numpy()
    rows = read_meta(old.schema_arrow).get("rows")
    owner = rows.get("run") if isinstance(rows, dict) else None
    theirs = _describe(ids) + (f", scored from run {owner!r}" if owner else "")
    mine = [np.concatenate(p) if p else np.zeros(0, np.int64) for p in _split_columns(train)][0]
    differ = how or "other samples"
    return ScoringError(
        f"{train.lake.root}: run {train.run!r} trains on {differ} ({_describe(mine)}) than the "
        f"lake's scores table ({theirs}); one lake's scores share one set of training samples "
        f"and storing this score would drop the others: score run {train.run!r} in a lake of "
        "its own (cld-lake export its splits, cld-lake import them into a new lake) or compute "
        "it without storing it (Python: store=False)"
    )


def _describe(ids: np.ndarray) -> str:
    if not len(ids):
        return "no samples"
    return f"{len(ids):,} samples, ids {int(ids.min())}..{int(ids.max())}"


# --- writing -------------------------------------------------------------------------------------
def _metadata(
    old_schema: pa.Schema | None,
    provenance: Mapping[str, dict[str, Any]],
    train: Split,
    version: dict[str, Any] | None,
) -> dict[bytes, bytes]:
    meta = read_meta(old_schema) if old_schema is not None else {}
    scores_meta = dict(meta.get("scores", {}))
    scores_meta.update(provenance)
    meta["scores"] = scores_meta
    meta["rows"] = {
        "split": train.name,
        "run": train.run,
        "num_rows": train.num_samples,
        "ids_sha1": train.ids_digest,
    }
    if version is not None:  # which version of the table this is (the root record's seq)
        meta["table"] = version
    else:
        meta.pop("table", None)
    return meta_bytes(meta)


def write_table(
    path: StorePath,
    old: pq.ParquetFile | None,
    train: Split,
    readers: Mapping[str, ScoreReader],
    provenance: Mapping[str, dict[str, Any]],
    *,
    aligned: bool,
    version: dict[str, Any] | None,
    batch_rows: int,
) -> dict[str, Any]:
    """Write the table at ``path`` in row groups of ``batch_rows``: the train split's rows,
    ``old``'s columns (checked as they are read) and the ``readers``' columns (added or
    replacing). ``aligned``: ``old`` holds the train rows in order (streamed, one row group at
    a time), else its columns are carried over by sample id. Returns the checksums recorded
    in the new table's footer."""
    if old is None or aligned:
        return _write_streamed(path, old, train, readers, provenance, version, batch_rows)
    return _write_realigned(path, old, train, readers, provenance, version, batch_rows)


def _write_streamed(
    path: StorePath,
    old: pq.ParquetFile | None,
    train: Split,
    readers: Mapping[str, ScoreReader],
    provenance: Mapping[str, dict[str, Any]],
    version: dict[str, Any] | None,
    batch_rows: int,
) -> dict[str, Any]:
    """The old table (if any) holds the train rows in order: copy it row group by row group.

    Memory is one row group of the table (``batch_rows`` rows), whatever the number of rows.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    old_columns = [c for c in old.schema_arrow.names if c not in RESERVED] if old else []
    columns = old_columns + [n for n in readers if n not in old_columns]
    fields = [pa.field("sample_id", pa.int64()), pa.field("label", pa.int64())]
    fields += [pa.field(c, pa.float64()) for c in columns]
    schema = pa.schema(
        fields, metadata=_metadata(old.schema_arrow if old else None, provenance, train, version)
    )
    n = train.num_samples
    starts = list(range(0, n, batch_rows)) or [0]
    copy_old = [c for c in old_columns if c not in readers]
    same_groups = (
        old is not None
        and old.metadata.num_row_groups == len(starts)
        and all(
            old.metadata.row_group(i).num_rows == min(batch_rows, n - a)
            for i, a in enumerate(starts)
        )
    )
    old_batches = (
        _exact_batches(row_group_batches(old, copy_old, batch_rows), batch_rows)
        if old is not None and copy_old and not same_groups
        else None
    )
    sums = ColumnChecksums(schema)
    # the old columns copied over are checked as they are read, before the new table
    # replaces the old one: a damaged scores table is not silently carried forward
    old_check = ColumnCheck(train.lake, old, copy_old) if old is not None else None
    with path.put_file() as tmp, pq.ParquetWriter(tmp, schema, **WRITE_OPTIONS) as writer:
        for i, a in enumerate(starts):
            b = min(a + batch_rows, n)
            if not copy_old:
                batch = None
            elif same_groups:
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
        writer.add_key_value_metadata(footer(schema.metadata, sums))
    return footer_record(schema.metadata, sums)


def _exact_batches(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Re-cut record batches (which may end early at row-group ends) to exactly ``rows``."""
    import pyarrow as pa

    pending: list[pa.RecordBatch] = []
    size = 0
    for batch in batches:
        pending.append(batch)
        size += batch.num_rows
        while size >= rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, rows)
            rest = table.slice(rows)
            pending, size = rest.to_batches(), rest.num_rows
    if size:
        yield pa.Table.from_batches(pending)


def _write_realigned(
    path: StorePath,
    old_file: pq.ParquetFile,
    train: Split,
    readers: Mapping[str, ScoreReader],
    provenance: Mapping[str, dict[str, Any]],
    version: dict[str, Any] | None,
    batch_rows: int,
) -> dict[str, Any]:
    """The old table holds the train samples in another order: carry its scores over by
    sample_id (every row finds its sample: :func:`rows_fit` checked the sets are equal)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = train.sample_ids
    old = old_file.read()
    check = ColumnCheck(train.lake, old_file, old.schema.names)
    check.update(old)
    check.verify()
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
    meta = _metadata(old.schema, provenance, train, version)
    table = table.replace_schema_metadata(meta)
    sums = ColumnChecksums(table.schema)
    sums.update(table)
    with path.put_file() as tmp, pq.ParquetWriter(tmp, table.schema, **WRITE_OPTIONS) as writer:
        writer.write_table(table, row_group_size=batch_rows)
        writer.add_key_value_metadata(footer(meta, sums))
    return footer_record(meta, sums)
