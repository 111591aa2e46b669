"""Import of the wide trajectory layouts: one row per sample, as ``cld-lake export`` writes.

``wide``: ``sample_id[, label]`` and a list column per channel (``loss``, ``correct``,
``margin``), checkpoint ids in the file's ``cld_lake`` metadata (default ``0..K-1``).
``columns``: one column per channel and checkpoint, ``loss_<checkpoint>``. The file is checked
in full before anything is written; values stream in row groups.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from cld_lake._meta import read_meta
from cld_lake.errors import BadInputError, one_line
from cld_lake.lake import _format as fmt
from cld_lake.lake._import_common import (
    ImportResult,
    PathLike,
    Target,
    channel_dtype,
    check_import_options,
    import_rows,
    load_groups,
    load_labels,
    parquet_schema,
)
from cld_lake.lake._import_samples import (
    ArrayColumn,
    ImportSamples,
    ParquetColumn,
    check_classes,
    groups_type,
    scan,
)
from cld_lake.lake._validate import (
    arrow_dtype,
    as_checkpoint_ids,
    as_ids,
    as_labels,
    check_channel_dtype,
    check_correct_values,
)

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

_COLUMN_NAME = re.compile(r"^(loss|correct|margin)_([0-9]+)$")
_CHANNEL_PREFIXES = tuple(f"{c}_" for c in fmt.CHANNELS)


@dataclass(frozen=True)
class WideLayout:
    """How a wide Parquet file holds its trajectories."""

    kind: Literal["wide", "columns"]  # list columns, or one column per checkpoint
    checkpoints: np.ndarray
    columns: dict[str, list[str]]  # channel -> the file's column(s) holding it, in checkpoint order
    dtypes: dict[str, np.dtype]  # channel -> numpy dtype of the values (object: not a number)
    types: dict[str, str]  # channel -> the Arrow type of the values, for messages


def wide_layout(schema: pa.Schema, path: PathLike) -> WideLayout | None:
    """The wide layout of a Parquet file with ``schema``, or None when it is not wide (e.g.
    long). A file that is meant to be wide but cannot be read as such is refused, naming the
    columns at fault."""
    import pyarrow as pa

    names = schema.names
    if "sample_id" not in names:
        return None
    field = schema.field("loss") if "loss" in names else None
    if field is not None and (
        pa.types.is_list(field.type)
        or pa.types.is_fixed_size_list(field.type)
        or pa.types.is_large_list(field.type)
    ):
        return _list_layout(schema, path)
    if "checkpoint" in names:
        return None  # long: one row per (sample, checkpoint)
    matches = [(m.group(1), int(m.group(2)), n) for n in names if (m := _COLUMN_NAME.match(n))]
    unparsed = [n for n in names if n.startswith(_CHANNEL_PREFIXES) and not _COLUMN_NAME.match(n)]
    if not matches and not unparsed:
        return None
    if unparsed:
        raise BadInputError(
            f"--loss {path}: columns {unparsed[:5]} are not <channel>_<checkpoint> with a "
            "checkpoint id >= 0 (e.g. loss_12); rename or drop them"
        )
    loss_ckpts = sorted({k for ch, k, _ in matches if ch == "loss"})
    if not loss_ckpts:
        raise BadInputError(f"--loss {path}: no loss_<checkpoint> columns, only {names[:5]}")
    as_ids(  # Python ints: beyond uint64 they become objects, refused as not integers
        np.array(loss_ckpts if loss_ckpts[-1] < 2**64 else [str(k) for k in loss_ckpts]),
        f"--loss {path}: checkpoint ids of the loss_<checkpoint> columns",
    )
    ckpts = np.array(loss_ckpts, dtype=np.int64)
    columns: dict[str, list[str]] = {}
    dtypes: dict[str, np.dtype] = {}
    types: dict[str, str] = {}
    for c in fmt.CHANNELS:
        have: dict[int, str] = {}
        for ch, k, n in matches:
            if ch != c:
                continue
            if k in have:
                raise BadInputError(
                    f"--loss {path}: columns {have[k]!r} and {n!r} both hold {c} at checkpoint {k}"
                )
            have[k] = n
        if not have:
            continue
        if set(have) != set(ckpts.tolist()):
            raise BadInputError(
                f"--loss {path}: channel {c} has columns for checkpoints {sorted(have)}, loss for {ckpts.tolist()}"
            )
        columns[c] = [have[int(k)] for k in ckpts]
        col_types = {arrow_dtype(schema.field(n).type) for n in columns[c]}
        if len(col_types) > 1:
            raise BadInputError(
                f"--loss {path}: the {c}_<checkpoint> columns have different types "
                f"{sorted(t for _, t in col_types)}; give them one type"
            )
        dtypes[c], types[c] = col_types.pop()
    return WideLayout("columns", ckpts, columns, dtypes, types)


def _list_layout(schema: pa.Schema, path: PathLike) -> WideLayout:
    """The ``wide`` layout: list columns, checkpoint ids from the metadata (or ``0..K-1``)."""
    import pyarrow as pa

    field = schema.field("loss")
    meta = read_meta(schema)
    k = field.type.list_size if pa.types.is_fixed_size_list(field.type) else None
    ckpts = meta.get("checkpoints")
    if ckpts is not None and (k is None or len(ckpts) == k):
        try:
            ckpts = np.asarray(ckpts)
        except ValueError:
            ckpts = np.asarray([str(c) for c in ckpts])
        ckpts = as_checkpoint_ids(ckpts, f"--loss {path}: checkpoint ids in its metadata")
    elif k is not None:
        ckpts = np.arange(k, dtype=np.int64)
    else:
        ckpts = None  # variable lists without metadata: width found on reading
    columns: dict[str, list[str]] = {}
    dtypes: dict[str, np.dtype] = {}
    types: dict[str, str] = {}
    for c in fmt.CHANNELS:
        if c not in schema.names:
            continue
        value_type = getattr(schema.field(c).type, "value_type", None)
        if value_type is None:
            raise BadInputError(
                f"--loss {path}: column {c} is {schema.field(c).type}; in a wide file every "
                "channel is a list column like loss"
            )
        columns[c] = [c]
        dtypes[c], types[c] = arrow_dtype(value_type)
    return WideLayout(
        "wide", ckpts if ckpts is not None else np.zeros(0, np.int64), columns, dtypes, types
    )


def is_wide_parquet(path: PathLike) -> bool:
    """Whether ``path`` is a Parquet file in the ``wide`` or ``columns`` layout."""
    import pyarrow.parquet as pq

    try:
        return wide_layout(pq.read_schema(path), path) is not None
    except Exception:  # unreadable or a broken wide file: the importers report it
        return False


def import_wide_parquet(
    lake_path: Target,
    split: str,
    loss: PathLike,
    labels: PathLike | None = None,
    *,
    groups: PathLike | None = None,
    sample_ids: PathLike | None = None,
    num_classes: int | None = None,
    dtypes: Mapping[str, str] | None = None,
    row_chunk: int = fmt.DEFAULT_ROW_CHUNK,
    run: str | None = None,
) -> ImportResult:
    """Import a wide Parquet file (``wide`` or ``columns`` layout, e.g. from ``cld-lake export``).

    Sample ids come from the file's ``sample_id`` column; labels from its ``label`` column
    when ``labels`` is None or the file itself, else from ``labels`` (``.npy`` aligned with the
    rows, or ``.parquet`` with ``sample_id, label``); or groups from ``groups``
    (:func:`~cld_lake.lake.import_file`), or from the file's ``group`` column when it has no
    ``label`` column. Checkpoint ids come from the column names
    (``columns``) or the file's ``cld_lake`` metadata (``wide``; default ``0..K-1``). The file
    is checked in full before anything is written, with the type rules of every importer
    (:mod:`._validate`).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_import_options(split, num_classes, dtypes, row_chunk)
    path = Path(loss)
    what = f"--loss {path}"
    schema = parquet_schema(path, "--loss")
    if sample_ids is not None:
        raise BadInputError(
            "--sample-ids: not used with a wide .parquet --loss (its sample_id column carries them)"
        )
    layout = wide_layout(schema, path)
    if layout is None:
        raise BadInputError(
            f"{what}: not a wide trajectory file (needs sample_id and a list column loss, or loss_<checkpoint> columns)"
        )
    # the type rules, on the schema: nothing is read yet
    id_dtype, id_type = arrow_dtype(schema.field("sample_id").type)
    as_ids(np.zeros(0, id_dtype), f"{what} column sample_id", id_type)
    for c in layout.columns:
        check_channel_dtype(c, layout.dtypes[c], what, layout.types[c])
    try:
        pf = pq.ParquetFile(path)
        ids_col = pf.read(columns=["sample_id"]).column("sample_id")
        if ids_col.null_count:
            raise BadInputError(f"{what}: sample_id has {ids_col.null_count} null values")
        ids = as_ids(ids_col.to_numpy(), f"{what} column sample_id")
        if not len(ids):
            raise BadInputError(f"{what}: no rows; nothing to import")
        samples = _wide_groups(pf, path, labels, groups, ids, num_classes)
        width = _check_values(pf, path, layout)
    except (OSError, pa.ArrowException) as exc:
        raise BadInputError(f"{what}: could not be read ({one_line(exc)})") from exc
    ckpts = layout.checkpoints if len(layout.checkpoints) else np.arange(width, dtype=np.int64)
    if len(ckpts) != width:
        raise BadInputError(
            f"{what}: lists hold {width} values but the metadata names {len(ckpts)} checkpoints"
        )
    channels = {c: channel_dtype(c, layout.dtypes[c], dtypes) for c in layout.columns}

    def make_source(rows: np.ndarray | None) -> _WideRows:
        return _WideRows(pf, layout, width, rows, what)

    return import_rows(
        lake_path, split, samples, ckpts, channels, make_source, num_classes, row_chunk, run
    )


