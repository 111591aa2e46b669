""":class:`StorePath`: a key on a store, the one way lake code holds a location."""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from collections.abc import Buffer

    from cld_lake.storage._abc import Lock, Store


class StorePath:
    """An immutable (store, key) pair: ``/`` joins a name, :attr:`name` and :attr:`parent`
    take it apart, ``str()`` is how the user names it (a path or a URL), and every other
    method is the store's operation on this key (see :class:`~cld_lake.storage.Store`)."""

    __slots__ = ("key", "store")

    def __init__(self, store: Store, key: str) -> None:
        self.store = store
        self.key = key

    # --- names ----------------------------------------------------------------------------
    def __truediv__(self, part: str) -> StorePath:
        part = str(part).strip("/")
        if not part:
            return self
        key = self.key
        if key == ".":  # as pathlib joins it: "lake", not "./lake"
            return type(self)(self.store, part)
        return type(self)(self.store, f"{key}/{part}" if key and key != "/" else f"{key}{part}")

    @property
    def name(self) -> str:
        return posixpath.basename(self.key)

    @property
    def parent(self) -> StorePath:
        return type(self)(self.store, posixpath.dirname(self.key) or ".")

    def __str__(self) -> str:
        return self.store.url(self.key)

    def __repr__(self) -> str:
        return f"StorePath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StorePath) and self.key == other.key and self.store == other.store

    def __hash__(self) -> int:
        return hash((self.store, self.key))

    def __lt__(self, other: StorePath) -> bool:  # as pathlib orders paths: name by name
        return self.key.split("/") < other.key.split("/")

    def is_within(self, other: StorePath) -> bool:
        """Is this ``other`` or below it (on the same store)?"""
        if self.store != other.store:
            return False
        root = other.key.rstrip("/")
        return self.key == other.key or self.key.startswith(root + "/")

    @property
    def local_path(self) -> Path | None:
        """The file-system path; None on an object store."""
        return self.store.local_path(self.key)

    def canonical(self) -> StorePath:
        """This location in the one form every name of it shares (see
        :meth:`Store.canonical`)."""
        return type(self)(self.store, self.store.canonical(self.key))

    # --- the store's operations on this key -------------------------------------------------
    def read(self) -> bytes:
        return self.store.read(self.key)

    def read_range(self, start: int, length: int) -> bytes:
        return self.store.read_range(self.key, start, length)

    def read_into(self, out: memoryview) -> int:
        return self.store.read_into(self.key, out)

    def open_reader(self) -> BinaryIO:
        return self.store.open_reader(self.key)

    def exists(self) -> bool:
        return self.store.exists(self.key)

    def is_file(self) -> bool:
        return self.store.is_file(self.key)

    def list(self) -> list[str]:
        return self.store.list(self.key)

    def iterdir(self) -> Iterator[StorePath]:
        """A location for each name directly below this one."""
        for name in self.store.list(self.key):
            yield self / name

    def walk(self) -> Iterator[StorePath]:
        """A location for every object below this one."""
        for key in self.store.walk(self.key):
            yield type(self)(self.store, key)

    def tree_bytes(self) -> int:
        return self.store.tree_bytes(self.key)

    def put(self, data: Buffer | Sequence[Buffer]) -> None:
        self.store.put(self.key, data)

    def put_file(
        self, *, if_version: str | None = None, if_absent: bool = False
    ) -> contextlib.AbstractContextManager[Path]:
        return self.store.put_file(self.key, if_version=if_version, if_absent=if_absent)

    def put_new(self, data: Buffer | Sequence[Buffer], *, durable: bool = False) -> None:
        self.store.put_new(self.key, data, durable=durable)

    def put_if_absent(self, data: bytes) -> bool:
        return self.store.put_if_absent(self.key, data)

    def version(self) -> str | None:
        return self.store.version(self.key)

    def replace_if(self, data: bytes, version: str) -> bool:
        return self.store.replace_if(self.key, data, version)

    def delete(self) -> None:
        self.store.delete(self.key)

    def delete_tree(self) -> None:
        self.store.delete_tree(self.key)

    def make_folder(self) -> None:
        self.store.make_folder(self.key)

    def sync_tree(self) -> None:
        self.store.sync_tree(self.key)

    def remove_dead_temps(self) -> list[StorePath]:
        return [type(self)(self.store, k) for k in self.store.remove_dead_temps(self.key)]

    def first_missing(self) -> StorePath | None:
        key = self.store.first_missing(self.key)
        return None if key is None else type(self)(self.store, key)

    def check_reachable(self) -> None:
        self.store.check_reachable(self.key)

    def lock(self, holder: str) -> Lock:
        return self.store.lock(self.key, holder)
