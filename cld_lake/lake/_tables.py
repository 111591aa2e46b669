"""The samples and classes tables of a split: written at its creation, from whole arrays or
from :class:`SampleBlocks`, and the samples table again when metadata columns are annotated.

Both are written through a temp file and a rename, and carry their checksum in their own
metadata; ``samples.parquet`` holds row groups of one chunk (a block scan reads its ids and
labels without the whole table), each row group's CRC going into the commit record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from hashlib import sha1
from typing import TYPE_CHECKING, Any

import numpy as np

from cld_lake._meta import CHECKSUM_KEY, TableChecksum, read_meta, with_checksum, with_meta
from cld_lake.errors import BadInputError, CorruptLakeError
from cld_lake.lake import _format as fmt
from cld_lake.lake._commit import TABLE_OPTIONS, SampleTables
from cld_lake.lake._sample_blocks import SampleBlocks, checked_tables
from cld_lake.lake._validate import ids_digest
from cld_lake.lake.store import rows_checksum
from cld_lake.storage import StorePath

if TYPE_CHECKING:
    import pyarrow as pa

SAMPLES_TABLE_META = {"table": "samples"}
CLASSES_TABLE_META = {"table": "classes"}

# Fixes the lake's class count for a new split from its labels (all, or their least and
# greatest); returns the class count.
FixClassCount = Callable[[np.ndarray], int]


def write_new_samples(
    root: StorePath,
    ids: np.ndarray,
    labels: np.ndarray,
    metadata: Mapping[str, np.ndarray] | None,
    row_chunk: int,
    fix_class_count: FixClassCount,
) -> SampleTables:
    """A new split's tables from whole, checked arrays (int64 ids and labels in row order)."""
    import pyarrow as pa

    fix_class_count(labels)
    columns = {"sample_id": pa.array(ids, pa.int64()), "label": pa.array(labels, pa.int64())}
    for name, values in (metadata or {}).items():
        columns[name] = pa.array(np.asarray(values))
    counts = np.bincount(labels) if labels.size else np.zeros(0, np.int64)
    return SampleTables(
        num_samples=int(len(ids)),
        ids_sha1=ids_digest(ids),
        row_groups=write_samples_table(root, pa.table(columns), row_chunk),
        classes=write_classes(root, counts),
    )


def write_sample_blocks(
    root: StorePath,
    samples: SampleBlocks,
    row_chunk: int,
    num_classes: int | None,
    fix_class_count: FixClassCount,
) -> SampleTables:
    """A new split's tables from :class:`SampleBlocks`: a first pass checks the blocks and
    takes what the file and the record need before the rows; the second writes the rows
    (and must see the same values)."""
    scan = _scan(samples, num_classes)
    if scan is None:  # no blocks: the tables of empty arrays
        empty = np.zeros(0, np.int64)
        return write_new_samples(root, empty, empty, None, row_chunk, fix_class_count)
    present = np.flatnonzero(scan.counts)
    fix_class_count(present[[0, -1]] if len(present) else np.zeros(0, np.int64))
    checksum = scan.checksum.value(SAMPLES_TABLE_META)
    schema = with_meta(scan.schema, {**SAMPLES_TABLE_META, CHECKSUM_KEY: checksum})
    second_pass = TableChecksum(schema)

    def rows() -> Iterator[pa.Table]:
        for table in checked_tables(samples, num_classes):
            second_pass.update(table)
            yield table

    groups = _write_samples(root, schema, rows(), row_chunk)
    if second_pass.value(SAMPLES_TABLE_META) != checksum:
        raise BadInputError(
            "new_samples: blocks() gave other values on its second call; it must yield the "
            "same blocks each time it is called"
        )
    return SampleTables(
        num_samples=samples.num_rows,
        ids_sha1=scan.ids_sha1.hexdigest(),
        row_groups=groups,
        classes=write_classes(root, scan.counts),
    )


@dataclass
class _Scan:
    """What a first pass over the blocks learns: the table's schema and checksum, the class
    counts and the ids' fingerprint (as :func:`~cld_lake.lake._validate.ids_digest`)."""

    schema: pa.Schema
    checksum: TableChecksum
    counts: np.ndarray
    ids_sha1: Any  # hashlib's sha1 object


