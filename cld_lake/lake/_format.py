"""On-disk layout of a lake: names, the root JSON, and the format version.

```
LAKE/
  cld_lake.json                     format, version, lake id, number of classes, the committed
                                    splits, and a CRC32C of its own canonical JSON
  .lake.lock                        short lock for root metadata updates
  splits/<split>/
    samples.parquet                 sample_id, label, [metadata...]; row i = row i of every array
    classes.parquet                 label, count: samples per class (classes present)
    checkpoints.parquet             THE commit record: one row per committed checkpoint, naming
                                    the segment and column holding it (replaced atomically);
                                    its metadata holds the checksums of everything above
    segments/<id>.zarr/             Zarr v3 group: one (N, width) array per channel
    .writer.lock                    held (flock) by the split's single writer
  runs/<run>/splits/<split>/        the splits of another proxy run (seed, architecture), laid
                                    out as above; ``splits/`` holds the default run's
  scores/scores-<seq>-<token>.parquet
                                    the scores table: one row per training sample, one column
                                    per stored score; immutable, one file per version, the
                                    current one named by cld_lake.json (``scores``)
  scores.parquet                    the scores table of lakes written before versioned tables
  groups/names-<seq>-<token>.parquet
                                    a part of the table of group names (a lake of named
                                    groups only), named by cld_lake.json (``groups``)
```

The scores table is committed like a split's checkpoints: a new version is written to a new
file nobody references, then ``cld_lake.json``'s ``scores`` record is replaced (under the root
lock; on an object store by a conditional write) to name it, with its checksum, rows, ids
fingerprint and sequence number; the version it replaced is listed there as retired and
deleted by a later writer once the grace period has passed (see :mod:`cld_lake.lake.scores`).

A lake of named groups keeps its table of names in immutable parts listed by the ``groups``
record of ``cld_lake.json`` (see :mod:`cld_lake.lake._groups`); each of its splits records the
names it was written with.

A run is a namespace of splits: ``cld_lake.json`` lists the default run's committed splits
under ``splits`` and every other run's under ``runs`` (``{run: [split, ...]}``, absent until a
second run is written); that listing is a split's commit point in any run. A lake written
without runs is a one-run lake: its splits are the default run.

Format 2 checksums every committed byte (see ``docs/ARCHITECTURE.md``); format 1 lakes (no
checksums, class counts in the commit record's metadata) are read as before, not written.
"""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from typing import Any

from cld_lake._meta import CHECKSUM_KEY, canonical_json, crc32c_hex, now_iso
from cld_lake.errors import CorruptLakeError, LakeChangedError, LakeVersionError, NotALakeError
from cld_lake.storage import StorePath, VersionConflict, location

#: where a lake (or one of its files) lives: a location, or a path or URL to parse
LakePath = str | os.PathLike[str] | StorePath
FORMAT_NAME = "cld_lake"
FORMAT_VERSION = 2
CHECKSUMS_SINCE = 2  # the first format whose every committed file carries a checksum
ROOT_FILE = "cld_lake.json"
ROOT_LOCK = ".lake.lock"
SPLITS_DIR = "splits"
RUNS_DIR = "runs"
DEFAULT_RUN = "default"  # the run of splits/ (every lake written without runs)
SAMPLES_FILE = "samples.parquet"
CLASSES_FILE = "classes.parquet"
CHECKPOINTS_FILE = "checkpoints.parquet"
SEGMENTS_DIR = "segments"
WRITER_LOCK = ".writer.lock"
SCORES_FILE = "scores.parquet"  # the scores table of lakes written before versioned tables
SCORES_DIR = "scores"  # the versioned scores tables
SCORES_KEY = "scores"  # the root JSON's record of the current scores table
GROUPS_DIR = "groups"  # the parts of the group names table
GROUPS_KEY = "groups"  # the root JSON's record of the group names table (named groups only)

SPLIT_NAMES = ("train", "val", "test")
CHANNELS = ("loss", "correct", "margin", "el2n")
# Allowed stored dtypes per channel; the first is the default.
CHANNEL_DTYPES: dict[str, tuple[str, ...]] = {
    "loss": ("float32", "float16", "float64"),
    "correct": ("bool",),
    "margin": ("float32", "float16"),
    "el2n": ("float32", "float16"),
}

# Rows per chunk of every trajectory array (and the default block of the row iterator).
# Chunks hold a whole segment's width so a row-block scan reads each chunk once, in order.
DEFAULT_ROW_CHUNK = 65536
# Narrower chunks when a segment is very wide, so one chunk stays small in memory.
MAX_CHUNK_BYTES = 32 * 2**20


def lock_holder() -> str:
    """Who takes a lock (this process, this host, since now): what a refused writer is told."""
    return f"pid {os.getpid()} on {socket.gethostname()} since {now_iso()}"


def new_root_metadata(num_classes: int | None) -> dict[str, Any]:
    from cld_lake._version import __version__

    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "lake_id": uuid.uuid4().hex,
        "created_at": now_iso(),
        "created_by": f"cld_lake {__version__}",
        "num_classes": num_classes,
        "splits": [],
    }