def _wide_groups(
    pf: pq.ParquetFile,
    path: Path,
    labels: PathLike | None,
    groups: PathLike | None,
    ids: np.ndarray,
    num_classes: int | None,
) -> ImportSamples:
    """The groups of a wide file's rows: ``groups``, else ``labels``, else the file's ``group``
    column when it holds names or there is no ``label`` column, else its ``label`` column. (An
    export of named groups carries both, the ids as ``label`` and the names as ``group``: the
    names are what the new lake numbers.)"""
    names = pf.schema_arrow.names
    what = f"--loss {path} column group"
    if groups is not None:
        found = load_groups(groups, len(ids), lambda: ids)
    elif (
        labels is None
        and "group" in names
        and (groups_type(pf.schema_arrow.field("group").type, what) or "label" not in names)
    ):
        found = scan(ParquetColumn(pf, "group", what), what)
    else:
        label_arr = as_labels(_wide_labels(pf, path, labels, ids), "--labels", num_classes)
        found = scan(ArrayColumn(label_arr), "--labels", names=False)
    check_classes(found, num_classes, found.what)
    return found.with_ids(ArrayColumn(ids))


def _wide_labels(
    pf: pq.ParquetFile, path: Path, labels: PathLike | None, ids: np.ndarray
) -> np.ndarray:
    if labels is None or Path(labels).resolve() == path.resolve():  # the file's own column
        if "label" not in pf.schema_arrow.names:
            raise BadInputError(
                f"--loss {path}: no label column; give --labels FILE (.npy or .parquet with sample_id, label)"
            )
        col = pf.read(columns=["label"]).column("label")
        if col.null_count:
            raise BadInputError(f"--loss {path}: label has {col.null_count} null values")
        dtype, type_label = arrow_dtype(col.type)
        if dtype.kind != "f":  # float labels are refused after the read: NaN is named
            as_labels(np.zeros(0, dtype), f"--loss {path} column label", type_label=type_label)
        return as_labels(col.to_numpy(), f"--loss {path} column label")
    from cld_lake import _duckdb

    con = _duckdb.connect()
    try:
        return load_labels(con, labels, ids)
    finally:
        con.close()


