"""The ``losses`` view's source: one split's long form, streamed from the trajectory store."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cld_lake._duckdb import ScanSource
from cld_lake.lake import CHANNELS
from cld_lake.lake.store import Block, Split
from cld_lake.sql import _pushdown as pd

# Rows of the long form per Arrow batch handed to DuckDB.
LONG_BATCH_ROWS = 1 << 17
_ARROW_TYPES = {"float32": "float32", "float16": "float32", "float64": "float64", "bool": "bool_"}


@dataclass
class ScanStats:
    """What the ``losses`` scans of one connection read (for tests and ``--stats``).

    ``row_blocks`` counts the row blocks read from the trajectory store, ``values`` the stored
    values decoded (rows x checkpoints x channels), ``bytes`` those values' stored size.
    """

    scans: int = 0
    row_blocks: int = 0
    values: int = 0
    bytes: int = 0
    rows_out: int = 0


class LossSource(ScanSource):
    """The long form of one split as a DuckDB scan source with filter and projection pushdown.

    Declared columns: ``sample_id, label, checkpoint, <channels...>``. DuckDB offers each filter
    of a query to :meth:`accepts`; those on the id columns compared with integer constants are
    accepted and applied here exactly, after pruning: checkpoints the filter rules out are not
    read, and only the row blocks holding rows it may keep are read. Memory is one row block.
    """

    def __init__(
        self, split: Split, block_rows: int | None = None, stats: ScanStats | None = None
    ) -> None:
        super().__init__()
        self.split = split
        self.block_rows = int(block_rows or split.row_chunk)
        self.stats = stats if stats is not None else ScanStats()
        known = [c for c in CHANNELS if c in split.channels]
        self.channel_order = known + [c for c in split.channels if c not in known]  # loss first

    @property
    def schema(self) -> Any:
        import pyarrow as pa

        fields = [pa.field(c, pa.int64(), nullable=False) for c in pd.ID_COLUMNS]
        for channel in self.channel_order:
            arrow_type = getattr(pa, _ARROW_TYPES[self.split.channels[channel]])()
            fields.append(pa.field(channel, arrow_type))
        return pa.schema(fields)

    def accepts(self, predicate: Any) -> bool:
        return pd.supported(predicate)

    def plan(self, filters: Sequence[Any]) -> tuple[np.ndarray, np.ndarray | None]:
        """Checkpoints to read and a mask of the rows that may match (None: all rows)."""
        split = self.split
        ckpts = split.checkpoint_ids
        named = set().union(*(pd.names(f) for f in filters)) if filters else set()
        if "checkpoint" in named:
            ckpts = ckpts[pd.all_true(filters, {"checkpoint": ckpts}, len(ckpts))]
        rows = None
        if named & {"sample_id", "label"}:
            known = {"sample_id": split.sample_ids, "label": split.labels}
            rows = pd.all_true(filters, known, split.num_samples)
        return ckpts, rows

    def row_ranges(self, rows: np.ndarray | None) -> list[tuple[int, int, int]]:
        """``(aligned_start, first_row, stop)`` of each run of row blocks holding wanted rows."""
        n, size = self.split.num_samples, self.block_rows
        if rows is None:
            return [(0, 0, n)] if n else []
        hits = np.flatnonzero(rows)
        if not len(hits):
            return []
        blocks = np.unique(hits // size)
        breaks = np.flatnonzero(np.diff(blocks) > 1) + 1
        ranges = []
        for run in np.split(blocks, breaks):
            first = int(hits[np.searchsorted(hits, run[0] * size)])
            last = int(hits[np.searchsorted(hits, (run[-1] + 1) * size) - 1])
            ranges.append((int(run[0]) * size, first, last + 1))
        return ranges

    def batches(
        self, columns: list[str] | None = None, filters: Sequence[Any] = ()
    ) -> Iterator[Any]:
        """The long form as Arrow record batches, only ``columns``, only rows passing ``filters``."""
        import pyarrow as pa

        split, stats = self.split, self.stats
        stats.scans += 1
        columns = list(self.schema.names) if columns is None else columns
        channels = [c for c in columns if c in split.channels]
        ckpts, rows = self.plan(filters)
        if not len(ckpts):
            return
        itemsize = sum(np.dtype(split.channels[c]).itemsize for c in channels)
        out_schema = pa.schema([self.schema.field(c) for c in columns])
        for aligned, first, stop in self.row_ranges(rows):
            blocks = split.blocks(
                block_rows=self.block_rows,
                checkpoints=ckpts,
                channels=channels,
                start=aligned,
                stop=stop,
            )
            for block in blocks:
                stats.row_blocks += 1
                stats.values += len(block) * len(ckpts) * len(channels)
                stats.bytes += len(block) * len(ckpts) * itemsize
                keep = np.arange(len(block)) + block.start >= first
                if rows is not None:
                    keep &= rows[block.start : block.start + len(block)]
                yield from self._long_batches(block, keep, columns, channels, filters, out_schema)

    def _long_batches(
        self,
        block: Block,
        keep: np.ndarray,
        columns: list[str],
        channels: list[str],
        filters: Sequence[Any],
        schema: Any,
    ) -> Iterator[Any]:
        import pyarrow as pa

        idx = np.flatnonzero(keep)
        k = len(block.checkpoints)
        step = max(1, LONG_BATCH_ROWS // max(k, 1))
        for a in range(0, len(idx), step):
            sel = idx[a : a + step]
            n = len(sel)
            long = {
                "sample_id": np.repeat(block.sample_ids[sel], k),
                "label": np.repeat(block.labels[sel], k),
                "checkpoint": np.tile(block.checkpoints, n),
            }
            for channel in channels:
                values = block.values[channel][sel].reshape(-1)
                long[channel] = values.astype(np.float32) if values.dtype == np.float16 else values
            if filters:  # exact: every column the accepted filters name is known here
                mask = pd.all_true(filters, long, n * k)
                if not mask.all():
                    long = {c: v[mask] for c, v in long.items()}
            rows_out = len(long["sample_id"])
            if not rows_out:
                continue
            self.stats.rows_out += rows_out
            yield pa.RecordBatch.from_arrays([pa.array(long[c]) for c in columns], schema=schema)
