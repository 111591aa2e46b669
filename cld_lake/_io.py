"""Small file-system helpers: atomic writes (temp file + fsync + rename) and locks."""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cld_lake._storage import Lease, ObjectPath, is_url
from cld_lake.errors import BadInputError

AnyPath = Path | ObjectPath


def fsync_dir(path: AnyPath) -> None:
    """Make a rename inside ``path`` durable (object stores: nothing to do)."""
    if isinstance(path, ObjectPath):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path_for(path: Path) -> Path:
    """A unique sibling temp name; never matches a committed name.

    It names the writer (host and pid) so that a later writer of ``path`` can delete what a
    killed one left behind (:func:`remove_dead_temps`).
    """
    return path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}")


_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def remove_dead_temps(path: AnyPath) -> list[Path]:
    """Delete the temp files of ``path`` left by writers of this host that no longer run.

    A temp file whose writer is alive (or on another host, or unknown) is kept. Returns the
    paths deleted. (Nothing is ever written to a temp name on an object store.)
    """
    if isinstance(path, ObjectPath):
        return []
    removed = []
    prefix = f".{path.name}.tmp-"
    for entry in path.parent.glob(f"{glob.escape(prefix)}*"):
        host, _, rest = entry.name[len(prefix) :].rpartition("-")[0].rpartition("-")
        if host == _HOST and rest.isdigit() and not _pid_alive(int(rest)):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str] | ObjectPath) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success fsync it and rename it over ``path``.

    An interrupted write leaves only a hidden temp file, never a half-written ``path``. On an
    object store the temp file is local and replaces the object in one upload, which the store
    shows whole or not at all.
    """
    if isinstance(path, ObjectPath):
        with _uploaded(path) as tmp:
            yield tmp
        return
    final = Path(path)
    tmp = temp_path_for(final)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def _uploaded(path: ObjectPath) -> Iterator[Path]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cld-lake-upload-") as folder:
        tmp = Path(folder) / path.name
        yield tmp
        path.upload(tmp)


def parquet_file(path: AnyPath, **options: Any) -> Any:
    """``pyarrow.parquet.ParquetFile`` of a local file or an object (read by ranges)."""
    import pyarrow.parquet as pq

    if isinstance(path, ObjectPath):
        return pq.ParquetFile(path.open("rb", block_size=8 * 2**20), **options)
    return pq.ParquetFile(path, **options)


def row_group_batches(pf: Any, columns: list[str] | None, max_rows: int) -> Iterator[Any]:
    """Record batches of ``columns`` of a ``ParquetFile``, one row group at a time (its
    ``iter_batches`` holds buffers that grow with the file: +114 MB over a 10M-row table,
    against +8 MB this way)."""
    for g in range(pf.metadata.num_row_groups):
        yield from pf.read_row_group(g, columns=columns, use_threads=False).to_batches(
            max_chunksize=max_rows
        )


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_parquet(path: str | os.PathLike[str], table: Any, **options: Any) -> None:
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **options)


def is_inside(
    path: str | os.PathLike[str] | ObjectPath, root: str | os.PathLike[str] | ObjectPath
) -> bool:
    """Is ``path`` (resolved, ``~`` expanded) ``root`` or below it?"""
    if isinstance(path, ObjectPath) or isinstance(root, ObjectPath):
        return isinstance(path, ObjectPath) and path.is_relative_to(root)
    return Path(path).expanduser().resolve().is_relative_to(Path(root).expanduser().resolve())


_FOLDED_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/[^/]")


def check_output_path(
    out: str | os.PathLike[str],
    lake_path: str | os.PathLike[str] | None,
    *,
    what: str = "--out",
    suffixes: tuple[str, ...] | None = None,
    allowed_dir: str | None = None,
    overwrite: bool = True,
) -> Path:
    """The one guard for every file a command writes (sql/export/select/report ``--out``).

    Refuses, with a one-line :class:`BadInputError` naming ``what`` and the fix: a suffix not
    in ``suffixes``; a path inside the lake (except directly in ``LAKE/<allowed_dir>/``); a
    missing parent directory; an existing file unless ``overwrite``.
    """
    # (a click Path has already folded "s3://b/k" into "s3:/b/k")
    if isinstance(out, ObjectPath) or is_url(str(out)) or _FOLDED_URL.match(str(out)):
        raise BadInputError(
            f"{what} {out}: outputs are written to a local file; give a local path (and copy "
            f"it to the object store afterwards)"
        )
    out = Path(out)
    if suffixes is not None and out.suffix.lower() not in suffixes:
        raise BadInputError(
            f"{what} {out}: expected a {' or '.join(suffixes)} file; name it e.g. out{suffixes[0]}"
        )
    resolved = out.expanduser().resolve()
    if lake_path is not None and is_inside(resolved, lake_path):
        root = Path(lake_path).expanduser().resolve()
        if allowed_dir is None or resolved.parent != root / allowed_dir:
            where = f" or into {Path(lake_path) / allowed_dir}/" if allowed_dir else ""
            raise BadInputError(
                f"{what} {out}: inside the lake {lake_path}; the lake is only written by "
                f"cld-lake, write elsewhere{where}"
            )
    if not resolved.parent.is_dir():
        raise BadInputError(
            f"{what} {out}: directory {out.expanduser().parent} does not exist; create it first"
        )
    if resolved.is_dir():
        raise BadInputError(f"{what} {out}: is a directory; give a file name")
    if resolved.exists() and not overwrite:
        raise BadInputError(f"{what} {out}: file exists; pass --force to overwrite it")
    return out


class FileLock:
    """An exclusive, non-blocking ``flock`` on a file.

    The kernel releases it when the holding process dies (even by ``kill -9``), so a crashed
    writer never leaves a stale lock behind. The lock file's text names the holder for the
    error message of the next writer.
    """

    def __init__(self, path: Path, holder: str) -> None:
        self.path = path
        self.holder = holder
        self._fd: int | None = None

    def try_acquire(self) -> str | None:
        """Take the lock; return None on success, else the current holder's description."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                held_by = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
            finally:
                os.close(fd)
            return held_by
        os.ftruncate(fd, 0)
        os.write(fd, self.holder.encode())
        self._fd = fd
        return None

    def check(self) -> None:
        """The kernel keeps a ``flock`` until the process dies: nothing can take it over."""

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def writer_lock(path: AnyPath, holder: str) -> FileLock | Lease:
    """The single-writer lock at ``path``: an ``flock`` on local disk, a lease object on an
    object store (both: ``try_acquire`` / ``check`` / ``release`` / ``held``)."""
    if isinstance(path, ObjectPath):
        return Lease(path, holder)
    return FileLock(path, holder)
