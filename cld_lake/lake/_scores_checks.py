"""The checksums a scores table carries in its footer, computed as it streams.

A table is never whole in memory, so its checksums are computed as the row groups are written
and stored at the end, in the footer key ``cld_lake.checksum``: a CRC32C of the ``cld_lake``
JSON and one per column (the canonical content of :class:`cld_lake._meta.TableChecksum`:
values, null positions, schema). A reader checks the JSON and exactly the columns it reads.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from cld_lake._meta import TableChecksum, canonical_json, crc32c_hex

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cld_lake.lake.store import Lake
    from cld_lake.storage import StorePath

CHECKSUMS_KEY = b"cld_lake.checksum"


def recorded_checksums(pf: pq.ParquetFile) -> dict[str, Any] | None:
    """The checksums in the footer of ``pf``; None when it has none, ``{}`` when the entry is
    there but damaged (so every comparison fails)."""
    raw = (pf.metadata.metadata or {}).get(CHECKSUMS_KEY)
    try:
        recorded = json.loads(raw) if raw is not None else None
    except ValueError:
        return {}  # present but damaged: every comparison fails
    return recorded if isinstance(recorded, dict) else ({} if raw is not None else None)


class ColumnChecksums:
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


def footer_record(meta: dict[bytes, bytes], sums: ColumnChecksums) -> dict[str, Any]:
    """What the footer records: the CRC32C of the ``cld_lake`` JSON in ``meta`` and of every
    column ``sums`` was fed."""
    body = json.loads(meta[b"cld_lake"])
    return {"meta": crc32c_hex(canonical_json(body)), "columns": sums.values()}


def footer(meta: dict[bytes, bytes], sums: ColumnChecksums) -> dict[bytes, bytes]:
    """The footer key-value entry holding :func:`footer_record`."""
    return {CHECKSUMS_KEY: json.dumps(footer_record(meta, sums), sort_keys=True).encode()}


def compare_columns(
    lake: Lake, path: StorePath | str, recorded: dict[str, Any], sums: ColumnChecksums
) -> None:
    """Each column ``sums`` covers has the CRC the table at ``path`` recorded for it;
    :class:`CorruptLakeError` naming the first that differs."""
    from cld_lake.errors import CorruptLakeError

    expected = recorded.get("columns") if isinstance(recorded.get("columns"), dict) else {}
    for name, value in sums.values().items():
        if expected.get(name) != value:
            raise CorruptLakeError(f"{path} fails its checksum (column {name!r}); {lake.fix}")


class ColumnCheck:
    """The checksums of ``columns`` of the scores table ``pf`` (at ``path``, opened by
    :func:`cld_lake.lake.scores.open_scores_file`): :meth:`update` with each row group (or
    span of them) as it is read, :meth:`verify` once every row has been;
    :class:`CorruptLakeError` when one differs from what the table recorded. A table without
    checksums (format 1) checks nothing."""

    def __init__(
        self,
        lake: Lake,
        pf: pq.ParquetFile,
        columns: list[str] | None = None,
        path: StorePath | None = None,
    ) -> None:
        self._lake = lake
        self._path: StorePath | str = path if path is not None else f"{lake.root} scores table"
        self._recorded = recorded_checksums(pf)
        self._sums = (
            ColumnChecksums(pf.schema_arrow, columns) if self._recorded is not None else None
        )

    def update(self, part: pa.Table) -> None:
        if self._sums is not None:
            self._sums.update(part)

    def verify(self) -> None:
        if self._sums is not None and self._recorded is not None:
            compare_columns(self._lake, self._path, self._recorded, self._sums)