def _check_values(pf: pq.ParquetFile, path: Path, layout: WideLayout) -> int:
    """A pass over the value columns: no nulls, every list the same length, correct 0/1.
    Returns the width."""
    import pyarrow as pa
    import pyarrow.compute as pc

    what = f"--loss {path}"
    cols = [n for names in layout.columns.values() for n in names]
    channel_of = {n: c for c, names in layout.columns.items() for n in names}
    width = len(layout.checkpoints) if layout.kind == "columns" else None
    for batch in pf.iter_batches(columns=cols, batch_size=65536):
        for name in cols:
            col = batch.column(name)
            if col.null_count:
                raise BadInputError(f"{what}: column {name} has {col.null_count} null rows")
            values = col
            if layout.kind == "wide":
                if pa.types.is_fixed_size_list(col.type):
                    lengths = np.array([col.type.list_size])
                else:
                    lengths = np.unique(pc.list_value_length(col).to_numpy())
                values = col.flatten()
                if values.null_count:
                    raise BadInputError(f"{what}: column {name} holds null values")
                if len(lengths) > 1 or (width is not None and len(lengths) and lengths[0] != width):
                    raise BadInputError(
                        f"{what}: column {name} has lists of lengths {sorted(set(lengths.tolist()) | ({width} if width else set()))}; "
                        "every sample needs a value at every checkpoint"
                    )
                if len(lengths):
                    width = int(lengths[0])
            if channel_of[name] == "correct":
                check_correct_values(values.to_numpy(zero_copy_only=False), what)
    if not width:
        raise BadInputError(f"{what}: no checkpoint values")
    return width


