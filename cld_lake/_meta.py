"""The ``cld_lake`` JSON that every Parquet file this package writes carries in its metadata.

One owner for the key, the encoding and the error: the commit record, the scores table,
manifests and exports all read and write their provenance through these functions.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

META_KEY = b"cld_lake"


def now_iso() -> str:
    """The time now as the metadata writes it: UTC, ISO 8601, to the second."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def meta_bytes(meta: dict[str, Any]) -> dict[bytes, bytes]:
    """The Parquet key-value metadata holding ``meta`` (sorted keys: byte-stable)."""
    return {META_KEY: json.dumps(meta, sort_keys=True, default=str).encode()}


def read_meta(schema: Any) -> dict[str, Any]:
    """The ``cld_lake`` JSON of a pyarrow schema; ``{}`` when absent or not a JSON object."""
    raw = (getattr(schema, "metadata", None) or {}).get(META_KEY)
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def with_meta(table_or_schema: Any, meta: dict[str, Any]) -> Any:
    """``table_or_schema`` with its ``cld_lake`` metadata replaced by ``meta``."""
    if hasattr(table_or_schema, "replace_schema_metadata"):
        return table_or_schema.replace_schema_metadata(meta_bytes(meta))
    return table_or_schema.with_metadata(meta_bytes(meta))


# --- checksums ------------------------------------------------------------------------------
# A table file carries a CRC32C of its canonical content in its ``cld_lake`` JSON (key
# ``checksum``): what a reader decodes (the schema, every value as little-endian bytes, string
# bytes, null positions) plus the metadata JSON without the checksum itself. So a flipped byte
# that changes anything decoded fails the check, wherever it lands in the file (page, footer,
# Arrow schema, metadata), while the encoding itself (row groups, compression) is free.

CHECKSUM_KEY = "checksum"
_CRC_PREFIX = "crc32c:"


def crc32c_hex(data: Any) -> str:
    """``crc32c:<8 hex digits>`` of a bytes-like object (bytes or a contiguous NumPy array)."""
    import google_crc32c

    return f"{_CRC_PREFIX}{google_crc32c.value(data):08x}"


def canonical_json(meta: dict[str, Any]) -> bytes:
    """The bytes a checksum covers for a JSON object: sorted keys, no spaces, no checksum."""
    body = {k: v for k, v in meta.items() if k != CHECKSUM_KEY}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


def table_checksum(table: Any, meta: dict[str, Any]) -> str:
    """CRC32C of ``table``'s canonical content plus ``meta`` (its ``checksum`` key ignored).

    Independent of how the table is chunked, so the writer's table and the one a reader
    decodes from the file (one chunk per row group) give the same value.
    """
    acc = TableChecksum(table.schema)
    acc.update(table)
    return acc.value(meta)


class TableChecksum:
    """:func:`table_checksum` computed over row groups as they stream (a writer that never
    holds the whole table): ``update`` with each part in order, then ``value(meta)``."""

    def __init__(self, schema: Any) -> None:
        self._schema = schema
        self._rows = 0
        # per column: running CRCs of fixed-width bytes, variable bytes, null positions
        self._state = [[0, 0, 0] for _ in schema]

    def update(self, part: Any) -> None:
        """Add the next rows (a table or record batch with this schema)."""
        columns = part.columns if hasattr(part, "columns") else part
        for state, column in zip(self._state, columns, strict=True):
            chunks = column.chunks if hasattr(column, "chunks") else [column]
            offset = self._rows
            for chunk in chunks:
                _extend_column(state, chunk, offset)
                offset += len(chunk)
        self._rows += part.num_rows

    def value(self, meta: dict[str, Any]) -> str:
        """``crc32c:<hex>`` of everything added so far plus ``meta`` (checksum key ignored)."""
        import google_crc32c
        import numpy as np

        crc = google_crc32c.value(f"cld_lake-table-1 rows={self._rows}\n".encode())
        for fld, state in zip(self._schema, self._state, strict=True):
            head = f"{fld.name}\x00{_type_name(fld.type)}\x00{int(fld.nullable)}\n".encode()
            crc = google_crc32c.extend(crc, head)
            crc = google_crc32c.extend(crc, np.asarray([*state, self._rows & 0xFFFFFFFF], "<u4"))
        crc = google_crc32c.extend(crc, canonical_json(meta))
        return f"{_CRC_PREFIX}{crc:08x}"


