"""The Parquet tables behind the ``samples``, ``checkpoints`` and ``scores`` views, streamed.

A :class:`ParquetSource` hands DuckDB one row group (only the columns a query uses) at a time,
from a local file or an object-store object alike: memory is one row group whatever the
table's size, and DuckDB never opens the lake's files itself (its sandbox keeps them out of
reach of SQL statements). Callers check the file's checksums before registering it.
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


class ParquetSource(ScanSource):
    """One Parquet file as a DuckDB scan source: projection pushdown, row count known."""

    def __init__(self, path: StorePath) -> None:
        super().__init__()
        self.path = path

    @cached_property
    def _metadata(self) -> Any:
        pf = parquet_file(self.path)
        return pf.schema_arrow, pf.metadata.num_rows

    @property
    def schema(self) -> Any:
        return self._metadata[0]

    def rows(self) -> int | None:
        return int(self._metadata[1])

    def batches(self, columns: list[str] | None, filters: Sequence[Any]) -> Iterator[Any]:
        return row_group_batches(parquet_file(self.path), columns, BATCH_ROWS)
