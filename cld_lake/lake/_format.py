"""On-disk layout of a lake: names, the root JSON, and the format version.

```
LAKE/
  cld_lake.json                     format, version, lake id, number of classes
  .lake.lock                        short lock for root metadata updates
  splits/<split>/
    samples.parquet                 sample_id, label, [metadata...]; row i = row i of every array
    checkpoints.parquet             THE commit record: one row per committed checkpoint, naming
                                    the segment and column holding it (replaced atomically)
    segments/<id>.zarr/             Zarr v3 group: one (N, width) array per channel
    .writer.lock                    held (flock) by the split's single writer
  scores.parquet                    one row per training sample, one column per stored score
```
"""

from __future__ import annotations

import datetime as _dt
import json
import uuid
from pathlib import Path
from typing import Any

from cld_lake.errors import LakeVersionError, NotALakeError

FORMAT_NAME = "cld_lake"
FORMAT_VERSION = 1
ROOT_FILE = "cld_lake.json"
ROOT_LOCK = ".lake.lock"
SPLITS_DIR = "splits"
SAMPLES_FILE = "samples.parquet"
CHECKPOINTS_FILE = "checkpoints.parquet"
SEGMENTS_DIR = "segments"
WRITER_LOCK = ".writer.lock"
SCORES_FILE = "scores.parquet"

SPLIT_NAMES = ("train", "val", "test")
CHANNELS = ("loss", "correct", "margin")
# Allowed stored dtypes per channel; the first is the default.
CHANNEL_DTYPES: dict[str, tuple[str, ...]] = {
    "loss": ("float32", "float16", "float64"),
    "correct": ("bool",),
    "margin": ("float32", "float16"),
}

# Rows per chunk of every trajectory array (and the default block of the row iterator).
# Chunks hold a whole segment's width so a row-block scan reads each chunk once, in order.
DEFAULT_ROW_CHUNK = 65536
# Narrower chunks when a segment is very wide, so one chunk stays small in memory.
MAX_CHUNK_BYTES = 32 * 2**20


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def new_root_metadata(num_classes: int | None) -> dict[str, Any]:
    from cld_lake._version import __version__

    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "lake_id": uuid.uuid4().hex,
        "created_at": now_iso(),
        "created_by": f"cld_lake {__version__}",
        "num_classes": num_classes,
    }


def read_root_metadata(path: Path) -> dict[str, Any]:
    """Read and check ``cld_lake.json``; raise a clear error when ``path`` is not a lake."""
    root_file = path / ROOT_FILE
    if not path.exists():
        raise NotALakeError(
            f"{path}: no such lake directory; create one with `cld-lake import {path} ...`"
        )
    if not path.is_dir():
        raise NotALakeError(f"{path}: is a file, not a lake directory")
    if not root_file.exists():
        raise NotALakeError(
            f"{path}: not a cld_lake lake (no {ROOT_FILE}); point to a lake directory or create one with `cld-lake import`"
        )
    try:
        meta = json.loads(root_file.read_text())
    except (OSError, ValueError) as exc:
        raise NotALakeError(
            f"{root_file}: unreadable lake metadata ({exc}); restore it from a backup"
        ) from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise NotALakeError(
            f"{root_file}: not a cld_lake metadata file (format={meta.get('format') if isinstance(meta, dict) else None!r})"
        )
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise LakeVersionError(
            f"{path}: lake format version {version} is newer than this cld_lake reads ({FORMAT_VERSION}); upgrade cld_lake"
        )
    return meta


def chunk_rows_for(width: int, itemsize: int, row_chunk: int) -> int:
    """Rows per chunk for a segment of ``width`` columns: ``row_chunk`` or a power-of-two divisor."""
    rows = row_chunk
    while rows > 1024 and rows * max(width, 1) * itemsize > MAX_CHUNK_BYTES:
        rows //= 2
    return rows
