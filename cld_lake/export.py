"""Trajectories to Parquet, for Spark, pandas or any Parquet reader.

Export streams a split through :meth:`Split.blocks` into a ``pyarrow.parquet.ParquetWriter``,
one row group per block (memory: one block). Three layouts:

``wide`` (default)
    one row per sample: ``sample_id, label[, group], loss`` with ``loss`` a fixed-size list of the
    checkpoints' values (``correct``, ``margin`` likewise when exported).
``columns``
    one row per sample, one column per checkpoint and channel: ``loss_0, loss_1, ...``.
``long``
    one row per (sample, checkpoint): ``sample_id, label[, group], checkpoint, loss[, correct,
    margin]`` (what ``cld-lake import --loss FILE.parquet`` reads back).

A lake of named groups adds ``group``, each sample's group name (dictionary-encoded: the names
once per row group), the column an import reads names from, so an export imports back named.

The Parquet key-value metadata ``cld_lake`` records the split, checkpoint ids, channels, lake
identity, creation time and version. ``cld-lake import`` (``cld_lake.lake.import_file``) reads
every layout back into a lake.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cld_lake._io import atomic_output, check_output_path
from cld_lake._meta import with_meta
from cld_lake._types import Layout, choices
from cld_lake._version import __version__
from cld_lake.errors import BadInputError
from cld_lake.lake import CHANNELS
from cld_lake.lake.store import Block, CheckpointSelection, Lake, Split

if TYPE_CHECKING:
    import pyarrow as pa

EXPORT_KIND = "cld_lake.trajectories"
LONG_ROW_GROUP = 1 << 20  # rows per row group of the long layout

#: the column of group names: the one an import reads names from
GROUP_COLUMN = "group"


@dataclass(frozen=True)
class ExportResult:
    path: Path
    layout: Layout
    rows: int
    samples: int
    checkpoints: list[int]
    row_groups: int


def _arrow_type(dtype: str) -> pa.DataType:
    import pyarrow as pa

    # float16 is widened: Spark and older readers have no half floats
    return {
        "float16": pa.float32(),
        "float32": pa.float32(),
        "float64": pa.float64(),
        "bool": pa.bool_(),
    }[dtype]


def _export_schema(
    split: Split, layout: Layout, channels: Sequence[str], ckpts: np.ndarray, named: bool
) -> pa.Schema:
    """The Arrow schema of an export of ``channels`` at checkpoints ``ckpts`` in ``layout``."""
    import pyarrow as pa

    fields = [
        pa.field("sample_id", pa.int64(), nullable=False),
        pa.field("label", pa.int64(), nullable=False),
    ]
    if named:
        fields.append(pa.field(GROUP_COLUMN, pa.dictionary(pa.int32(), pa.string()), False))
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
    layout: Layout = "wide",
    channels: Sequence[str] | None = None,
    checkpoints: CheckpointSelection = None,
    block_rows: int | None = None,
    force: bool = False,
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
    force : bool
        Replace ``out`` if it exists (otherwise an existing file is refused).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    lake = (lake if isinstance(lake, Lake) else Lake(lake)).resolve_run()
    if layout not in choices(Layout):
        raise BadInputError(f"--layout {layout!r}: use one of {', '.join(choices(Layout))}")
    sp = lake.split(split)
    channels = [c for c in CHANNELS if c in sp.channels] if channels is None else list(channels)
    for c in channels:
        if c not in sp.channels:
            raise BadInputError(f"--channels {c}: split {split!r} stores {', '.join(sp.channels)}")
    ckpts = sp.select_checkpoints(checkpoints)
    if not len(ckpts):
        raise BadInputError(
            f"--checkpoints {checkpoints}: selects no checkpoint of split {split!r}"
        )
    out = check_output_path(out, lake.root, suffixes=(".parquet",), overwrite=force)
    names = lake.group_names()
    schema = _export_schema(sp, layout, channels, ckpts, names is not None)
    dictionary = None if names is None else pa.array(names, pa.string())
    meta = {
        "kind": EXPORT_KIND,
        "layout": layout,
        "split": split,
        "checkpoints": [int(c) for c in ckpts],
        "channels": {c: sp.channels[c] for c in channels},
        "samples": sp.num_samples,
        "lake": {"lake_id": lake.lake_id, "path": str(lake.root.canonical())},
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cld_lake_version": __version__,
    }
    schema = with_meta(schema, meta)
    rows = groups = 0
    with atomic_output(out) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            for block in sp.blocks(block_rows=block_rows, checkpoints=ckpts, channels=channels):
                for batch in _tables(block, layout, channels, schema, dictionary):
                    writer.write_table(
                        pa.Table.from_batches([batch], schema=schema), row_group_size=batch.num_rows
                    )
                    rows += batch.num_rows
                    groups += 1
    return ExportResult(out, layout, rows, sp.num_samples, [int(c) for c in ckpts], groups)


def _tables(
    block: Block,
    layout: Layout,
    channels: Sequence[str],
    schema: pa.Schema,
    names: pa.Array | None = None,
) -> Iterator[pa.RecordBatch]:
    import pyarrow as pa

    def keys(labels: np.ndarray) -> list[pa.Array]:
        """``label`` and, for named groups, ``group`` (the names, keyed by the same ids)."""
        out = [pa.array(labels)]
        if names is not None:
            out.append(pa.DictionaryArray.from_arrays(pa.array(labels.astype(np.int32)), names))
        return out

    n, k = len(block), len(block.checkpoints)
    if n == 0:
        return
    arrays: list[pa.Array]
    if layout == "long":
        step = max(1, LONG_ROW_GROUP // max(k, 1))
        for a in range(0, n, step):
            b = min(a + step, n)
            arrays = [
                pa.array(np.repeat(block.sample_ids[a:b], k)),
                *keys(np.repeat(block.labels[a:b], k)),
                pa.array(np.tile(block.checkpoints, b - a)),
            ]
            arrays += [pa.array(_widen(block.values[c][a:b]).reshape(-1)) for c in channels]
            yield pa.RecordBatch.from_arrays(arrays, schema=schema)
        return
    arrays = [pa.array(block.sample_ids), *keys(block.labels)]
    for c in channels:
        values = _widen(block.values[c])
        if layout == "wide":
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), k))
        else:
            arrays += [pa.array(np.ascontiguousarray(values[:, j])) for j in range(k)]
    yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def _widen(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float32) if values.dtype == np.float16 else values
