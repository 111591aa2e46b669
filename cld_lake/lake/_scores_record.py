"""Which scores table is current: the ``scores`` record of ``cld_lake.json``, its commit, and
the retired tables' grace period.

A scores table is immutable: every change writes a new version,
``LAKE/scores/scores-<seq>-<token>.parquet``, that nobody references yet; replacing the root
record to name it (under the root lock; on an object store a conditional PUT on the version
the writer read) is the commit point; the version it replaced is listed in the record as
retired, with the time, and deleted by a later writer once :data:`GC_GRACE_SECONDS` have
passed, so a reader that found it before the commit finishes its reads. A crash before the
commit leaves the previous table current and the new file as debris: unreferenced, listed by
``verify``, deleted by the next writer (who holds the root lock, so nobody else can be
writing it).

The record holds the current table's ``file`` (its key below the lake's root), ``checksum``
(a CRC32C of the checksums in the table's own footer, so another file, even a valid older
version of the same lake's table, fails it), ``rows``, ``ids_sha1`` (the fingerprint of the
sample ids in row order), ``seq`` (the version, also written inside the table) and
``retired``. A lake without the record keeps its table where it always did,
``LAKE/scores.parquet``, and is read as before; its next score moves it to this layout.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from cld_lake._meta import canonical_json, crc32c_hex
from cld_lake.lake import _format as fmt
from cld_lake.lake._compact import GC_GRACE_SECONDS
from cld_lake.storage import StorePath

__all__ = [
    "GC_GRACE_SECONDS",
    "Located",
    "RootState",
    "Stray",
    "commit",
    "fingerprint",
    "locate",
    "strays",
]


@dataclass(frozen=True)
class Located:
    """Where the current scores table is, and the record that names it (None: a lake
    written before versioned tables, whose table is ``LAKE/scores.parquet``)."""

    path: StorePath
    record: dict[str, Any] | None

    @property
    def key(self) -> str:
        """The table's key below the lake's root (what the record names it by)."""
        return str(self.record["file"]) if self.record is not None else fmt.SCORES_FILE


@dataclass(frozen=True)
class RootState:
    """The root metadata as a writer read it under the root lock, with its version (what
    its commit is conditional on) and the table it names."""

    root: StorePath
    meta: dict[str, Any]
    version: str | None
    located: Located | None
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def next_seq(self) -> int:
        return int(self.record.get("seq", 0)) + 1

    @property
    def retired(self) -> dict[str, float]:
        return {str(k): float(v) for k, v in self.record.get("retired", {}).items()}


def locate(root: StorePath, meta: dict[str, Any]) -> Located | None:
    """The current scores table named by the root metadata ``meta`` (the lake at ``root``);
    None before any score. (Whether the file is there is for the reader that opens it.)"""
    record = meta.get(fmt.SCORES_KEY)
    if record is not None:
        return Located(root / str(record["file"]), dict(record))
    legacy = root / fmt.SCORES_FILE
    return Located(legacy, None) if legacy.exists() else None


def read_state(root: StorePath) -> RootState:
    """The root metadata and its version, read together (the version first: a commit that
    is conditional on it then fails if the file changed after it was read)."""
    version = (root / fmt.ROOT_FILE).version()
    meta = fmt.read_root_metadata(root)
    record = meta.get(fmt.SCORES_KEY) or {}
    return RootState(root, meta, version, locate(root, meta), dict(record))


def fingerprint(footer_checksums: dict[str, Any] | None) -> str:
    """The checksum the root record keeps of a table: a CRC32C of the checksums its footer
    holds (its ``cld_lake`` JSON and every column), so it names the table's whole content."""
    return crc32c_hex(canonical_json(footer_checksums or {}))


def new_table_key(state: RootState) -> str:
    """The key of the next version of the scores table (a new name nobody references)."""
    return fmt.scores_table_key(state.next_seq, uuid.uuid4().hex[:12])


def commit(
    state: RootState,
    table: str,
    checksum: str,
    rows: int,
    ids_sha1: str | None,
) -> tuple[dict[str, Any], list[StorePath]]:
    """Make ``table`` (a key from :func:`new_table_key`) the current scores table: the root record replaced, conditionally on
    the version ``state`` read. The table it replaces is listed as retired (now); retired
    tables past their grace period leave the record. Returns the new root metadata and those
    expired tables, for the caller to delete after this commit."""
    now = time.time()
    keep = {k: t for k, t in state.retired.items() if now - t < GC_GRACE_SECONDS}
    expired = [state.root / k for k in state.retired if k not in keep]
    if state.located is not None:
        keep[state.located.key] = now
    record = {
        "file": table,
        "checksum": checksum,
        "rows": int(rows),
        "ids_sha1": ids_sha1,
        "seq": state.next_seq,
        "retired": keep,
    }
    meta = {**state.meta, fmt.SCORES_KEY: record}
    written = fmt.write_root_metadata(state.root, meta, if_version=state.version)
    return written, expired


@dataclass(frozen=True)
class Stray:
    """A file of the scores layout that is not the current table: ``retired`` (with the time
    of its retirement; kept for the grace period) or debris (never committed, or left
    unreferenced by an interrupted clean-up)."""

    path: StorePath
    retired_at: float | None

    @property
    def retired(self) -> bool:
        return self.retired_at is not None

    @property
    def size(self) -> int:
        """Bytes of the file (0 when it is gone meanwhile)."""
        try:
            reader = self.path.open_reader()
        except FileNotFoundError:
            return 0
        try:
            return int(reader.seek(0, 2))
        finally:
            reader.close()


def strays(state: RootState) -> list[Stray]:
    """Every file of the scores layout but the current table: the versioned tables (and temp
    files) below ``scores/``, and a ``scores.parquet`` of the old layout once a record names
    the current table."""
    current = state.located.path if state.located is not None else None
    retired = state.retired
    found = []
    folder = state.root / fmt.SCORES_DIR
    for name in sorted(folder.list()):
        path = folder / name
        if path != current:
            found.append(Stray(path, retired.get(f"{fmt.SCORES_DIR}/{name}")))
    legacy = state.root / fmt.SCORES_FILE
    if state.record and legacy.exists():
        found.append(Stray(legacy, retired.get(fmt.SCORES_FILE)))
    return found


def remove_debris(state: RootState) -> list[StorePath]:
    """Delete what no record references (a killed writer's table or temp file); only a writer
    holding the root lock calls this, so none of it is being written. Returns what it deleted."""
    gone = []
    for stray in strays(state):
        if not stray.retired:
            stray.path.delete()
            gone.append(stray.path)
    return gone
