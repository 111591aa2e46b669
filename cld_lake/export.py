"""Trajectories to and from Parquet, for Spark, pandas or any Parquet reader.

Export streams a split through :meth:`Split.blocks` into a ``pyarrow.parquet.ParquetWriter``,
one row group per block (memory: one block). Three layouts:

``wide`` (default)
    one row per sample: ``sample_id, label, loss`` with ``loss`` a fixed-size list of the
    checkpoints' values (``correct``, ``margin`` likewise when exported).
``columns``
    one row per sample, one column per checkpoint and channel: ``loss_0, loss_1, ...``.
``long``
    one row per (sample, checkpoint): ``sample_id, label, checkpoint, loss[, correct, margin]``
    (what ``cld-lake import --loss FILE.parquet`` reads back).

The Parquet key-value metadata ``cld_lake`` records the split, checkpoint ids, channels, lake
identity, creation time and version. :func:`import_wide_parquet` reads the ``wide`` and
``columns`` layouts back into a lake.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cld_lake.errors import BadInputError, InputFileNotFoundError
from cld_lake.lake import _format as fmt
from cld_lake.lake.store import Lake

LAYOUTS = ("wide", "columns", "long")
METADATA_KEY = b"cld_lake"
EXPORT_KIND = "cld_lake.trajectories"
LONG_ROW_GROUP = 1 << 20  # rows per row group of the long layout
_COLUMN_NAME = re.compile(r"^(loss|correct|margin)_(\d+)$")


@dataclass(frozen=True)
class ExportResult:
    path: Path
    layout: str
    rows: int
    samples: int
    checkpoints: list[int]
    row_groups: int


def _arrow_type(dtype: str) -> Any:
    import pyarrow as pa

    # float16 is widened: Spark and older readers have no half floats
    return {
        "float16": pa.float32(),
        "float32": pa.float32(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
    }[dtype]


def export_schema(split: Any, layout: str, channels: Sequence[str], ckpts: np.ndarray) -> Any:
    import pyarrow as pa

    fields = [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("label", pa.int64(), nullable=False),
    ]
    if layout == "long":
        fields.append(pa.field("checkpoint", pa.int64(), nullable=False))
    for c in channels:
        kind = _arrow_type(split.channels[c])
        if layout == "wide":
            fields.append(pa.field(c, pa.list_(kind, len(ckpts))))
        elif layout == "columns":
            fields += [pa.field(f"{c}_{int(k)}", kind) for k in ckpts]
        else:
            fields.append(pa.field(c, kind))
    return pa.schema(fields)


def export_trajectories(
    lake: Lake | str | os.PathLike[str],
    split: str,
    out: str | os.PathLike[str],
    *,
    layout: str = "wide",
    channels: Sequence[str] | None = None,
    checkpoints: Any = None,
    block_rows: int | None = None,
) -> ExportResult:
    """Write the trajectories of ``split`` to ``out`` (Parquet), streamed in row groups.

    Parameters
    ----------
    lake : Lake or path
    split : str
    out : path
        A ``.parquet`` file outside the lake; written atomically (temp file + rename).
    layout : {"wide", "columns", "long"}
    channels : sequence of str, optional
        Channels to export (default: every stored channel).
    checkpoints : window or ids, optional
        ``"START:STOP[:STEP]"`` over checkpoint positions, or a list of ids (default: all).
    block_rows : int, optional
        Samples per row block / row group (default: the split's chunk rows).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cld_lake._io import atomic_path
    from cld_lake._version import __version__

    lake = lake if isinstance(lake, Lake) else Lake(lake)
    if layout not in LAYOUTS:
        raise BadInputError(f"--layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    sp = lake.split(split)
    channels = [c for c in fmt.CHANNELS if c in sp.channels] if channels is None else list(channels)
    for c in channels:
        if c not in sp.channels:
            raise BadInputError(f"--channels {c}: split {split!r} stores {', '.join(sp.channels)}")
    ckpts = sp.select_checkpoints(checkpoints)
    if not len(ckpts):
        raise BadInputError(
            f"--checkpoints {checkpoints}: selects no checkpoint of split {split!r}"
        )
    out = _check_out(Path(out), lake)
    schema = export_schema(sp, layout, channels, ckpts)
    meta = {
        "kind": EXPORT_KIND,
        "layout": layout,
        "split": split,
        "checkpoints": [int(c) for c in ckpts],
        "channels": {c: sp.channels[c] for c in channels},
        "samples": sp.num_samples,
        "lake": {"lake_id": lake.lake_id, "path": str(lake.path.resolve())},
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cld_lake_version": __version__,
    }
    schema = schema.with_metadata({METADATA_KEY: json.dumps(meta, sort_keys=True)})
    rows = groups = 0
    with atomic_path(out) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            for block in sp.blocks(block_rows=block_rows, checkpoints=ckpts, channels=channels):
                for batch in _tables(block, layout, channels, schema):
                    writer.write_table(
                        pa.Table.from_batches([batch], schema=schema), row_group_size=batch.num_rows
                    )
                    rows += batch.num_rows
                    groups += 1
    return ExportResult(out, layout, rows, sp.num_samples, [int(c) for c in ckpts], groups)


def _tables(block: Any, layout: str, channels: Sequence[str], schema: Any) -> Iterator[Any]:
    import pyarrow as pa

    n, k = len(block), len(block.checkpoints)
    if n == 0:
        return
    arrays: list[Any]
    if layout == "long":
        step = max(1, LONG_ROW_GROUP // max(k, 1))
        for a in range(0, n, step):
            b = min(a + step, n)
            arrays = [
                pa.array(np.repeat(block.sample_ids[a:b], k)),
                pa.array(np.repeat(block.labels[a:b], k)),
                pa.array(np.tile(block.checkpoints, b - a)),
            ]
            arrays += [pa.array(_widen(block.values[c][a:b]).reshape(-1)) for c in channels]
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)
        return
    arrays = [pa.array(block.sample_ids), pa.array(block.labels)]
    for c in channels:
        values = _widen(block.values[c])
        if layout == "wide":
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), k))
        else:
            arrays += [pa.array(np.ascontiguousarray(values[:, j])) for j in range(k)]
    yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def _widen(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float32) if values.dtype == np.float16 else values


