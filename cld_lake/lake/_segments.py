"""Segments: immutable Zarr v3 groups holding a (N, width) array per channel.

A checkpoint is committed as a new segment of width 1 (cheap to append); segments are merged
into wider ones (compaction) so row-block scans read few, large, contiguous chunks. Every
chunk carries a CRC32C checksum (the Zarr ``crc32c`` codec), and the commit record holds a
CRC32C of each segment's metadata files (``zarr.json``), checked when the segment is opened.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from cld_lake._meta import crc32c_hex
from cld_lake.errors import CorruptLakeError
from cld_lake.lake._format import LakePath, chunk_rows_for
from cld_lake.storage import StorePath, location

METADATA_FILE = "zarr.json"
DEFAULT_FIX = "run `cld-lake verify LAKE` and restore it from a backup"

if TYPE_CHECKING:
    import zarr


def new_segment_name() -> str:
    return f"seg-{uuid.uuid4().hex[:16]}.zarr"


def create_segment(
    path: LakePath, num_rows: int, width: int, channels: Mapping[str, str], row_chunk: int
) -> dict[str, ChunkWriter]:
    """Create empty arrays for a new segment; return a writer for each channel.

    Zarr makes the metadata documents in memory; they are written to the store, and the
    chunks straight to their objects by the :class:`ChunkWriter` s.
    """
    import zarr  # on first use: `cld-lake --help` stays fast
    from zarr.codecs import Crc32cCodec

    root = location(path)
    documents: dict[str, Any] = {}
    group = zarr.open_group(store=zarr.storage.MemoryStore(documents), mode="w-")
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
    for key, buffer in sorted(documents.items()):
        (root / key).put_new(buffer.to_bytes())
    return {channel: ChunkWriter(root / channel, arr) for channel, arr in arrays.items()}


def segment_checksums(path: LakePath) -> dict[str, str]:
    """CRC32C of each metadata file of a segment (``zarr.json`` of the group and of each
    array), by path relative to the segment: what the commit record keeps for it."""
    root = location(path)
    names = [METADATA_FILE] + [f"{child}/{METADATA_FILE}" for child in sorted(root.list())]
    checksums = {}
    for name in names:
        try:
            checksums[name] = crc32c_hex((root / name).read())
        except (FileNotFoundError, NotADirectoryError):
            continue  # a listed name that is not an array (the group's own zarr.json)
    return checksums


@dataclass(frozen=True)
class SegmentArray:
    """One channel of a segment, as its ``zarr.json`` describes it.

    ``plain`` arrays (the layout this package writes) are read straight from their chunk
    files; any other layout through Zarr (:attr:`zarr`, opened on first use).
    """

    path: StorePath
    meta: dict[str, Any]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(x) for x in self.meta["shape"])

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(int(x) for x in self.meta["chunk_grid"]["configuration"]["chunk_shape"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["data_type"])

    @property
    def plain(self) -> bool:
        return _is_plain_meta(self.meta)

    @cached_property
    def zarr(self) -> zarr.Array:
        import zarr  # only for a layout this package does not write

        return zarr.open_array(store=str(self.path), mode="r")


def open_segment(
    path: LakePath, checksums: Mapping[str, str] | None = None, fix: str = DEFAULT_FIX
) -> dict[str, SegmentArray]:
    """Open a segment read-only; return its arrays by channel.

    With ``checksums`` (from the commit record), each metadata file is checked before it is
    parsed: :class:`CorruptLakeError` when one differs; ``FileNotFoundError`` when one is
    missing. The metadata is parsed here (no Zarr import for this package's own layout).
    """
    root = location(path)
    texts = {}
    for name, stored in (checksums or {}).items():
        data = (root / name).read()
        computed = crc32c_hex(data)
        if computed != stored:
            raise CorruptLakeError(
                f"{root / name} fails its checksum (stored {stored}, computed {computed}); {fix}"
            )
        texts[name] = data
    group = _node(root, texts)
    if group.get("node_type") != "group":
        raise CorruptLakeError(f"{root / METADATA_FILE}: not a Zarr group; {fix}")
    arrays = {}
    for name in sorted(root.list()):
        try:
            meta = _node(root / name, texts, prefix=f"{name}/")
        except (FileNotFoundError, NotADirectoryError):
            continue  # not a node (the group's own zarr.json)
        if meta.get("node_type") == "array":
            arrays[name] = SegmentArray(root / name, meta)
    return arrays


def _node(path: StorePath, texts: Mapping[str, bytes], prefix: str = "") -> dict[str, Any]:
    """The parsed ``zarr.json`` of ``path`` (the bytes already checked when there are)."""
    data = texts.get(f"{prefix}{METADATA_FILE}")
    meta = json.loads(data if data is not None else (path / METADATA_FILE).read())
    if not isinstance(meta, dict) or meta.get("zarr_format") != 3:
        raise ValueError(f"{path / METADATA_FILE} is not Zarr v3 metadata")
    return meta


def sync_segment(path: LakePath) -> None:
    """Make every file and folder of a new segment (and the folder holding it) durable, so a
    commit record that names it never outlives its bytes on a power loss (an object store:
    every object is, once its PUT returned)."""
    location(path).sync_tree()


def delete_segment(path: LakePath) -> None:
    location(path).delete_tree()


class ChunkReader:
    """Reads row ranges of one segment array, straight from its chunk files when it can.

    Segments are written by this package with one layout: a regular grid of full-width
    chunks, the ``bytes`` codec (little endian) and a ``crc32c`` checksum, in a local
    directory. For that layout a chunk file is the raw values plus 4 checksum bytes, so a
    row-block read is one read into a fresh buffer (``readinto`` on a local disk, one GET on
    an object store) and one checksum: no copies through Zarr's codec pipeline. Any other
    layout (or a partial chunk of another shape) goes through Zarr. The checksum is always
    verified.
    """

    def __init__(
        self,
        path: StorePath,
        array: SegmentArray,
        *,
        fix: str = DEFAULT_FIX,
        on_missing: Callable[[StorePath], Exception] | None = None,
    ) -> None:
        self.array = array
        self.path = path
        self._fix = fix
        self._on_missing = on_missing
        self._cached: tuple[int, np.ndarray] | None = None
        self.direct = array.plain
        if self.direct:
            self.chunk_rows = int(array.chunks[0])
            self.width = int(array.shape[1])
            self.dtype = np.dtype(array.dtype)

    def read(self, a: int, b: int) -> np.ndarray:
        """Rows ``[a, b)``, all columns (a view of a chunk buffer when the range fits one chunk)."""
        if not self.direct or b <= a:
            return np.asarray(self.array.zarr[a:b])
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

        nbytes = self.chunk_rows * self.width * self.dtype.itemsize
        # one byte more than the chunk holds: a longer file fills it
        buf = np.empty(nbytes + 5, dtype=np.uint8)
        path = self.path / f"c/{i}/0"
        try:
            got = path.read_into(memoryview(buf))
        except FileNotFoundError as exc:
            if self._on_missing is not None:
                raise self._on_missing(path) from exc
            raise CorruptLakeError(f"{path}: committed chunk file missing; {self._fix}") from exc
        if got != nbytes + 4:
            extra = got > nbytes + 4
            raise CorruptLakeError(
                f"{path}: chunk has {'more than ' if extra else ''}{min(got, nbytes + 4)} bytes, "
                f"expected {nbytes + 4}; {self._fix}"
            )
        stored = int(buf[nbytes : nbytes + 4].view("<u4")[0])
        computed = google_crc32c.value(buf[:nbytes])
        if computed != stored:
            raise CorruptLakeError(
                f"{path} fails its checksum (stored {stored:08x}, computed {computed:08x}); {self._fix}"
            )
        chunk = buf[:nbytes].view(self.dtype).reshape(self.chunk_rows, self.width)
        chunk.flags.writeable = False  # blocks are views of it: nobody may change another's rows
        self._cached = (i, chunk)
        return chunk


def _is_plain_meta(meta: dict[str, Any]) -> bool:
    """Does this array metadata describe the layout this package writes: a regular grid of
    full-width chunks, ``bytes`` (little endian) + ``crc32c`` codecs, ``c/<i>/0`` keys?"""
    try:
        return _plain(meta)
    except (AttributeError, TypeError, ValueError, IndexError):
        return False


def _plain(meta: dict[str, Any]) -> bool:
    codecs = [c.get("name") for c in meta.get("codecs", [])]
    endian = (meta.get("codecs") or [{}])[0].get("configuration", {}).get("endian", "little")
    shape = meta.get("shape", [])
    chunks = meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape", [])
    key = meta.get("chunk_key_encoding", {})
    return (
        meta.get("chunk_grid", {}).get("name") == "regular"
        and not meta.get("storage_transformers")
        and codecs == ["bytes", "crc32c"]
        and endian == "little"
        and len(shape) == 2
        and len(chunks) == 2
        and chunks[1] == shape[1]
        and key.get("name") == "default"
        and key.get("configuration", {}).get("separator", "/") == "/"
        and np.dtype(str(meta.get("data_type"))).byteorder in ("=", "<", "|")
    )


class ChunkWriter:
    """Writes row ranges of a new segment array straight to its chunk objects.

    The mirror of :class:`ChunkReader`: for this package's layout (what
    :func:`create_segment` makes) a chunk is the raw little-endian values of a full chunk
    (the last one padded with the fill value, as Zarr stores edge chunks) followed by their
    CRC32C, which is exactly what Zarr writes, so the array stays a plain Zarr array. Row
    ranges must start on a chunk boundary and cover whole chunks (or run to the end of the
    array).
    """

    def __init__(self, path: StorePath, array: zarr.Array) -> None:
        self.array = array
        self.path = path
        self.chunk_rows = int(array.chunks[0])
        self.rows = int(array.shape[0])
        self.width = int(array.shape[1])
        self.dtype = np.dtype(array.dtype)
        self.fill = np.asarray(array.metadata.fill_value, dtype=self.dtype)

    def write(self, a: int, b: int, values: np.ndarray) -> None:
        aligned = a % self.chunk_rows == 0 and (b % self.chunk_rows == 0 or b == self.rows)
        if not aligned or values.shape != (b - a, self.width):
            raise ValueError(
                f"{self.path}: rows [{a}, {b}) are not whole chunks of {self.chunk_rows} rows"
            )
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
            # durable before the commit record may name it; done here, in the writer's
            # background threads, the flush overlaps the reading of the next block instead of
            # stalling the commit (sync_segment then finds the chunk files clean)
            (self.path / f"c/{start // self.chunk_rows}/0").put_new(
                [data, crc.view(np.uint8)], durable=True
            )
