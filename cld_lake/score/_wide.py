"""Wide row batches for the DuckDB and Polars engines.

A batch holds ``r`` (row position in the split), ``label`` and one column per selected
checkpoint ``l0 .. l{K-1}`` in the stored float dtype (float16 widened to float32; exact).
Both engines compute ``e_t = (l_{t+1} - l_t) - (l_1 - l_0)`` in float64 from these columns, the
same operations in the same order as :func:`cld_lake.score._kernel.row_sums`.

The lake is read in its own blocks (``block_rows``, default one stored chunk), but each block is
handed to the engine in slices of at most ``batch_rows`` rows: the engines' working memory
(their float64 temporaries, one per checkpoint) scales with the batch they are given, not
with the block that was read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from cld_lake.lake.store import Split
from cld_lake.score._formula import Reference
from cld_lake.score._passes import Progress

# Rows per batch handed to an engine: DuckDB and Polars near their fastest, with working
# memory a few tens of MB (docs/scores.md).
BATCH_ROWS = 1 << 14


def loss_columns(k: int) -> list[str]:
    return [f"l{i}" for i in range(k)]


def u_columns(n: int) -> list[str]:
    return [f"u{t}" for t in range(n)]


def column_arrays(block_loss: np.ndarray) -> list[np.ndarray]:
    """The columns of a row block as contiguous 1-D arrays (one transpose copy)."""
    loss = block_loss.astype(np.float32) if block_loss.dtype == np.float16 else block_loss
    columns = np.ascontiguousarray(loss.T)
    return list(columns)


def wide_batches(
    split: Split,
    reference: Reference,
    block_rows: int | None = None,
    progress: Progress | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[tuple[np.ndarray, np.ndarray, list[np.ndarray]]]:
    """``(rows, labels, columns)`` of at most ``batch_rows`` rows, block after block.

    ``rows`` are int64 row positions, ``columns`` the K loss columns (contiguous 1-D arrays).
    ``progress`` is told about each block once all of its batches were handed out.
    """
    for block in split.blocks(block_rows=block_rows, checkpoints=reference.checkpoints):
        n = len(block)
        for a in range(0, n, batch_rows):
            b = min(a + batch_rows, n)
            rows = np.arange(block.start + a, block.start + b, dtype=np.int64)
            yield rows, np.asarray(block.labels[a:b]), column_arrays(block.loss[a:b])
        if progress is not None:
            progress(n)


def record_batches(
    split: Split,
    reference: Reference,
    block_rows: int | None = None,
    progress: Progress | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[Any]:
    """Arrow record batches ``(r, label, l0..l{K-1})`` streamed from the block iterator."""
    import pyarrow as pa

    schema = arrow_schema(split, len(reference.checkpoints))
    for rows, labels, columns in wide_batches(split, reference, block_rows, progress, batch_rows):
        arrays = [pa.array(rows), pa.array(labels, pa.int64()), *map(pa.array, columns)]
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def arrow_schema(split: Split, k: int) -> Any:
    import pyarrow as pa

    dtype = pa.float64() if split.channels["loss"] == "float64" else pa.float32()
    fields = [pa.field("r", pa.int64()), pa.field("label", pa.int64())]
    return pa.schema(fields + [pa.field(c, dtype) for c in loss_columns(k)])


def reference_table(reference: Reference) -> Any:
    """The per-class table ``(label, u0..u{n-1})`` as Arrow."""
    import pyarrow as pa

    u = reference.u
    columns = {"label": pa.array(np.arange(u.shape[0], dtype=np.int64))}
    for t, name in enumerate(u_columns(u.shape[1])):
        columns[name] = pa.array(np.ascontiguousarray(u[:, t]))
    return pa.table(columns)
