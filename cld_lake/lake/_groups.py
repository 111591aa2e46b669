"""Named groups: the lake's table of group names, and names turned into dense ids.

A lake's groups are plain integers (class indices, as in a classification lake) or named
(``web``, ``code``, ``books``). Named groups are stored as dense integer ids, the ``label``
column of every table, so scoring, selection and SQL work on integers as they do for classes;
the lake keeps one table of names, the id of a name being its position. The first split's
names are sorted; a later split's new names are sorted and appended, so a name keeps its id
for the life of the lake.

The table only grows. It is stored in parts, ``groups/names-<seq>-<token>.parquet`` (one
``name`` column, its checksum in its own metadata), each written once and never changed; the
``groups`` record of ``cld_lake.json`` lists the parts with their checksums, the number of
names and a digest of all of them. Replacing that record under the root lock commits new
names. Each named split's commit record keeps the count and digest of the names it was
written with, so a table that lost, changed or reordered names is refused.

Values arrive as NumPy string arrays (``<U``, ``S``, ``StringDType``, or objects that are all
``str``) or Arrow string arrays, and are handled a block at a time: each block is
dictionary-encoded (fixed-width NumPy strings through Arrow's hash table, without making a
Python string per row), so only its distinct names become Python strings.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from cld_lake._io import parquet_file
from cld_lake._meta import CHECKSUM_KEY, read_meta, verify_checksum, with_checksum
from cld_lake.errors import BadInputError, CorruptLakeError, one_line
from cld_lake.lake import _format as fmt
from cld_lake.lake._validate import MAX_CLASSES, type_name
from cld_lake.storage import StorePath

if TYPE_CHECKING:
    import pyarrow as pa

#: The longest group name, in UTF-8 bytes: a name is a label people read in SQL results,
#: manifests and the report, not a document key (hash or cluster keys into groups first).
MAX_NAME_BYTES = 256
#: Block of group values handled at once, in bytes of the values (a wide ``<U256`` column
#: takes fewer rows per block than ``<U8``).
BLOCK_BYTES = 8 << 20
NAMES_TABLE_META = {"table": "group_names"}
_TOO_MANY_FIX = (
    "a lake holds at most {limit:,} groups; hash or cluster the keys into fewer groups "
    "first (e.g. a domain instead of a URL, a k-means cluster of embeddings)"
)


def is_named(values: Any) -> bool:
    """Are ``values`` group names (a NumPy or Arrow array of strings) rather than integer ids?"""
    import pyarrow as pa

    if isinstance(values, pa.Array | pa.ChunkedArray):
        kind = values.type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))
    return np.asarray(values).dtype.kind in "USTO"


def block_rows(values: Any, limit: int = 1 << 20) -> int:
    """Rows of ``values`` per block: about :data:`BLOCK_BYTES` of fixed-width strings."""
    itemsize = getattr(getattr(values, "dtype", None), "itemsize", 8) or 8
    return int(max(1, min(limit, BLOCK_BYTES // itemsize)))


def too_many_groups(count: int, what: str) -> BadInputError:
    """The one-line error for more groups than a lake holds, naming the fix."""
    return BadInputError(
        f"{what}: {count:,} group names; " + _TOO_MANY_FIX.format(limit=MAX_CLASSES)
    )


@dataclass(frozen=True)
class Dictionary:
    """One block of names, dictionary-encoded: ``names[indices[i]]`` is row ``i``'s name;
    ``names`` are distinct and valid group names."""

    indices: np.ndarray
    names: list[str]


def dictionary(values: Any, what: str, start: int = 0) -> Dictionary:
    """The block ``values`` (rows ``start..``) dictionary-encoded, every name checked: not
    null, not empty, valid UTF-8 without NUL characters, at most :data:`MAX_NAME_BYTES`
    bytes; :class:`BadInputError` naming ``what`` and the first row at fault."""
    import pyarrow as pa

    arr = _arrow(values, what)
    if arr.null_count:
        first = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        _refuse(what, f"{arr.null_count:,} null group names (first at row {start + first})")
    encoded = arr.dictionary_encode()
    indices = encoded.indices.to_numpy(zero_copy_only=False)
    raw: list[Any]
    if pa.types.is_fixed_size_binary(encoded.dictionary.type):  # NumPy <U / S, uncopied
        dtype = np.asarray(values).dtype
        buffer = encoded.dictionary.buffers()[1]
        raw = np.frombuffer(buffer, dtype=dtype, count=len(encoded.dictionary)).tolist()
    else:
        try:
            raw = encoded.dictionary.to_pylist()
        except UnicodeDecodeError:
            raw = [v.as_buffer().to_pybytes() for v in encoded.dictionary.cast(pa.binary())]
    names = [_checked_name(v, what, start, indices, k) for k, v in enumerate(raw)]
    return Dictionary(indices, names)


def _refuse(what: str, problem: str) -> NoReturn:
    raise BadInputError(f"{what}: {problem}; group names are non-empty UTF-8 text")


def _checked_name(value: Any, what: str, start: int, indices: np.ndarray, k: int) -> str:
    """``value``, entry ``k`` of a block's dictionary (str, or bytes of a NumPy ``S``
    array), as a valid group name; an error names the first row holding it."""

    def row_of(k: int) -> int:
        return start + int(np.argmax(indices == k))

    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            _refuse(what, f"the name at row {row_of(k)} is not valid UTF-8 ({value[:32]!r})")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: not text
        _refuse(what, f"the name at row {row_of(k)} is not valid UTF-8 ({value[:32]!r})")
    if not size:
        _refuse(what, f"an empty group name at row {row_of(k)}")
    if "\x00" in value:
        _refuse(what, f"the name at row {row_of(k)} holds a NUL character ({value[:32]!r})")
    if size > MAX_NAME_BYTES:
        raise BadInputError(
            f"{what}: the name at row {row_of(k)} has {size} bytes ({value[:32]!r}...); a group "
            f"name has at most {MAX_NAME_BYTES} bytes (hash or cluster longer keys into groups)"
        )
    return value


def _arrow(values: Any, what: str) -> pa.Array:
    """``values`` as one Arrow array: fixed-width NumPy strings wrapped as fixed-size binary
    (no copy, no decoding), other strings as ``string``."""
    import pyarrow as pa

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
        return values
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise BadInputError(f"{what}: shape {arr.shape}; group names are a 1-D array")
    if arr.dtype.kind in "US" and arr.dtype.itemsize:
        arr = np.ascontiguousarray(arr)
        return pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(arr.dtype.itemsize), len(arr), [None, pa.py_buffer(arr)]
        )
    if arr.dtype.kind in "US":  # zero-width strings: every name empty
        return pa.array([""] * len(arr), pa.string())
    try:
        return pa.array(arr, type=pa.string(), from_pandas=False)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise BadInputError(
            f"{what}: dtype {type_name(arr)} cannot be read as group names ({one_line(exc)}); "
            "groups are integers or strings"
        ) from exc


class NameCollector:
    """The distinct names of blocks of values, checked, at most ``limit`` of them."""

    def __init__(self, what: str, limit: int | None = None) -> None:
        self.what = what
        self.limit = MAX_CLASSES if limit is None else limit
        self.names: set[str] = set()
        self.rows = 0

    def add(self, values: Any) -> None:
        block = dictionary(values, self.what, self.rows)
        self.rows += len(block.indices)
        self.names.update(block.names)
        if len(self.names) > self.limit:
            raise too_many_groups(len(self.names), self.what)


def distinct_names(values: Any, what: str) -> set[str]:
    """The checked distinct names of a whole array, read in blocks."""
    collector = NameCollector(what)
    step = block_rows(values)
    for a in range(0, len(values), step):
        collector.add(values[a : a + step])
    return collector.names


class UnknownGroupError(BadInputError):
    """A name the lake's table of group names lacks."""