def _check_out(out: Path, lake: Lake) -> Path:
    if out.suffix.lower() != ".parquet":
        raise BadInputError(f"--out {out}: export writes Parquet; name the file *.parquet")
    if out.expanduser().resolve().is_relative_to(lake.path.resolve()):
        raise BadInputError(f"--out {out}: inside the lake {lake.path}; write the export elsewhere")
    if not out.expanduser().parent.is_dir():
        raise BadInputError(
            f"--out {out}: directory {out.expanduser().parent} does not exist; create it first"
        )
    return out


# --- import of the wide layouts ----------------------------------------------------------
@dataclass(frozen=True)
class WideLayout:
    """How a wide Parquet file holds its trajectories."""

    kind: str  # "wide" (list columns) or "columns" (one column per checkpoint)
    checkpoints: np.ndarray
    columns: dict[str, list[str]]  # channel -> the file's column(s) holding it, in checkpoint order
    dtypes: dict[str, Any]  # channel -> numpy dtype of the values


def wide_layout(path: str | os.PathLike[str]) -> WideLayout | None:
    """The wide layout of a Parquet file, or None when it is not wide (e.g. long)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    names = schema.names
    if "sample_id" not in names:
        return None
    field = schema.field("loss") if "loss" in names else None
    if field is not None and (
        pa.types.is_list(field.type)
        or pa.types.is_fixed_size_list(field.type)
        or pa.types.is_large_list(field.type)
    ):
        meta = _file_meta(schema)
        k = field.type.list_size if pa.types.is_fixed_size_list(field.type) else None
        ckpts = meta.get("checkpoints")
        if ckpts is not None and (k is None or len(ckpts) == k):
            ckpts = np.asarray(ckpts, dtype=np.int64)
        elif k is not None:
            ckpts = np.arange(k, dtype=np.int64)
        else:
            ckpts = None  # variable lists without metadata: width found on reading
        columns: dict[str, list[str]] = {}
        dtypes: dict[str, Any] = {}
        for c in fmt.CHANNELS:
            if c in names and hasattr(schema.field(c).type, "value_type"):
                columns[c] = [c]
                dtypes[c] = schema.field(c).type.value_type.to_pandas_dtype()
        return WideLayout(
            "wide", ckpts if ckpts is not None else np.zeros(0, np.int64), columns, dtypes
        )
    matches = [(m.group(1), int(m.group(2)), n) for n in names if (m := _COLUMN_NAME.match(n))]
    if not any(ch == "loss" for ch, _, _ in matches):
        return None
    ckpts = np.array(sorted({k for ch, k, _ in matches if ch == "loss"}), dtype=np.int64)
    columns, dtypes = {}, {}
    for c in fmt.CHANNELS:
        have = {k: n for ch, k, n in matches if ch == c}
        if not have:
            continue
        if set(have) != set(ckpts.tolist()):
            raise BadInputError(
                f"--loss {path}: channel {c} has columns for checkpoints {sorted(have)}, loss for {ckpts.tolist()}"
            )
        columns[c] = [have[int(k)] for k in ckpts]
        dtypes[c] = schema.field(columns[c][0]).type.to_pandas_dtype()
    return WideLayout("columns", ckpts, columns, dtypes)


def is_wide_parquet(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a Parquet file in the ``wide`` or ``columns`` layout."""
    try:
        return wide_layout(path) is not None
    except Exception:  # unreadable: let the long importer report it
        return False


