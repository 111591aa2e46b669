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
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from cld_lake.lake._format import chunk_rows_for

if TYPE_CHECKING:
    import zarr


def new_segment_name() -> str:
    return f"seg-{uuid.uuid4().hex[:16]}.zarr"


def create_segment(
    path: Path, num_rows: int, width: int, channels: Mapping[str, str], row_chunk: int
) -> dict[str, ChunkWriter]:
    """Create empty arrays for a new segment; return a writer for each channel."""
    import zarr  # on first use: `cld-lake --help` stays fast
    from zarr.codecs import Crc32cCodec

    group = zarr.open_group(store=str(path), mode="w-")
    arrays: dict[str, zarr.Array] = {}
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
    return {channel: ChunkWriter(path / channel, arr) for channel, arr in arrays.items()}


def open_segment(path: Path) -> dict[str, zarr.Array]:
    """Open a segment read-only; return its arrays by channel."""
    import zarr  # on first use: `cld-lake --help` stays fast

    group = zarr.open_group(store=str(path), mode="r")
    return {name: arr for name, arr in group.arrays()}


def delete_segment(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class ChunkReader:
    """Reads row ranges of one segment array, straight from its chunk files when it can.

    Segments are written by this package with one layout: a regular grid of full-width
    chunks, the ``bytes`` codec (little endian) and a ``crc32c`` checksum, in a local
    directory. For that layout a chunk file is the raw values plus 4 checksum bytes, so a
    row-block read is one ``readinto`` into a fresh buffer and one checksum: no copies through
    Zarr's codec pipeline. Any other layout (or a partial chunk of another shape) goes
    through Zarr. The checksum is always verified.
    """

    def __init__(self, path: Path, array: zarr.Array) -> None:
        self.array = array
        self.path = path
        self._cached: tuple[int, np.ndarray] | None = None
        self.direct = _is_plain_layout(array)
        if self.direct:
            self.chunk_rows = int(array.chunks[0])
            self.width = int(array.shape[1])
            self.dtype = np.dtype(array.dtype)

    def read(self, a: int, b: int) -> np.ndarray:
        """Rows ``[a, b)``, all columns (a view of a chunk buffer when the range fits one chunk)."""
        if not self.direct or b <= a:
            return np.asarray(self.array[a:b])
        first, last = a // self.chunk_rows, (b - 1) // self.chunk_rows
        if first == last:
            base = first * self.chunk_rows
            return self._chunk(first)[a - base : b - base]
        out = np.empty((b - a, self.width), dtype=self.dtype)
        for i in range(first, last + 1):
            base = i * self.chunk_rows
            lo, hi = max(a, base), min(b, base + self.chunk_rows)
            out[lo - a : hi - a] = self._chunk(i)[lo - base : hi - base]
        return out

    def _chunk(self, i: int) -> np.ndarray:
        if self._cached is not None and self._cached[0] == i:
            return self._cached[1]
        import google_crc32c

        from cld_lake.errors import CorruptLakeError

        nbytes = self.chunk_rows * self.width * self.dtype.itemsize
        buf = np.empty(nbytes + 4, dtype=np.uint8)
        path = self.path / "c" / str(i) / "0"
        try:
            with open(path, "rb", buffering=0) as fh:
                got = fh.readinto(memoryview(buf))
                extra = fh.read(1)
        except FileNotFoundError as exc:
            raise CorruptLakeError(f"{path}: chunk file missing; run `cld-lake verify`") from exc
        if got != nbytes + 4 or extra:
            raise CorruptLakeError(
                f"{path}: chunk has {got} bytes, expected {nbytes + 4}; the file is damaged"
            )
        stored = int(buf[-4:].view("<u4")[0])
        if google_crc32c.value(buf[:-4]) != stored:
            raise CorruptLakeError(f"{path}: checksum mismatch; the chunk is damaged")
        chunk = buf[:-4].view(self.dtype).reshape(self.chunk_rows, self.width)
        chunk.flags.writeable = False  # blocks are views of it: nobody may change another's rows
        self._cached = (i, chunk)
        return chunk


def _is_plain_layout(array: zarr.Array) -> bool:
    try:
        meta = array.metadata.to_dict()
        store = array.store
    except AttributeError:
        return False
    from zarr.storage import LocalStore

    codecs = [c.get("name") for c in meta.get("codecs", [])]
    endian = (meta.get("codecs") or [{}])[0].get("configuration", {}).get("endian", "little")
    shape = meta.get("shape", [])
    chunks = meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape", [])
    key = meta.get("chunk_key_encoding", {})
    return (
        isinstance(store, LocalStore)
        and codecs == ["bytes", "crc32c"]
        and endian == "little"
        and len(shape) == 2
        and len(chunks) == 2
        and chunks[1] == shape[1]
        and key.get("name") == "default"
        and key.get("configuration", {}).get("separator", "/") == "/"
        and np.dtype(str(array.dtype)).byteorder in ("=", "<", "|")
    )


class ChunkWriter:
    """Writes row ranges of a new segment array, straight to its chunk files when it can.

    The mirror of :class:`ChunkReader`: for this package's layout a chunk file is the raw
    little-endian values of a full chunk (the last one padded with the fill value, as Zarr
    stores edge chunks) followed by their CRC32C, which is exactly what Zarr writes, so the
    array stays a plain Zarr array. Row ranges must start on a chunk boundary and cover whole
    chunks (or run to the end of the array); anything else goes through Zarr.
    """

    def __init__(self, path: Path, array: zarr.Array) -> None:
        self.array = array
        self.path = path
        self.direct = _is_plain_layout(array)
        if self.direct:
            self.chunk_rows = int(array.chunks[0])
            self.rows = int(array.shape[0])
            self.width = int(array.shape[1])
            self.dtype = np.dtype(array.dtype)
            fill = array.metadata.fill_value
            self.fill = np.asarray(fill, dtype=self.dtype)

    def write(self, a: int, b: int, values: np.ndarray) -> None:
        aligned = (
            a % self.chunk_rows == 0 and (b % self.chunk_rows == 0 or b == self.rows)
            if self.direct
            else False
        )
        if not aligned or values.shape != (b - a, self.width):
            self.array[a:b] = values
            return
        import google_crc32c

        values = np.ascontiguousarray(values, dtype=self.dtype)
        for start in range(a, b, self.chunk_rows):
            part = values[start - a : min(start - a + self.chunk_rows, b - a)]
            if len(part) < self.chunk_rows:  # the edge chunk is stored at full size
                padded = np.empty((self.chunk_rows, self.width), dtype=self.dtype)
                padded[: len(part)] = part
                padded[len(part) :] = self.fill
                part = padded
            data = part.reshape(-1).view(np.uint8)
            crc = np.array([google_crc32c.value(data)], dtype="<u4")
            folder = self.path / "c" / str(start // self.chunk_rows)
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / "0", "wb", buffering=0) as fh:
                _write_all(fh, memoryview(data))
                _write_all(fh, memoryview(crc.view(np.uint8)))


def _write_all(fh: BinaryIO, view: memoryview) -> None:
    done = 0
    while done < len(view):
        done += fh.write(view[done:])