class GroupEncoder:
    """Names to the lake's dense ids, given its table of names (id = position)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        self._ids = {name: i for i, name in enumerate(self.names)}

    def encode(self, values: Any, what: str, start: int = 0) -> np.ndarray:
        """The int64 ids of ``values``; :class:`BadInputError` for a name the table lacks."""
        block = dictionary(values, what, start)
        try:
            lut = np.array([self._ids[n] for n in block.names], dtype=np.int64)
        except KeyError as exc:
            raise UnknownGroupError(
                f"{what}: group {exc.args[0]!r} is not among the lake's {len(self.names):,} "
                "group names"
            ) from None
        return lut[block.indices] if len(lut) else np.zeros(len(block.indices), np.int64)

    def encode_all(self, values: Any, what: str) -> np.ndarray:
        """:meth:`encode` of a whole array, a block at a time."""
        out = np.empty(len(values), np.int64)
        step = block_rows(values)
        for a in range(0, len(values), step):
            out[a : a + step] = self.encode(values[a : a + step], what, a)
        return out


def names_digest(names: Iterable[str]) -> str:
    """CRC32C of names in id order (each as its UTF-8 byte count, 4 bytes little endian, and
    its bytes): what a split records of the names it was written with."""
    import google_crc32c

    crc = google_crc32c.value(b"cld_lake-group-names-1\n")
    for name in names:
        data = name.encode("utf-8")
        crc = google_crc32c.extend(crc, len(data).to_bytes(4, "little") + data)
    return f"crc32c:{crc:08x}"


def split_record(names: Sequence[str]) -> dict[str, Any]:
    """What a named split's commit record keeps of the names table it was written with."""
    return {"count": len(names), "digest": names_digest(names)}


# --- the table on disk ---------------------------------------------------------------------


