"""The sample ids and groups of an import, read by row range.

An import's ids and groups (``--labels`` or ``--groups``: class indices or group names) are
columns read a block at a time (:class:`ImportSamples`): a ``.npy`` by ``pread`` (nothing
mapped into the process), a row-aligned Parquet column by row group, ids ``0..N-1`` made on
the fly. One checking pass reads each once (the range of the class indices, the distinct
group names) before anything is written; a new split whose ids increase is then written as
:class:`~cld_lake.lake.SampleBlocks`, so an import holds a block of ids and groups, not N.
Ids in another order, or groups joined on ``sample_id``, are held whole (8 bytes a sample).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from cld_lake.errors import BadInputError, InputFileNotFoundError, one_line
from cld_lake.lake._groups import (
    BLOCK_BYTES,
    GroupEncoder,
    NameCollector,
    is_named,
    too_many_groups,
)
from cld_lake.lake._sample_blocks import SampleBlocks
from cld_lake.lake._validate import MAX_CLASSES, as_ids, as_labels, check_labels

if TYPE_CHECKING:
    import pyarrow.parquet as pq

PathLike = str | os.PathLike[str]
#: rows per block of ids and integer groups (8 MB of int64)
BLOCK_ROWS = 1 << 20
#: rows per block a new split's samples are written in: a row group of samples.parquet, so
#: the writer's re-chunking holds no more than a block
WRITE_ROWS = 1 << 16


class Column(Protocol):
    """One value per import row, read by row range."""

    def __len__(self) -> int: ...

    def read(self, a: int, b: int) -> Any: ...


class ArrayColumn:
    """A column held whole (a NumPy or Arrow array)."""

    def __init__(self, values: Any) -> None:
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def read(self, a: int, b: int) -> Any:
        return self.values[a:b]


class RangeColumn:
    """The ids ``0..n-1``, made block by block."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def read(self, a: int, b: int) -> np.ndarray:
        return np.arange(a, min(b, self.n), dtype=np.int64)