class _WideRows:
    """Dense ``(rows, T)`` blocks from a wide file, for the split's row order.

    ``rows`` None: the file's row order is the split's (sequential read). Otherwise split row
    ``r`` is file row ``rows[r]``: the row groups needed are read (the last one cached).
    """

    def __init__(
        self,
        pf: pq.ParquetFile,
        layout: WideLayout,
        width: int,
        rows: np.ndarray | None,
        what: str,
    ) -> None:
        self.pf, self.layout, self.width, self.rows, self.what = pf, layout, width, rows, what
        self._iter = None if rows is not None else self._sequential()
        self._pending: dict[str, np.ndarray] | None = None
        meta = pf.metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self._group_starts = np.cumsum([0, *sizes])
        self._cache: tuple[int, dict[str, np.ndarray]] | None = None

    def _dense(self, table: pa.Table) -> dict[str, np.ndarray]:
        out = {}
        n = table.num_rows
        for channel, names in self.layout.columns.items():
            if self.layout.kind == "wide":
                col = table.column(names[0]).combine_chunks()
                out[channel] = col.flatten().to_numpy(zero_copy_only=False).reshape(n, self.width)
            else:
                out[channel] = np.column_stack(
                    [table.column(nm).to_numpy(zero_copy_only=False) for nm in names]
                ).reshape(n, self.width)
        return out

    def _sequential(self) -> Iterator[dict[str, np.ndarray]]:
        import pyarrow as pa

        cols = [n for names in self.layout.columns.values() for n in names]
        for batch in self.pf.iter_batches(columns=cols, batch_size=65536):
            yield self._dense(pa.Table.from_batches([batch]))

    def __call__(self, a: int, b: int) -> dict[str, np.ndarray]:
        import pyarrow as pa

        try:
            return self._rows(a, b)
        except (OSError, pa.ArrowException, StopIteration) as exc:  # changed since the check
            raise BadInputError(f"{self.what}: could not be read ({one_line(exc)})") from exc

    def _rows(self, a: int, b: int) -> dict[str, np.ndarray]:
        if self.rows is None:
            return self._next_rows(b - a)
        src = self.rows[a:b]
        out = {c: np.empty((b - a, self.width), dtype=dt_) for c, dt_ in self.layout.dtypes.items()}
        groups = np.searchsorted(self._group_starts, src, side="right") - 1
        for g in np.unique(groups):
            dense = self._group(int(g))
            hit = groups == g
            for c in out:
                out[c][hit] = dense[c][src[hit] - self._group_starts[g]]
        return out

    def _group(self, g: int) -> dict[str, np.ndarray]:
        if self._cache is None or self._cache[0] != g:
            cols = [n for names in self.layout.columns.values() for n in names]
            self._cache = (g, self._dense(self.pf.read_row_group(g, columns=cols)))
        return self._cache[1]

    def _next_rows(self, need: int) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {c: [] for c in self.layout.columns}
        have = 0
        while have < need:
            if self._pending is None:
                self._pending = next(self._iter)  # type: ignore[arg-type]
            first = next(iter(self._pending.values()))
            take = min(need - have, len(first))
            for c in parts:
                parts[c].append(self._pending[c][:take])
            rest = {c: v[take:] for c, v in self._pending.items()}
            self._pending = rest if len(next(iter(rest.values()))) else None
            have += take
        return {c: np.concatenate(v) for c, v in parts.items()}