def _file_meta(schema: Any) -> dict[str, Any]:
    try:
        meta = json.loads((schema.metadata or {}).get(METADATA_KEY, b"{}"))
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def import_wide_parquet(
    lake_path: str | os.PathLike[str],
    split: str,
    loss: str | os.PathLike[str],
    labels: str | os.PathLike[str] | None = None,
    *,
    sample_ids: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    dtypes: Mapping[str, str] | None = None,
    row_chunk: int = fmt.DEFAULT_ROW_CHUNK,
) -> Any:
    """Import a wide Parquet file (``wide`` or ``columns`` layout, e.g. from :func:`export_trajectories`).

    Sample ids come from the file's ``sample_id`` column; labels from its ``label`` column
    when ``labels`` is None or the file itself, else from ``labels`` (``.npy`` aligned with the
    rows, or ``.parquet`` with ``sample_id, label``). Checkpoint ids come from the column names
    (``columns``) or the file's ``cld_lake`` metadata (``wide``; default ``0..K-1``). The file
    is checked in full before anything is written.
    """
    import pyarrow.parquet as pq

    from cld_lake.lake import importer

    path = Path(loss)
    if not path.exists():
        raise InputFileNotFoundError(f"--loss {path}: no such file")
    if sample_ids is not None:
        raise BadInputError(
            "--sample-ids: not used with a wide .parquet --loss (its sample_id column carries them)"
        )
    layout = wide_layout(path)
    if layout is None:
        raise BadInputError(
            f"--loss {path}: not a wide trajectory file (needs sample_id and a list column loss, or loss_<checkpoint> columns)"
        )
    pf = pq.ParquetFile(path)
    ids_col = pf.read(columns=["sample_id"]).column("sample_id")
    if not str(ids_col.type).startswith(("int", "uint")):
        raise BadInputError(f"--loss {path}: sample_id is {ids_col.type}, expected integers")
    if ids_col.null_count:
        raise BadInputError(f"--loss {path}: {ids_col.null_count} rows have no sample_id")
    ids = ids_col.to_numpy().astype(np.int64)
    if len(np.unique(ids)) != len(ids):
        raise BadInputError(
            f"--loss {path}: {len(ids) - len(np.unique(ids))} duplicate sample ids; one row per sample"
        )
    if not len(ids):
        raise BadInputError(f"--loss {path}: no rows")
    label_arr = _wide_labels(pf, path, labels, ids)
    width = _check_values(pf, path, layout)
    ckpts = layout.checkpoints if len(layout.checkpoints) else np.arange(width, dtype=np.int64)
    if len(ckpts) != width:
        raise BadInputError(
            f"--loss {path}: lists hold {width} values but the metadata names {len(ckpts)} checkpoints"
        )
    if len(np.unique(ckpts)) != len(ckpts) or (ckpts < 0).any():
        raise BadInputError(
            f"--loss {path}: checkpoint ids {ckpts.tolist()[:10]} must be unique and >= 0"
        )
    channels = {
        c: importer._channel_dtype(c, np.zeros(0, dtype=layout.dtypes[c]), dtypes)
        for c in layout.columns
    }

    def make_source(rows: np.ndarray | None) -> Any:
        return _WideRows(pf, layout, width, rows)

    return importer._import(
        lake_path, split, ids, label_arr, ckpts, channels, make_source, num_classes, row_chunk
    )