class NpyRows:
    """Row-range reads of a C-ordered ``.npy`` file with plain ``pread`` into a fresh buffer.

    Unlike a memory map, nothing stays mapped into the process after a block is consumed, so
    the peak RSS of a streaming import is one block, not the whole file.
    """

    def __init__(self, path: PathLike, mm: np.ndarray) -> None:
        self.path = Path(path)
        self.dtype = mm.dtype
        self.shape = mm.shape
        self.offset = getattr(mm, "offset", 0)
        self.row_bytes = int(np.prod(mm.shape[1:], dtype=np.int64)) * mm.dtype.itemsize

    def __len__(self) -> int:
        return int(self.shape[0])

    def read(self, a: int, b: int) -> np.ndarray:
        b = min(b, self.shape[0])
        out = np.empty((max(b - a, 0), *self.shape[1:]), dtype=self.dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        pos, done = self.offset + a * self.row_bytes, 0
        fd = os.open(self.path, os.O_RDONLY)
        try:
            while done < len(view):
                got = os.preadv(fd, [view[done:]], pos + done)
                if got <= 0:
                    raise BadInputError(f"{self.path}: file ended early; it is truncated")
                done += got
        finally:
            os.close(fd)
        return out


def npy_column(path: PathLike, mm: np.ndarray) -> Column:
    """Rows of a ``.npy`` memory map: ``pread`` for C order, the map otherwise."""
    if mm.flags.c_contiguous and isinstance(mm, np.memmap):
        return NpyRows(path, mm)
    return ArrayColumn(mm)


class ParquetColumn:
    """Column ``name`` of a Parquet file, one row group at a time (the last one kept)."""

    def __init__(self, pf: pq.ParquetFile, name: str, what: str) -> None:
        self.pf, self.name, self.what = pf, name, what
        meta = pf.metadata
        self.starts = np.cumsum(
            [0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        )
        self._cache: tuple[int, Any] | None = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def read(self, a: int, b: int) -> Any:
        import pyarrow as pa

        parts = []
        g = int(np.searchsorted(self.starts, a, side="right")) - 1
        while a < b and g < len(self.starts) - 1:
            column = self._group(g)
            lo = a - int(self.starts[g])
            take = min(b, int(self.starts[g + 1])) - a
            parts.append(column.slice(lo, take))
            a += take
            g += 1
        if not parts:
            return pa.array([], self.pf.schema_arrow.field(self.name).type)
        return parts[0] if len(parts) == 1 else pa.concat_arrays(parts)

    def _group(self, g: int) -> Any:
        import pyarrow as pa

        if self._cache is None or self._cache[0] != g:
            try:
                table = self.pf.read_row_group(g, columns=[self.name])
            except (OSError, pa.ArrowException) as exc:
                raise BadInputError(f"{self.what}: could not be read ({one_line(exc)})") from exc
            self._cache = (g, table.column(self.name).combine_chunks())
        return self._cache[1]


class CodesColumn:
    """Group names held as small integer codes into ``names`` (e.g. as DuckDB joined them)."""

    def __init__(self, codes: np.ndarray, names: list[str]) -> None:
        import pyarrow as pa

        self.codes = codes
        self.names = pa.array(names, pa.string())

    def __len__(self) -> int:
        return len(self.codes)

    def read(self, a: int, b: int) -> Any:
        return self.names.take(self.codes[a:b])


@dataclass
class ImportSamples:
    """The sample ids and groups of an import, checked (:func:`scan`).

    ``named``: the groups are names (``names`` their distinct values), else class indices
    (``label_range`` their least and greatest, None without rows). ``increasing``: every id
    is greater than the one before (so they are unique, and a new split streams them).
    ``what`` names the groups' argument in messages (``--labels FILE``).
    """

    ids: Column
    groups: Column
    what: str
    named: bool
    increasing: bool
    names: frozenset[str] | None = None
    label_range: tuple[int, int] | None = None

    @property
    def num_rows(self) -> int:
        return len(self.ids)

    @property
    def noun(self) -> str:
        """How messages name the groups: ``labels`` or ``groups``."""
        return "groups" if self.what.startswith("--groups") or self.named else "labels"

    def with_ids(self, ids: Column) -> ImportSamples:
        """These groups with their sample ids (one per group, in row order)."""
        if len(ids) != len(self.groups):
            raise BadInputError(
                f"{self.what}: {len(self.groups)} groups for {len(ids)} sample ids; give one "
                "per sample"
            )
        return dataclasses.replace(self, ids=ids, increasing=ids_increase(ids))

    def spans(self, step: int = BLOCK_ROWS) -> Iterator[tuple[int, int]]:
        n = self.num_rows
        return ((a, min(a + step, n)) for a in range(0, n, step))

    def labels(self, a: int, b: int, encoder: GroupEncoder | None) -> np.ndarray:
        """Rows ``a..b`` of the groups as int64 ids (names through ``encoder``)."""
        values = self.groups.read(a, b)
        if self.named:
            assert encoder is not None
            return encoder.encode(values, self.what, a)
        return np.asarray(values).astype(np.int64, copy=False)

    def whole_ids(self) -> np.ndarray:
        return _whole(self.ids, self.spans())

    def new_samples(self) -> SampleBlocks | tuple[np.ndarray, Any]:
        """What the writer creates the split from: blocks when the ids increase, else whole
        arrays (the ids, and the groups as given: ints or names)."""
        if not self.increasing:
            groups = _whole(self.groups, self.spans(self.group_step()))
            return self.whole_ids(), groups
        step = min(self.group_step(), WRITE_ROWS)

        def blocks() -> Iterator[tuple[np.ndarray, Any]]:
            for a, b in self.spans(step):
                yield self.ids.read(a, b), self._raw(a, b)

        return SampleBlocks(blocks, self.num_rows, group_names=self.names)

    def _raw(self, a: int, b: int) -> Any:
        values = self.groups.read(a, b)
        return values if self.named else np.asarray(values).astype(np.int64, copy=False)

    def group_step(self) -> int:
        """Rows per block of groups: fewer for wide fixed-width names (``<U256``)."""
        dtype = getattr(self.groups, "dtype", None)
        if dtype is None:
            dtype = getattr(getattr(self.groups, "values", None), "dtype", None)
        itemsize = getattr(dtype, "itemsize", 8) or 8
        return int(max(1, min(BLOCK_ROWS, BLOCK_BYTES // itemsize)))


def _whole(column: Column, spans: Iterator[tuple[int, int]]) -> Any:
    import pyarrow as pa

    if isinstance(column, ArrayColumn):
        return column.values
    parts = [column.read(a, b) for a, b in spans]
    if not parts:
        return np.zeros(0, np.int64)
    if isinstance(parts[0], pa.Array):
        return pa.concat_arrays(parts)
    return np.concatenate(parts)


def scan(groups: Column, what: str, *, names: bool = True) -> ImportSamples:
    """Check ``groups`` in one pass (names: every name, at most ``MAX_CLASSES`` distinct;
    class indices: their type and range), holding nothing but the distinct names; the ids
    come with :meth:`ImportSamples.with_ids`. ``names=False`` (``--labels``): class indices
    only."""
    first = groups.read(0, min(len(groups), 1))
    named = names and is_named(first)
    samples = ImportSamples(RangeColumn(len(groups)), groups, what, named, increasing=True)
    step = samples.group_step()
    if named:
        collector = NameCollector(what, MAX_CLASSES)
        for a, b in samples.spans(step):
            collector.add(groups.read(a, b))
        samples.names = frozenset(collector.names)
        return samples
    if np.asarray(first).dtype.kind not in "iu":  # refused, named as a whole read names it
        as_labels(np.asarray(_whole(groups, samples.spans(step))), what)
    lo = hi = None
    for a, b in samples.spans(step):
        block = as_labels(np.asarray(groups.read(a, b)), what)
        if len(block):
            lo = int(block.min()) if lo is None else min(lo, int(block.min()))
            hi = int(block.max()) if hi is None else max(hi, int(block.max()))
    samples.label_range = None if lo is None or hi is None else (lo, hi)
    return samples


def ids_increase(ids: Column) -> bool:
    """Does every id exceed the one before (read a block at a time)?"""
    if isinstance(ids, RangeColumn):
        return True
    last: int | None = None
    n = len(ids)
    for a in range(0, n, BLOCK_ROWS):
        block = np.asarray(ids.read(a, min(a + BLOCK_ROWS, n)))
        if not len(block):
            continue
        if (last is not None and block[0] <= last) or bool((block[1:] <= block[:-1]).any()):
            return False
        last = int(block[-1])
    return True


def check_classes(samples: ImportSamples, num_classes: int | None, what: str) -> None:
    """Class indices must fit ``num_classes`` (:func:`check_labels` of their range)."""
    if not samples.named and samples.label_range is not None:
        check_labels(np.asarray(samples.label_range, np.int64), num_classes, what)


def load_sample_ids(path: PathLike | None, n: int, what: str, load: Callable[..., Any]) -> Column:
    """The import's sample ids: ``0..n-1`` when ``path`` is None, else a 1-D ``.npy`` of ``n``
    unique integer ids, read by row range when they increase (else held whole and checked
    for duplicates, :func:`as_ids`)."""
    if path is None:
        return RangeColumn(n)
    arr = load(path, what)
    if arr.shape != (n,):
        raise BadInputError(f"{what} {path}: shape {arr.shape}, expected ({n},) to match --loss")
    as_ids(np.zeros(0, arr.dtype), f"{what} {path}")  # the type rules, on the dtype
    column = npy_column(path, arr)
    if arr.dtype == np.uint64 or not ids_increase(column):  # uint64: values checked whole
        return ArrayColumn(as_ids(np.asarray(arr), f"{what} {path}"))
    return column


def npy_header_dtype(path: Path) -> np.dtype | None:
    """The dtype a ``.npy`` file declares (None when its header cannot be read)."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            return read_header(fh)[2]
    except (ValueError, OSError, EOFError):
        return None


def load_groups_npy(path: PathLike, n: int, load: Callable[..., Any]) -> Column:
    """``--groups FILE.npy``: a 1-D array of ``n`` integers or strings, read by row range."""
    p = Path(path)
    what = f"--groups {p}"
    if not p.exists():
        raise InputFileNotFoundError(f"{what}: no such file")
    dtype = npy_header_dtype(p)
    if dtype is not None and dtype.hasobject:
        raise BadInputError(
            f"{what}: holds Python objects (dtype object); save the names as a fixed-width "
            "string array: np.save(path, np.asarray(names, dtype=str))"
        )
    arr = load(p, "--groups")
    if arr.shape != (n,):
        raise BadInputError(
            f"{what}: shape {arr.shape} does not match --loss with {n} rows; expected ({n},)"
        )
    if arr.dtype.kind not in "iuUS":
        raise BadInputError(
            f"{what}: dtype {arr.dtype} is not allowed for groups; groups are integers (ids "
            "0..C-1, as labels) or strings (group names)"
        )
    return npy_column(p, arr)


def groups_type(arrow_type: Any, what: str) -> bool:
    """Is a Parquet ``group`` column of ``arrow_type`` named (strings) or ids (integers)?"""
    import pyarrow as pa

    kind = arrow_type.value_type if pa.types.is_dictionary(arrow_type) else arrow_type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return True
    if pa.types.is_integer(arrow_type):
        return False
    raise BadInputError(
        f"{what}: column group is {arrow_type}; groups are integers (ids 0..C-1, as labels) or "
        "strings (group names)"
    )


def row_aligned_groups(path: Path, n: int, what: str) -> Column:
    """The ``group`` column of a Parquet file without ``sample_id``: row ``i`` is the group
    of import row ``i``, read one row group at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise BadInputError(f"{what}: could not be read ({one_line(exc)})") from exc
    groups_type(pf.schema_arrow.field("group").type, what)
    column = ParquetColumn(pf, "group", what)
    if len(column) != n:
        raise BadInputError(
            f"{what}: {len(column)} rows and no sample_id column; give one group per --loss "
            f"row ({n}), or add a sample_id column"
        )
    return column


def joined_groups(source: str, ids: np.ndarray, what: str, named: bool) -> Column:
    """The groups of ``ids`` from DuckDB rows ``(sample_id, "group")`` of ``source`` (a table
    expression, one row per sample): names as codes into their sorted distinct values,
    integers as they are; every id needs exactly one non-null group."""
    import pyarrow as pa

    from cld_lake import _duckdb

    con = _duckdb.connect()
    try:
        con.register("_want", pa.table({"sample_id": ids, "pos": np.arange(len(ids))}))
        rows = f'SELECT w.pos, l."group" AS g FROM _want w LEFT JOIN {source} l USING (sample_id)'
        if named:
            distinct = con.execute(f'SELECT count(DISTINCT "group") FROM {source}').fetchall()[0][0]
            if distinct > MAX_CLASSES:
                raise too_many_groups(int(distinct), what)
            names = [r[0] for r in con.execute(
                f'SELECT DISTINCT "group" FROM {source} WHERE "group" IS NOT NULL ORDER BY 1'
            ).fetchall()]  # fmt: skip
            con.register("_names", pa.table({"g": pa.array(names, pa.string()),
                                            "code": np.arange(len(names))}))  # fmt: skip
            rows = f"SELECT r.pos, n.code AS g FROM ({rows}) r LEFT JOIN _names n USING (g)"
        got = con.execute(f"{rows} ORDER BY 1").fetchnumpy()
    except _duckdb.Error as exc:
        raise BadInputError(f"{what}: could not be read ({one_line(exc)})") from exc
    finally:
        con.close()
    values = got["g"]
    if len(values) != len(ids):
        raise BadInputError(
            f"{what}: {len(values) - len(ids)} rows repeat a sample id; one group per sample"
        )
    if np.ma.is_masked(values):
        raise BadInputError(
            f"{what}: {int(np.ma.getmaskarray(values).sum())} sample ids have no group "
            "(missing row or null group)"
        )
    values = np.ma.getdata(values)
    if named:
        return CodesColumn(values.astype(np.int64), names)
    return ArrayColumn(values)
