"""The local store: a directory tree, with the fast path (``pread``/``readinto``, ``flock``,
temp file + fsync + rename + fsync of the folder)."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import re
import shutil
import socket
import uuid
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from cld_lake.storage._abc import Lock, Store, VersionConflict, as_buffers

if TYPE_CHECKING:
    from collections.abc import Buffer

_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


class LocalStore(Store):
    """Keys are file-system paths (``/``-separated, relative or absolute, as the user gave
    them); :meth:`url` is the path itself."""

    parallel_reads = 1
    has_folders = True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LocalStore)

    def __hash__(self) -> int:
        return hash(LocalStore)

    def __repr__(self) -> str:
        return "LocalStore()"

    # --- names ----------------------------------------------------------------------------
    def url(self, key: str) -> str:
        return key

    def local_path(self, key: str) -> Path:
        return Path(key)

    def canonical(self, key: str) -> str:
        return str(Path(key).expanduser().resolve())

    # --- reads ----------------------------------------------------------------------------
    def read(self, key: str) -> bytes:
        with open(key, "rb") as fh:
            return fh.read()

    def read_range(self, key: str, start: int, length: int) -> bytes:
        fd = os.open(key, os.O_RDONLY)
        try:
            return os.pread(fd, length, start)
        finally:
            os.close(fd)

    def read_into(self, key: str, out: memoryview) -> int:
        with open(key, "rb", buffering=0) as fh:
            return fh.readinto(out) or 0

    def open_reader(self, key: str) -> BinaryIO:
        import pyarrow as pa

        return pa.OSFile(key)  # type: ignore[return-value]

    def exists(self, key: str) -> bool:
        return os.path.exists(key)

    def is_file(self, key: str) -> bool:
        return os.path.exists(key) and not os.path.isdir(key)

    def list(self, key: str) -> list[str]:
        try:
            return os.listdir(key)
        except (FileNotFoundError, NotADirectoryError):
            return []

    def walk(self, key: str) -> Iterator[str]:
        for folder, _, files in os.walk(key):
            for name in files:
                yield os.path.join(folder, name)

    def tree_bytes(self, key: str) -> int:
        total = 0
        for folder, _, files in os.walk(key):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.path.getsize(os.path.join(folder, name))
        return total

    # --- writes ---------------------------------------------------------------------------
    def put(self, key: str, data: Buffer | Sequence[Buffer]) -> None:
        with self.put_file(key) as tmp, open(tmp, "wb") as fh:
            for part in as_buffers(data):
                fh.write(part)

    @contextlib.contextmanager
    def put_file(
        self, key: str, *, if_version: str | None = None, if_absent: bool = False
    ) -> Iterator[Path]:
        final = Path(key)
        tmp = temp_path_for(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            yield tmp
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            if if_version is None and not if_absent:
                os.replace(tmp, final)
            else:
                with _folder_lock(final.parent):
                    current = self.version(key)
                    if current != if_version if if_version is not None else current is not None:
                        raise VersionConflict(f"{key}: changed since version {if_version}")
                    os.replace(tmp, final)
            fsync_dir(final.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def put_new(self, key: str, data: Buffer | Sequence[Buffer], *, durable: bool = False) -> None:
        os.makedirs(os.path.dirname(key) or ".", exist_ok=True)
        with open(key, "wb", buffering=0) as fh:
            for part in as_buffers(data):
                view = memoryview(part).cast("B")
                done = 0
                while done < len(view):
                    done += fh.write(view[done:])
            if durable:
                os.fsync(fh.fileno())

    def put_if_absent(self, key: str, data: bytes) -> bool:
        final = Path(key)
        tmp = temp_path_for(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                with _folder_lock(final.parent):  # in turn with put_file's conditions
                    os.link(tmp, final)  # fails when the name exists: one of two racers wins
            except FileExistsError:
                return False
            fsync_dir(final.parent)
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def version(self, key: str) -> str | None:
        try:
            st = os.stat(key)
        except FileNotFoundError:
            return None
        return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"

    def replace_if(self, key: str, data: bytes, version: str) -> bool:
        if self.version(key) is None:
            return False  # nothing there: no version matches
        try:
            with self.put_file(key, if_version=version) as tmp:
                tmp.write_bytes(data)
        except VersionConflict:
            return False
        return True

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(key)

    def delete_tree(self, key: str) -> None:
        if os.path.isdir(key) and not os.path.islink(key):
            shutil.rmtree(key, ignore_errors=True)
        else:
            self.delete(key)

    def make_folder(self, key: str) -> None:
        os.makedirs(key, exist_ok=True)

    def sync_tree(self, key: str) -> None:
        for folder, _, files in os.walk(key, topdown=False):
            for name in files:
                fd = os.open(os.path.join(folder, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            fsync_dir(Path(folder))
        fsync_dir(Path(key).parent)

    def remove_dead_temps(self, key: str) -> list[str]:
        path = Path(key)
        removed = []
        prefix = f".{path.name}.tmp-"
        for entry in path.parent.glob(f"{glob.escape(prefix)}*"):
            host, _, rest = entry.name[len(prefix) :].rpartition("-")[0].rpartition("-")
            if host == _HOST and rest.isdigit() and not _pid_alive(int(rest)):
                entry.unlink(missing_ok=True)
                removed.append(str(entry))
        return removed

    def first_missing(self, key: str) -> str | None:
        top = None
        p = Path(key).absolute()
        while not p.exists() and p != p.parent:
            top, p = p, p.parent
        return None if top is None else str(top)

    # --- locks ----------------------------------------------------------------------------
    def lock(self, key: str, holder: str) -> FileLock:
        return FileLock(Path(key), holder)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Conditional writers of one folder in turn (an ``flock`` on the folder itself)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename inside the folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_temp_name(name: str) -> bool:
    """Is ``name`` a temp file a write left next to its target (:func:`temp_path_for`)?"""
    return name.startswith(".") and ".tmp-" in name


def temp_path_for(path: Path, *, keep_suffix: bool = False) -> Path:
    """A unique sibling temp name; never matches a committed name.

    It names the writer (host and pid) so that a later writer of ``path`` can delete what a
    killed one left behind (:meth:`LocalStore.remove_dead_temps`). With ``keep_suffix`` it
    ends in ``path``'s last suffixes (``.csv.gz``), for a writer that infers the format from
    the name (DuckDB's ``COPY ... TO``).
    """
    tail = "".join(s for s in path.suffixes[-2:] if "-" not in s) if keep_suffix else ""
    return path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}{tail}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class FileLock(Lock):
    """An exclusive ``flock`` on a file.

    The kernel releases it when the holding process dies (even by ``kill -9``), so a crashed
    writer never leaves a stale lock behind. The lock file's text names the holder for the
    error message of the next writer.
    """

    def __init__(self, path: str | os.PathLike[str], holder: str) -> None:
        self.path = Path(path)
        self.holder = holder
        self._fd: int | None = None
        self._on_drop: weakref.finalize[Any, Any] | None = None

    def try_acquire(self) -> str | None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                held_by = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
            finally:
                os.close(fd)
            return held_by
        self._took(fd)
        return None

    def acquire(self, timeout: float = 120.0) -> None:
        """Wait for the lock as long as its holder runs (the kernel frees it when the holder
        dies, so the wait ends)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._took(fd)

    def _took(self, fd: int) -> None:
        os.ftruncate(fd, 0)
        os.write(fd, self.holder.encode())
        self._fd = fd
        # a lock dropped unreleased (a writer never closed) is freed when it is collected, as
        # when its process ends: closing the file drops the flock
        self._on_drop = weakref.finalize(self, os.close, fd)

    def check(self) -> None:
        """The kernel keeps a ``flock`` until the process dies: nothing can take it over."""

    def release(self) -> None:
        if self._on_drop is not None:
            self._on_drop.detach()
            self._on_drop = None
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None
