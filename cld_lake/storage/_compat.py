"""Transitional: ``Lake.path`` / ``Split.path`` as code outside ``lake/`` still reads them.

Until the writer, the scores table, select, report, export and the recorder hold a
:class:`StorePath` (``lake.root``) themselves, ``Lake.path`` keeps the value it always had:
a :class:`pathlib.Path` for a local lake, and for a lake on an object store an
:class:`ObjectPath`: a :class:`StorePath` with the few ``pathlib`` names that code calls.
``lake/`` itself never uses these names; delete this module once nothing does.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cld_lake.storage._path import StorePath


def compat_path(path: StorePath) -> Path | ObjectPath:
    """What ``Lake.path`` always was for ``path``: its local path, else an :class:`ObjectPath`."""
    found = path.local_path
    return found if found is not None else ObjectPath(path.store, path.key)


class ObjectPath(StorePath):
    """A :class:`StorePath` with the ``pathlib`` names code outside ``lake/`` still calls on
    ``Lake.path`` (see the module docstring)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    def with_name(self, name: str) -> ObjectPath:
        return self.parent / name  # type: ignore[return-value]

    def resolve(self) -> ObjectPath:
        return self

    def expanduser(self) -> ObjectPath:
        return self

    def is_dir(self) -> bool:
        return bool(self.store.list(self.key))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        self.make_folder()

    def rmdir(self) -> None:
        self.delete_tree()

    def unlink(self, missing_ok: bool = False) -> None:
        if not missing_ok and not self.exists():
            raise FileNotFoundError(str(self))
        self.delete()

    def glob(self, pattern: str) -> Iterator[ObjectPath]:
        for name in self.store.list(self.key):
            if fnmatch.fnmatchcase(name, pattern):
                yield self / name  # type: ignore[misc]

    def rglob(self, pattern: str) -> Iterator[StorePath]:
        return (p for p in self.walk() if fnmatch.fnmatchcase(p.name, pattern))

    def read_bytes(self) -> bytes:
        return self.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        self.put(data)
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def create(self, data: bytes) -> bool:
        return self.put_if_absent(data)

    def open(self, mode: str = "rb", **kwargs: Any) -> Any:
        return self.open_reader()
