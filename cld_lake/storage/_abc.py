"""The interfaces: :class:`Store` (where a lake's bytes live) and :class:`Lock` (its
single-writer rule).

A store holds objects under ``/``-separated keys. What the lake needs of one is declared
here once; :mod:`._local` (a directory tree) and :mod:`._fsspec` / :mod:`._obstore` (object
stores) implement it, and ``tests/test_store_contract.py`` holds each to the same contract.
Lake code never asks which store it holds: where stores differ in kind (a local disk has
folders and ``fsync``; an object store is durable once a PUT returns and needs its reads in
flight together), the difference is a declared capability or a method that does what that
kind of store needs.
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from cld_lake.errors import LakeLockedError

if TYPE_CHECKING:
    from collections.abc import Buffer


class Store(ABC):
    """Objects under ``/``-separated keys, with the few operations a lake is built on.

    Reads raise ``FileNotFoundError`` for a key that holds nothing. Every write but
    :meth:`put_new` (for objects nobody reads yet) is atomic: a reader sees the whole new
    object or the old one (or none), never part of one.
    """

    #: reads worth keeping in flight at once to hide the store's latency (1: a local disk)
    parallel_reads: int = 1
    #: does the store have folders of its own, that exist while empty and that a file of the
    #: same name blocks? (An object store has key prefixes: one exists while a key is below it.)
    has_folders: bool = False
    #: do the objects live in this process only (no other process, a worker of a cluster
    #: say, can open them)?
    process_local: bool = False

    # --- names ----------------------------------------------------------------------------
    @abstractmethod
    def url(self, key: str) -> str:
        """How a user names ``key`` (a file-system path, or a URL): what messages print."""

    def local_path(self, key: str) -> Path | None:
        """The file-system path of ``key``; None when the store is not a local disk."""
        return None

    def canonical(self, key: str) -> str:
        """``key`` in the one form two names of the same object share (a local disk: ``~``
        expanded, absolute, symbolic links resolved)."""
        return key

    # --- reads ----------------------------------------------------------------------------
    @abstractmethod
    def read(self, key: str) -> bytes:
        """The whole object."""

    @abstractmethod
    def read_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer at the end of the object)."""

    def read_into(self, key: str, out: memoryview) -> int:
        """Copy the object's first ``len(out)`` bytes into ``out``; return how many it holds
        (fewer when the object is shorter: size ``out`` one byte larger than expected to tell
        a longer object)."""
        data = self.read_range(key, 0, len(out))
        out[: len(data)] = data
        return len(data)

    @abstractmethod
    def open_reader(self, key: str) -> BinaryIO:
        """A seekable binary reader of the object that fetches the ranges it is asked for
        (what ``pyarrow.parquet.ParquetFile`` reads a footer and row groups through)."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Is there an object at ``key``, or anything below it?"""

    def is_file(self, key: str) -> bool:
        """Does a file at ``key`` keep it from being used as a folder? (Never on an object
        store, where an object and a prefix of the same name coexist.)"""
        return False

    @abstractmethod
    def list(self, key: str) -> list[str]:
        """The names directly below ``key`` (objects and prefixes); empty when none."""

    @abstractmethod
    def walk(self, key: str) -> Iterator[str]:
        """The key of every object below ``key``."""

    @abstractmethod
    def tree_bytes(self, key: str) -> int:
        """Bytes stored below ``key``."""

    # --- writes ---------------------------------------------------------------------------
    @abstractmethod
    def put(self, key: str, data: Buffer | Sequence[Buffer]) -> None:
        """Replace the object at ``key`` with ``data`` atomically (a local disk: a temp file,
        fsync, rename, fsync of the folder, missing folders made; an object store: one PUT)."""

    @abstractmethod
    def put_file(
        self, key: str, *, if_version: str | None = None, if_absent: bool = False
    ) -> contextlib.AbstractContextManager[Path]:
        """A context giving a local temp file to write; when the block ends without an error
        its content replaces ``key`` atomically (as :meth:`put`), else it is deleted.

        ``if_version``: only while ``key`` is still at that version; ``if_absent``: only if
        nothing is at ``key``. A write whose condition fails raises :class:`VersionConflict`
        and changes nothing.
        """

    @abstractmethod
    def put_new(self, key: str, data: Buffer | Sequence[Buffer], *, durable: bool = False) -> None:
        """Write an object nobody reads yet (a chunk of a segment no commit names): no temp
        file; folders are made as needed. ``durable``: flushed to stable storage before this
        returns (an object store's objects always are)."""

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create ``key`` with ``data`` unless something is there; return whether this call
        created it (of two racing callers exactly one does)."""

    @abstractmethod
    def version(self, key: str) -> str | None:
        """A tag of the object's current content (an ETag, a generation); None when absent."""

    @abstractmethod
    def replace_if(self, key: str, data: bytes, version: str) -> bool:
        """Replace ``key`` with ``data`` only while it is still at ``version``; return whether
        it was replaced (a stale version is refused)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object at ``key`` (nothing when it is gone)."""

    @abstractmethod
    def delete_tree(self, key: str) -> None:
        """Remove ``key`` and everything below it (nothing when it is gone)."""

    def make_folder(self, key: str) -> None:
        """Create the folder ``key`` and its parents where the store has folders; nothing on an
        object store (a prefix exists once a key below it does)."""
        return None

    def sync_tree(self, key: str) -> None:
        """Make every object below ``key`` durable, and ``key`` itself in its folder (a local
        disk: fsync of each file and folder; an object store: nothing, every PUT is)."""
        return None

    def remove_dead_temps(self, key: str) -> list[str]:
        """Delete temp files of ``key`` left by killed writers; return their keys. (Only a
        local disk writes temp names in place.)"""
        return []

    def first_missing(self, key: str) -> str | None:
        """The highest of ``key`` and its parents that does not exist (None: ``key`` exists):
        what writing ``key`` creates. An object store creates no parents."""
        return None if self.exists(key) else key

    def check_reachable(self, key: str) -> None:
        """Fail up front, with one line saying what to set, when ``key`` cannot be reached
        (a missing bucket, credentials or endpoint)."""
        return None

    # --- the single-writer rule -----------------------------------------------------------
    @abstractmethod
    def lock(self, key: str, holder: str) -> Lock:
        """The exclusive lock kept at ``key``, to be held by ``holder`` (a description that a
        refused writer is shown)."""