def with_checksum(table: Any, meta: dict[str, Any]) -> Any:
    """``table`` with ``meta`` plus its checksum as its ``cld_lake`` metadata."""
    body = {k: v for k, v in meta.items() if k != CHECKSUM_KEY}
    return with_meta(table, {**body, CHECKSUM_KEY: table_checksum(table, body)})


def checksum_problem(table: Any) -> str | None:
    """Why ``table`` (as read from a file) fails its checksum; None when it passes."""
    meta = read_meta(table.schema)
    stored = meta.get(CHECKSUM_KEY)
    if not isinstance(stored, str):
        return "no checksum recorded" if meta else "no readable cld_lake metadata"
    computed = table_checksum(table, meta)
    return None if computed == stored else f"stored {stored}, computed {computed}"


def verify_checksum(
    table: Any,
    path: Any,
    *,
    fix: str = "restore it from a backup",
    error: type[Exception] | None = None,
) -> dict[str, Any]:
    """The ``cld_lake`` JSON of ``table`` (read from ``path``) after checking its checksum.

    Raises ``error`` (default :class:`~cld_lake.errors.CorruptLakeError`) with one line,
    ``PATH fails its checksum (why); FIX``, when the checksum is missing or differs.
    """
    problem = checksum_problem(table)
    if problem is not None:
        from cld_lake.errors import CorruptLakeError

        raise (error or CorruptLakeError)(f"{path} fails its checksum ({problem}); {fix}")
    return read_meta(table.schema)


def _type_name(kind: Any) -> str:
    """The Arrow type as text, without the child field names of lists (Parquet renames a
    list's ``item`` to ``element`` on the way through a file)."""
    import pyarrow as pa

    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return (
            f"{'large_' if pa.types.is_large_list(kind) else ''}list<{_type_name(kind.value_type)}>"
        )
    if pa.types.is_fixed_size_list(kind):
        return f"fixed_size_list<{_type_name(kind.value_type)}>[{kind.list_size}]"
    if pa.types.is_struct(kind):
        inner = ", ".join(f"{f.name}: {_type_name(f.type)}" for f in kind)
        return f"struct<{inner}>"
    return str(kind)


def _extend_column(state: list[int], chunk: Any, offset: int) -> None:
    """Extend a column's running CRCs (fixed-width bytes, variable bytes, null positions) by
    one Arrow array whose first row is row ``offset`` of the table: the same for any chunking."""
    import google_crc32c

    fixed_part, variable_part, null_rows = _chunk_parts(chunk)
    if fixed_part is not None:
        state[0] = google_crc32c.extend(state[0], fixed_part)
    if variable_part is not None:
        state[1] = google_crc32c.extend(state[1], variable_part)
    if null_rows is not None and len(null_rows):
        state[2] = google_crc32c.extend(state[2], (null_rows + offset).astype("<i8"))