def _scan(samples: SampleBlocks, num_classes: int | None) -> _Scan | None:
    """The first pass over ``samples`` (None when it yields no block)."""
    scan: _Scan | None = None
    for table in checked_tables(samples, num_classes):
        if scan is None:
            scan = _Scan(table.schema, TableChecksum(table.schema), np.zeros(0, np.int64), sha1())
        scan.checksum.update(table)
        scan.counts = _add_counts(scan.counts, table.column("label").to_numpy())
        ids = table.column("sample_id").to_numpy()
        scan.ids_sha1.update(np.ascontiguousarray(ids, "<i8").tobytes())
    return scan


def write_samples_table(root: StorePath, table: pa.Table, row_chunk: int) -> list[list[Any]]:
    """Write the whole samples ``table`` as ``samples.parquet`` of the split at ``root``;
    return ``[rows, crc]`` of each of its row groups."""
    table = with_checksum(table, SAMPLES_TABLE_META)
    return _write_samples(root, table.schema, [table], row_chunk)


def write_classes(root: StorePath, counts: np.ndarray) -> str:
    """Write classes.parquet (samples per class present) from the count of each class;
    return its checksum."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    present = np.flatnonzero(counts)
    table = with_checksum(
        pa.table(
            {
                "label": pa.array(present, pa.int64()),
                "count": pa.array(counts[present], pa.int64()),
            }
        ),
        CLASSES_TABLE_META,
    )
    with (root / fmt.CLASSES_FILE).put_file() as tmp:
        pq.write_table(table, tmp, **TABLE_OPTIONS)
    return str(read_meta(table.schema)[CHECKSUM_KEY])


def _write_samples(
    root: StorePath, schema: pa.Schema, parts: Iterable[pa.Table], row_chunk: int
) -> list[list[Any]]:
    """samples.parquet with ``schema`` (its checksum in its metadata) from ``parts`` in order,
    in row groups of ``row_chunk`` rows; ``[rows, crc]`` of each row group."""
    import pyarrow.parquet as pq

    groups: list[list[Any]] = []
    target = root / fmt.SAMPLES_FILE
    with target.put_file() as tmp:
        with pq.ParquetWriter(tmp, schema, **TABLE_OPTIONS) as out:
            for group in _row_groups(parts, row_chunk):
                out.write_table(group, row_group_size=row_chunk)
                groups.append([group.num_rows, rows_checksum(group)])
        written = pq.ParquetFile(tmp).metadata
        if [written.row_group(g).num_rows for g in range(written.num_row_groups)] != [
            rows for rows, _ in groups
        ]:
            raise CorruptLakeError(
                f"{target}: written with other row groups than were checksummed; run the "
                "write again"
            )
    return groups


def _row_groups(parts: Iterable[pa.Table], rows: int) -> Iterator[pa.Table]:
    """The rows of ``parts`` in tables of ``rows`` rows (the last one shorter), each one
    contiguous whatever the sizes of the parts; no rows at all are one empty table (the one
    row group pyarrow writes for a whole empty table)."""
    held: list[pa.Table] = []
    count, groups = 0, 0
    empty: pa.Table | None = None
    for part in parts:
        empty = part.slice(0, 0) if empty is None else empty
        while part.num_rows:
            take = min(rows - count, part.num_rows)
            held.append(part.slice(0, take))
            part, count = part.slice(take), count + take
            if count == rows:
                yield _contiguous(held)
                held, count, groups = [], 0, groups + 1
    if count:
        yield _contiguous(held)
    elif not groups and empty is not None:
        yield empty


def _contiguous(parts: list[pa.Table]) -> pa.Table:
    import pyarrow as pa

    table = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
    if any(column.num_chunks > 1 for column in table.columns):
        table = table.combine_chunks()
    return table


def _add_counts(counts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``counts`` plus the count of each label of ``labels`` (grown to the largest label)."""
    if not labels.size:
        return counts
    more = np.bincount(labels)
    if len(more) > len(counts):
        more[: len(counts)] += counts
        return more
    counts[: len(more)] += more
    return counts