def write_root_metadata(
    path: LakePath, meta: dict[str, Any], *, if_version: str | None = None
) -> dict[str, Any]:
    """Write ``cld_lake.json`` atomically with the checksum of its canonical JSON; return it.

    Callers hold :func:`~cld_lake.lake.store.lock_root`. ``if_version``: only while the file is
    still at that version (:meth:`~cld_lake.storage.StorePath.version`, read before ``meta``
    was): on an object store a conditional PUT, so a writer whose lease was taken over while
    it paused cannot overwrite a newer root; :class:`LakeChangedError` when it changed.
    """
    meta = {**meta, CHECKSUM_KEY: crc32c_hex(canonical_json(meta))}
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    target = location(path) / ROOT_FILE
    if if_version is None:
        target.put(text.encode())
        return meta
    try:
        with target.put_file(if_version=if_version) as tmp:
            tmp.write_bytes(text.encode())
    except VersionConflict as exc:
        raise LakeChangedError(
            f"{target} changed while this command held the lake's lock (another writer took "
            "it over); nothing was committed: run the command again"
        ) from exc
    return meta


def listed_splits(meta: dict[str, Any]) -> list[str] | None:
    """The splits the root metadata lists as committed; None for a format 1 lake (no list)."""
    splits = meta.get("splits")
    return None if splits is None else [str(s) for s in splits]


def listed_runs(meta: dict[str, Any]) -> dict[str, list[str]]:
    """Every run the root metadata names with its committed splits, the default run first
    (listed even when it has no split)."""
    runs = meta.get("runs") or {}
    return {DEFAULT_RUN: listed_splits(meta) or [], **{str(r): list(s) for r, s in runs.items()}}


def split_dir(root: StorePath, split: str, run: str = DEFAULT_RUN) -> StorePath:
    """Where ``split`` of ``run`` lives in the lake at ``root``."""
    if run == DEFAULT_RUN:
        return root / SPLITS_DIR / split
    return root / RUNS_DIR / run / SPLITS_DIR / split


def has_checksums(meta: dict[str, Any]) -> bool:
    """Does this lake (its root metadata) carry checksums (format 2 and later)?"""
    return int(meta["format_version"]) >= CHECKSUMS_SINCE


def read_root_metadata(path: LakePath) -> dict[str, Any]:
    """Read and check ``cld_lake.json``; raise a clear error when ``path`` is not a lake,
    :class:`CorruptLakeError` when the file fails its checksum."""
    root = location(path)
    data = read_root_bytes(root)
    if data is None:
        raise _not_a_lake(root, _fix(root)) from None
    return parse_root_metadata(root, data)


def read_root_bytes(root: StorePath) -> bytes | None:
    """The bytes of ``cld_lake.json`` as stored (None when there is none), unchecked."""
    try:
        return (root / ROOT_FILE).read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if not root.store.has_folders:
            raise  # an object store's transport error, not a damaged file
        raise CorruptLakeError(
            f"{root / ROOT_FILE}: unreadable lake metadata ({exc}); {_fix(root)}"
        ) from exc


def parse_root_metadata(root: StorePath, data: bytes) -> dict[str, Any]:
    """The root metadata in ``data`` (the bytes of ``root``'s ``cld_lake.json``), checked."""
    fix = _fix(root)
    try:
        meta = json.loads(data)
    except ValueError as exc:
        raise CorruptLakeError(
            f"{root / ROOT_FILE}: unreadable lake metadata ({exc}); {fix}"
        ) from exc
    return _check_root(root, meta, fix)


def _fix(root: StorePath) -> str:
    return f"run `cld-lake verify {root}` and restore it from a backup"


def _not_a_lake(root: StorePath, fix: str) -> Exception:
    """Why ``root`` holds no ``cld_lake.json``: nothing there, a file, a lake that lost it
    (corrupt), or a place that is not a lake; checked after the bucket, credentials and
    endpoint of an object store."""
    root.check_reachable()
    folders = root.store.has_folders
    if folders and not root.exists():
        return NotALakeError(
            f"{root}: no such lake directory; create one with `cld-lake import {root} ...`"
        )
    if folders and root.is_file():
        return NotALakeError(f"{root}: is a file, not a lake directory")
    if (root / SPLITS_DIR).list():
        return CorruptLakeError(f"{root / ROOT_FILE} is missing but {root} holds splits; {fix}")
    if folders:
        return NotALakeError(
            f"{root}: not a cld_lake lake (no {ROOT_FILE}); point to a lake directory or create one with `cld-lake import`"
        )
    return NotALakeError(
        f"{root}: not a cld_lake lake (no {ROOT_FILE}); point to a lake or create one with `cld-lake import {root} ...`"
    )


