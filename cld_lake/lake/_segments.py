"""Segments: immutable Zarr v3 groups holding a (N, width) array per channel.

A checkpoint is committed as a new segment of width 1 (cheap to append); segments are merged
into wider ones (compaction) so row-block scans read few, large, contiguous chunks. Every
chunk carries a CRC32C checksum so ``verify`` detects damaged bytes.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cld_lake.lake._format import chunk_rows_for


def _zarr():  # zarr is imported on first use: `cld-lake --help` stays fast
    import zarr

    return zarr


def new_segment_name() -> str:
    return f"seg-{uuid.uuid4().hex[:16]}.zarr"


def create_segment(
    path: Path, num_rows: int, width: int, channels: Mapping[str, str], row_chunk: int
) -> dict[str, object]:
    """Create empty arrays for a new segment and return them by channel."""
    zarr = _zarr()
    from zarr.codecs import Crc32cCodec

    group = zarr.open_group(store=str(path), mode="w-")
    arrays: dict[str, object] = {}
    for channel, dtype in channels.items():
        itemsize = np.dtype(dtype).itemsize
        rows = chunk_rows_for(width, itemsize, row_chunk)
        arrays[channel] = group.create_array(
            name=channel,
            shape=(num_rows, width),
            chunks=(min(rows, max(num_rows, 1)), max(width, 1)),
            dtype=dtype,
            fill_value=False if dtype == "bool" else np.nan,
            compressors=[Crc32cCodec()],
            config={"write_empty_chunks": True},
        )
    return arrays


def open_segment(path: Path) -> dict[str, object]:
    """Open a segment read-only; return its arrays by channel."""
    zarr = _zarr()
    group = zarr.open_group(store=str(path), mode="r")
    return {name: arr for name, arr in group.arrays()}


def delete_segment(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
