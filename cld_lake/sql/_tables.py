"""The Parquet tables behind the ``samples``, ``checkpoints`` and ``scores`` views, streamed.

A :class:`ParquetSource` hands DuckDB one row group (only the columns a query uses) at a time,
from a local file or an object-store object alike: memory is one row group whatever the
table's size, and DuckDB never opens the lake's files itself (its sandbox keeps them out of
reach of SQL statements). Callers check the file's checksums before registering it. A table
of a lake of named groups gains a ``group_name`` column after ``label``: each batch's labels
looked up in the lake's names (so the names are never stored twice).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cached_property
from typing import Any

from cld_lake._duckdb import ScanSource
from cld_lake._io import parquet_file, row_group_batches
from cld_lake.storage import StorePath

# Rows per Arrow batch handed to DuckDB (a row group is cut into batches of this size).
BATCH_ROWS = 1 << 16


GROUP_NAME = "group_name"


class ParquetSource(ScanSource):
    """One Parquet file as a DuckDB scan source: projection pushdown, row count known; with
    ``group_names`` (the lake's, by id), a ``group_name`` column from its ``label``."""

    def __init__(self, path: StorePath, group_names: Sequence[str] | None = None) -> None:
        super().__init__()
        self.path = path
        self.group_names = group_names

    @cached_property
    def _metadata(self) -> Any:
        import pyarrow as pa

        pf = parquet_file(self.path)
        schema = pf.schema_arrow
        if self.group_names is not None and "label" in schema.names:
            at = schema.get_field_index("label") + 1
            schema = schema.insert(at, pa.field(GROUP_NAME, pa.string()))
        return schema, pf.metadata.num_rows

    @cached_property
    def _names(self) -> Any:
        import pyarrow as pa

        return pa.array(list(self.group_names or ()), pa.string())

    @property
    def schema(self) -> Any:
        return self._metadata[0]

    def rows(self) -> int | None:
        return int(self._metadata[1])

    def batches(self, columns: list[str] | None, filters: Sequence[Any]) -> Iterator[Any]:
        if GROUP_NAME not in self.schema.names:
            return row_group_batches(parquet_file(self.path), columns, BATCH_ROWS)
        return self._named_batches(self.schema.names if columns is None else columns)

    def _named_batches(self, columns: list[str]) -> Iterator[Any]:
        """Batches of ``columns``, ``group_name`` made from the labels read with them."""
        import pyarrow as pa

        read = [c for c in columns if c != GROUP_NAME]
        if GROUP_NAME in columns and "label" not in read:
            read.append("label")
        fields = [self.schema.field(c) for c in columns]
        for batch in row_group_batches(parquet_file(self.path), read, BATCH_ROWS):
            arrays = []
            for c in columns:
                if c == GROUP_NAME:
                    arrays.append(self._names.take(batch.column("label")))
                else:
                    arrays.append(batch.column(c))
            yield pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))