def _check_root(path: StorePath, meta: Any, fix: str) -> dict[str, Any]:
    root_file = path / ROOT_FILE
    if not isinstance(meta, dict):
        raise CorruptLakeError(f"{root_file}: not a JSON object; {fix}")
    version = meta.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:  # its checksum rules are newer
        raise LakeVersionError(
            f"{path}: lake format version {version} is newer than this cld_lake reads ({FORMAT_VERSION}); upgrade cld_lake"
        )
    stored = meta.get(CHECKSUM_KEY)
    if stored is None and meta.get("format") != FORMAT_NAME:
        raise NotALakeError(
            f"{root_file}: not a cld_lake metadata file (format={meta.get('format')!r})"
        )
    if stored is not None or not (isinstance(version, int) and version < CHECKSUMS_SINCE):
        computed = crc32c_hex(canonical_json(meta))
        if stored != computed:
            why = (
                "no checksum recorded"
                if stored is None
                else f"stored {stored}, computed {computed}"
            )
            raise CorruptLakeError(f"{root_file} fails its checksum ({why}); {fix}")
    if meta.get("format") != FORMAT_NAME:
        raise NotALakeError(
            f"{root_file}: not a cld_lake metadata file (format={meta.get('format')!r})"
        )
    if not isinstance(version, int) or version < 1:
        raise CorruptLakeError(f"{root_file}: format_version {version!r} is not valid; {fix}")
    splits = meta.get("splits")
    if version >= CHECKSUMS_SINCE and not (
        isinstance(splits, list) and all(isinstance(s, str) for s in splits)
    ):
        raise CorruptLakeError(f"{root_file}: no list of committed splits; {fix}")
    runs = meta.get("runs")
    if runs is not None and not (
        isinstance(runs, dict)
        and all(
            isinstance(r, str) and isinstance(s, list) and all(isinstance(x, str) for x in s)
            for r, s in runs.items()
        )
    ):
        raise CorruptLakeError(f"{root_file}: the runs are not a map of split lists; {fix}")
    if SCORES_KEY in meta and not valid_scores_record(meta[SCORES_KEY]):
        raise CorruptLakeError(f"{root_file}: the scores record is not valid; {fix}")
    if GROUPS_KEY in meta and not valid_groups_record(meta[GROUPS_KEY], meta.get("num_classes")):
        raise CorruptLakeError(f"{root_file}: the group names record is not valid; {fix}")
    return meta


_TABLE_NAME = re.compile(rf"{SCORES_DIR}/scores-\d{{6,}}-[0-9a-f]{{8,32}}\.parquet")


def scores_table_key(seq: int, token: str) -> str:
    """The key (below the lake's root) of version ``seq`` of the scores table."""
    return f"{SCORES_DIR}/scores-{seq:06d}-{token}.parquet"


def is_scores_table_key(key: str) -> bool:
    """Is ``key`` the name of a versioned scores table (as :func:`scores_table_key` makes)?"""
    return _TABLE_NAME.fullmatch(key) is not None


def valid_scores_record(record: Any) -> bool:
    """Is ``record`` a well-formed ``scores`` record of the root JSON: the current table's
    ``file``, ``checksum``, ``rows``, ``ids_sha1`` and ``seq``, and the ``retired`` tables
    (key -> time of retirement)?"""
    if not isinstance(record, dict):
        return False
    retired = record.get("retired", {})
    return (
        isinstance(record.get("file"), str)
        and is_scores_table_key(record["file"])
        and isinstance(record.get("checksum"), str)
        and _is_count(record.get("rows"))
        and _is_count(record.get("seq"))
        and (record.get("ids_sha1") is None or isinstance(record.get("ids_sha1"), str))
        and isinstance(retired, dict)
        and all(
            isinstance(k, str)
            and (is_scores_table_key(k) or k == SCORES_FILE)
            and isinstance(v, int | float)
            and not isinstance(v, bool)
            for k, v in retired.items()
        )
    )


_PART_NAME = re.compile(rf"{GROUPS_DIR}/names-\d{{6,}}-[0-9a-f]{{8,32}}\.parquet")


def groups_part_key(seq: int, token: str) -> str:
    """The key (below the lake's root) of part ``seq`` of the group names table."""
    return f"{GROUPS_DIR}/names-{seq:06d}-{token}.parquet"


def valid_groups_record(record: Any, num_classes: Any) -> bool:
    """Is ``record`` a well-formed ``groups`` record of the root JSON: the names table's
    ``parts`` in id order (each a ``file`` with its ``first`` id, ``count`` and ``checksum``),
    the total ``count`` (the lake's class count too) and the ``digest`` of every name?"""
    if not isinstance(record, dict) or not isinstance(record.get("parts"), list):
        return False
    first = 0
    for part in record["parts"]:
        if not (
            isinstance(part, dict)
            and isinstance(part.get("file"), str)
            and _PART_NAME.fullmatch(part["file"]) is not None
            and isinstance(part.get("checksum"), str)
            and part.get("first") == first
            and _is_count(part.get("count"))
            and part["count"] > 0
        ):
            return False
        first += part["count"]
    return (
        record.get("count") == first
        and num_classes == first
        and isinstance(record.get("digest"), str)
    )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def chunk_rows_for(width: int, itemsize: int, row_chunk: int) -> int:
    """Rows per chunk for a segment of ``width`` columns: ``row_chunk`` or a power-of-two divisor."""
    rows = row_chunk
    while rows > 1024 and rows * max(width, 1) * itemsize > MAX_CHUNK_BYTES:
        rows //= 2
    return rows