def read_names(root: StorePath, meta: dict[str, Any], fix: str) -> tuple[str, ...] | None:
    """The names table the root metadata ``meta`` names (None: the lake's groups are plain
    integers), every part checked against its checksum and the record;
    :class:`CorruptLakeError` when a part is missing, damaged or not the one recorded."""
    record = meta.get(fmt.GROUPS_KEY)
    if record is None:
        return None
    names: list[str] = []
    for part in record["parts"]:
        names.extend(_read_part(root / part["file"], part, fix))
    where = root / fmt.ROOT_FILE
    if len(set(names)) != len(names):
        raise CorruptLakeError(f"{where}: a group name appears twice in the names table; {fix}")
    if names_digest(names) != record["digest"]:
        raise CorruptLakeError(
            f"{where}: the group names table differs from its recorded digest; {fix}"
        )
    return tuple(names)


def _read_part(path: StorePath, part: dict[str, Any], fix: str) -> list[str]:
    try:
        table = parquet_file(path).read()
    except FileNotFoundError as exc:
        raise CorruptLakeError(f"{path}: committed file of the group names missing; {fix}") from exc
    except Exception as exc:
        raise CorruptLakeError(f"{path} cannot be decoded ({one_line(exc)}); {fix}") from exc
    meta = verify_checksum(table, path, fix=fix)
    if meta.get(CHECKSUM_KEY) != part["checksum"]:
        raise CorruptLakeError(
            f"{path} is not the file {fmt.ROOT_FILE} names (checksum {meta.get(CHECKSUM_KEY)}, "
            f"recorded {part['checksum']}); {fix}"
        )
    column = table.column("name") if table.schema.names == ["name"] else None
    if (
        column is None
        or column.null_count
        or table.num_rows != part["count"]
        or meta.get("first") != part["first"]
    ):
        raise CorruptLakeError(f"{path}: not the group names {fmt.ROOT_FILE} records; {fix}")
    return [str(v) for v in column.to_pylist()]


def write_part(
    root: StorePath, record: dict[str, Any] | None, current: Sequence[str], new: Sequence[str]
) -> dict[str, Any]:
    """Write ``new`` names (ids from ``len(current)``) as a new part file nobody references
    yet; return the ``groups`` record that commits them (the caller writes it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = list(record["parts"]) if record is not None else []
    first = len(current)
    key = fmt.groups_part_key(len(parts) + 1, uuid.uuid4().hex[:12])
    table = with_checksum(
        pa.table({"name": pa.array(list(new), pa.string())}), {**NAMES_TABLE_META, "first": first}
    )
    with (root / key).put_file() as tmp:
        pq.write_table(table, tmp, write_statistics=False)
    part = {
        "file": key,
        "first": first,
        "count": len(new),
        "checksum": read_meta(table.schema)[CHECKSUM_KEY],
    }
    names = [*current, *new]
    return {"parts": [*parts, part], "count": len(names), "digest": names_digest(names)}


def stray_parts(root: StorePath, meta: dict[str, Any]) -> list[StorePath]:
    """Files below ``groups/`` that the record does not name: parts of a write that never
    committed (or its temp files)."""
    record = meta.get(fmt.GROUPS_KEY) or {"parts": []}
    named = {part["file"] for part in record["parts"]}
    folder = root / fmt.GROUPS_DIR
    return [folder / n for n in sorted(folder.list()) if f"{fmt.GROUPS_DIR}/{n}" not in named]


def check_split_groups(
    label: str, recorded: dict[str, Any] | None, names: tuple[str, ...] | None, fix: str
) -> None:
    """A split's record of the names it was written with (None: integer groups) against the
    lake's table (None: none); :class:`CorruptLakeError` when they disagree."""
    if recorded is None and names is None:
        return
    if recorded is None:
        raise CorruptLakeError(
            f"split {label!r} holds integer groups but the lake names its groups; {fix}"
        )
    if names is None:
        raise CorruptLakeError(
            f"split {label!r} was written with {recorded.get('count')} group names but the "
            f"lake's names table is missing from {fmt.ROOT_FILE}; {fix}"
        )
    count = recorded.get("count")
    if not isinstance(count, int) or count > len(names):
        raise CorruptLakeError(
            f"split {label!r} was written with {count} group names; the lake's names table "
            f"holds {len(names)}; {fix}"
        )
    if names_digest(names[:count]) != recorded.get("digest"):
        raise CorruptLakeError(
            f"split {label!r}: the lake's first {count} group names are not those it was "
            f"written with (digest {recorded.get('digest')}); {fix}"
        )


def new_names(current: Collection[str], names: Iterable[str]) -> list[str]:
    """The ``names`` the table ``current`` lacks, sorted (their ids follow the current ones)."""
    known = set(current)
    return sorted({n for n in names if n not in known})


__all__ = [
    "MAX_NAME_BYTES",
    "Dictionary",
    "GroupEncoder",
    "NameCollector",
    "UnknownGroupError",
    "block_rows",
    "check_split_groups",
    "dictionary",
    "distinct_names",
    "is_named",
    "names_digest",
    "new_names",
    "read_names",
    "split_record",
    "stray_parts",
    "too_many_groups",
    "write_part",
]