class VersionConflict(Exception):
    """A conditional write found the object changed since its version was read (or present,
    for a write that creates it): nothing was written."""


class Lock(ABC):
    """An exclusive lock: ``flock`` on a local disk, a lease object on an object store.

    Use :meth:`try_acquire` for a writer that must not wait (it is told who holds the lock),
    or the lock as a context manager for a short critical section (it waits). A lock dropped
    while held (its owner never released it) is released when it is garbage-collected, and
    any thread it started ends.
    """

    #: where the lock is kept (what messages name)
    path: object
    holder: str

    @abstractmethod
    def try_acquire(self) -> str | None:
        """Take the lock; None on success, else a description of its current holder."""

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`~cld_lake.errors.LakeChangedError` unless this process still holds
        the lock (a lease can be taken over once it expires; an ``flock`` cannot)."""

    @abstractmethod
    def release(self) -> None:
        """Give the lock up (nothing when it is not held)."""

    @property
    @abstractmethod
    def held(self) -> bool:
        """Does this process hold the lock?"""

    def acquire(self, timeout: float = 120.0) -> None:
        """Wait for the lock, up to ``timeout`` seconds; :class:`LakeLockedError` after."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while (held_by := self.try_acquire()) is not None:
            if time.monotonic() > deadline:
                raise LakeLockedError(
                    f"{self.path}: held by {held_by} for over {timeout:.0f} s; try again"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def as_buffers(data: Buffer | Sequence[Buffer]) -> Sequence[Buffer]:
    """``data`` as a sequence of buffers (one buffer: a sequence of one)."""
    if isinstance(data, list | tuple):
        return data
    return (data,)  # type: ignore[return-value]


def joined(data: Buffer | Sequence[Buffer]) -> bytes:
    """``data`` as one ``bytes`` (copies what is in several parts)."""
    parts = as_buffers(data)
    if len(parts) == 1:
        return bytes(parts[0])
    return b"".join(bytes(p) for p in parts)


__all__ = ["Lock", "Store", "VersionConflict", "as_buffers", "joined"]