def _chunk_parts(chunk: Any) -> tuple[Any, Any, Any]:
    """Canonical bytes of one Arrow array: fixed-width values (nulls zeroed) or string lengths,
    string bytes, and the positions of nulls."""
    import numpy as np
    import pyarrow as pa

    n, start, kind = len(chunk), chunk.offset, chunk.type
    buffers = chunk.buffers()
    null_rows = None
    if chunk.null_count and buffers and buffers[0] is not None:
        bits = np.unpackbits(np.frombuffer(buffers[0], np.uint8), bitorder="little")
        null_rows = np.flatnonzero(bits[start : start + n] == 0)
    simple = len(buffers) >= 2 and buffers[1] is not None and not pa.types.is_dictionary(kind)
    if simple and pa.types.is_boolean(kind):
        bits = np.unpackbits(np.frombuffer(buffers[1], np.uint8), bitorder="little")
        values = bits[start : start + n].copy()
        if null_rows is not None:
            values[null_rows] = 0
        return values, None, null_rows
    fixed_width = (
        pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_temporal(kind)
    )
    if simple and fixed_width and len(buffers) == 2 and kind.bit_width % 8 == 0:
        width = kind.bit_width // 8
        raw = np.frombuffer(buffers[1], np.uint8)[start * width : (start + n) * width]
        if null_rows is not None:
            raw = raw.reshape(n, width).copy()
            raw[null_rows] = 0
        return _little_endian(raw, width), None, null_rows
    is_string = pa.types.is_string(kind) or pa.types.is_binary(kind)
    is_large = pa.types.is_large_string(kind) or pa.types.is_large_binary(kind)
    if simple and (is_string or is_large) and null_rows is None:
        offsets = np.frombuffer(buffers[1], np.int64 if is_large else np.int32)[
            start : start + n + 1
        ]
        data = np.frombuffer(buffers[2], np.uint8) if buffers[2] is not None else np.zeros(0)
        lengths = np.diff(offsets).astype("<i8")
        return lengths, np.ascontiguousarray(data[offsets[0] : offsets[-1]], np.uint8), None
    # anything else (nested, dictionary, strings with nulls): one JSON line per value
    lines = "".join(json.dumps(v, sort_keys=True, default=repr) + "\n" for v in chunk.to_pylist())
    return None, lines.encode(), None


def _little_endian(raw: Any, width: int) -> Any:
    import sys

    import numpy as np

    if sys.byteorder == "little" or width == 1:
        return np.ascontiguousarray(raw).reshape(-1)
    return np.ascontiguousarray(raw).reshape(-1, width)[:, ::-1].reshape(-1)


def streamed_checksum_problem(meta: dict[str, Any], computed: TableChecksum) -> str | None:
    """:func:`checksum_problem` of a table read part by part: ``meta`` its ``cld_lake`` JSON,
    ``computed`` a :class:`TableChecksum` fed every part in order (the same answer as for the
    whole table, without holding it)."""
    stored = meta.get(CHECKSUM_KEY)
    if not isinstance(stored, str):
        return "no checksum recorded" if meta else "no readable cld_lake metadata"
    value = computed.value(meta)
    return None if value == stored else f"stored {stored}, computed {value}"


class WholeTableChecksum(TableChecksum):
    """:class:`TableChecksum` with the value of the whole table held as one chunk per column
    (what a writer of an in-memory table records and what a whole read decodes), whatever
    parts it is fed. The canonical bytes of a string or binary column depend on the column:
    lengths and bytes without nulls, JSON lines with any; so a part without nulls is also
    encoded as JSON lines, and :meth:`value` takes that encoding where a null was seen."""

    def __init__(self, schema: Any) -> None:
        super().__init__(schema)
        # per string/binary column: [CRC of its JSON lines, a null seen]
        self._text = {i: [0, False] for i, fld in enumerate(schema) if _is_text(fld.type)}

    def update(self, part: Any) -> None:
        import google_crc32c

        columns = part.columns if hasattr(part, "columns") else part
        for i, state in self._text.items():
            column = columns[i]
            for chunk in column.chunks if hasattr(column, "chunks") else [column]:
                state[0] = google_crc32c.extend(state[0], _json_lines(chunk))
                state[1] = state[1] or chunk.null_count > 0
        super().update(part)

    def value(self, meta: dict[str, Any]) -> str:
        kept = [list(s) for s in self._state]
        try:
            for i, (crc, nulls) in self._text.items():
                if nulls:
                    self._state[i] = [0, crc, 0]  # as _chunk_parts encodes a column with nulls
            return super().value(meta)
        finally:
            self._state = kept


def _is_text(kind: Any) -> bool:
    import pyarrow as pa

    return bool(
        pa.types.is_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_large_binary(kind)
    )


def _json_lines(chunk: Any) -> bytes:
    """The JSON-lines bytes :func:`_chunk_parts` gives a column it cannot encode otherwise."""
    return "".join(
        json.dumps(v, sort_keys=True, default=repr) + "\n" for v in chunk.to_pylist()
    ).encode()