def _wide_labels(pf: Any, path: Path, labels: Any, ids: np.ndarray) -> np.ndarray:
    same = labels is None or Path(labels).resolve() == path.resolve()
    if same:
        if "label" not in pf.schema_arrow.names:
            raise BadInputError(
                f"--loss {path}: no label column; give --labels FILE (.npy or .parquet with sample_id, label)"
            )
        col = pf.read(columns=["label"]).column("label")
        if col.null_count or not str(col.type).startswith(("int", "uint")):
            raise BadInputError(
                f"--loss {path}: column label must be integers without nulls, got {col.type}"
            )
        return col.to_numpy().astype(np.int64)
    import duckdb

    from cld_lake.lake import importer

    con = duckdb.connect()
    try:
        return importer._load_long_labels(con, labels, ids)
    finally:
        con.close()


def _check_values(pf: Any, path: Path, layout: WideLayout) -> int:
    """A pass over the value columns: no nulls, every list the same length. Returns the width."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols = [n for names in layout.columns.values() for n in names]
    width = len(layout.checkpoints) if layout.kind == "columns" else None
    for batch in pf.iter_batches(columns=cols, batch_size=65536):
        for name in cols:
            col = batch.column(name)
            if col.null_count:
                raise BadInputError(f"--loss {path}: column {name} has {col.null_count} null rows")
            if layout.kind != "wide":
                continue
            if pa.types.is_fixed_size_list(col.type):
                lengths = np.array([col.type.list_size])
            else:
                lengths = np.unique(pc.list_value_length(col).to_numpy())
            if col.flatten().null_count:
                raise BadInputError(f"--loss {path}: column {name} holds null values")
            if len(lengths) > 1 or (width is not None and len(lengths) and lengths[0] != width):
                raise BadInputError(
                    f"--loss {path}: column {name} has lists of lengths {sorted(set(lengths.tolist()) | ({width} if width else set()))}; "
                    "every sample needs a value at every checkpoint"
                )
            if len(lengths):
                width = int(lengths[0])
    if not width:
        raise BadInputError(f"--loss {path}: no checkpoint values")
    return width


class _WideRows:
    """Dense ``(rows, T)`` blocks from a wide file, for the split's row order.

    ``rows`` None: the file's row order is the split's (sequential read). Otherwise split row
    ``r`` is file row ``rows[r]``: the row groups needed are read (the last one cached).
    """

    def __init__(self, pf: Any, layout: WideLayout, width: int, rows: np.ndarray | None) -> None:
        self.pf, self.layout, self.width, self.rows = pf, layout, width, rows
        self._iter = None if rows is not None else self._sequential()
        self._pending: dict[str, np.ndarray] | None = None
        meta = pf.metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self._group_starts = np.cumsum([0, *sizes])
        self._cache: tuple[int, dict[str, np.ndarray]] | None = None

    def _dense(self, table: Any) -> dict[str, np.ndarray]:
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
