"""Parquet files read through a store, and the one guard and the one writer for the local
files a command writes.

A lake's Parquet tables are read through its :class:`~cld_lake.storage.StorePath` (ranged
reads, on the local disk or an object store alike). Outputs (``--out`` of sql, export, select
and report, ``COPY ... TO`` inside SQL, manifests) are local files: :func:`check_output_path`
decides where one may go, and :class:`OutputFile` (or :func:`atomic_output`) writes it: a new
temp file in the target's directory, renamed over the target when complete. A rename replaces
the name, never the file behind it, so an existing hard link or symlink at the target is
replaced, not written through, and an interrupted or failed write leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cld_lake.errors import BadInputError
from cld_lake.storage import StorePath, fsync_dir, local, local_file, temp_path_for

__all__ = [
    "MANIFESTS_DIR",
    "OutputFile",
    "atomic_output",
    "check_output_path",
    "is_inside",
    "lake_file_like",
    "parquet_file",
    "row_group_batches",
]

#: The one folder of a lake that commands write outputs into (``select --out``'s manifests);
#: everything else in the lake is written by cld_lake's own writers only.
MANIFESTS_DIR = "manifests"


def parquet_file(path: StorePath, **options: Any) -> Any:
    """``pyarrow.parquet.ParquetFile`` of the file at ``path`` (its footer and row groups read
    by ranges)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path.open_reader(), **options)


def row_group_batches(pf: Any, columns: list[str] | None, max_rows: int) -> Iterator[Any]:
    """Record batches of ``columns`` of a ``ParquetFile``, one row group at a time (its
    ``iter_batches`` keeps buffers that grow with the file; this holds one row group)."""
    for g in range(pf.metadata.num_row_groups):
        yield from pf.read_row_group(g, columns=columns, use_threads=False).to_batches(
            max_chunksize=max_rows
        )


def is_inside(path: str | os.PathLike[str], root: StorePath) -> bool:
    """Is the local ``path`` (resolved, ``~`` expanded) ``root`` or below it? (A path given as
    text is a local path here, never a URL.)"""
    return local(path).canonical().is_within(root.canonical())


def check_output_path(
    out: str | os.PathLike[str] | StorePath,
    lake_root: StorePath | None,
    *,
    what: str = "--out",
    suffixes: tuple[str, ...] | None = None,
    allowed_dir: str | None = None,
    overwrite: bool = True,
) -> Path:
    """The one guard for every file a command writes (sql/export/select/report ``--out``,
    ``COPY ... TO`` inside SQL).

    Refuses, with a one-line :class:`BadInputError` naming ``what`` and the fix: a place on
    an object store; a suffix not in ``suffixes``; a path inside the lake at ``lake_root``
    (symlinks resolved; except directly in ``LAKE/<allowed_dir>/``); a missing parent
    directory; a directory; an existing FIFO, socket or device; an existing file that is the
    same file as a file of the lake (a hard link: same device and inode); an existing file
    unless ``overwrite``.
    """
    given = local_file(out)
    if given is None:
        raise BadInputError(
            f"{what} {out}: outputs are written to a local file; give a local path (and copy "
            f"it to the object store afterwards)"
        )
    out = given
    if suffixes is not None and out.suffix.lower() not in suffixes:
        raise BadInputError(
            f"{what} {out}: expected a {' or '.join(suffixes)} file; name it e.g. out{suffixes[0]}"
        )
    resolved = out.expanduser().resolve()
    if lake_root is not None and is_inside(resolved, lake_root):
        if allowed_dir is None or local(resolved.parent) != lake_root.canonical() / allowed_dir:
            where = f" or into {lake_root / allowed_dir}/" if allowed_dir else ""
            raise BadInputError(
                f"{what} {out}: inside the lake {lake_root}; the lake is only written by "
                f"cld-lake, write elsewhere{where}"
            )
    if not resolved.parent.is_dir():
        raise BadInputError(
            f"{what} {out}: directory {out.expanduser().parent} does not exist; create it first"
        )
    try:
        st = resolved.stat()
    except FileNotFoundError:
        return out
    if stat.S_ISDIR(st.st_mode):
        raise BadInputError(f"{what} {out}: is a directory; give a file name")
    if not stat.S_ISREG(st.st_mode):
        raise BadInputError(
            f"{what} {out}: is a {_kind(st.st_mode)}, not a regular file; give a file name"
        )
    twin = lake_file_like(resolved, lake_root) if lake_root is not None else None
    if twin is not None:
        raise BadInputError(
            f"{what} {out}: is the same file as the lake's {twin} (a hard link); remove the "
            f"link ({out}) or write elsewhere"
        )
    if not overwrite:
        raise BadInputError(f"{what} {out}: file exists; pass --force to overwrite it")
    return out


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def lake_file_like(path: str | os.PathLike[str], lake_root: StorePath) -> Path | None:
    """The file of the lake at ``lake_root`` that ``path`` (an existing local file) is, under
    another name: same device and inode. None when there is none (always for a lake on an
    object store, and for a file with one name only: the lake is only walked for a file with
    several hard links on the lake's device). ``path`` itself is not a match."""
    root = lake_root.local_path
    try:
        st = os.stat(path)
        if root is None or st.st_nlink < 2 or os.stat(root).st_dev != st.st_dev:
            return None
    except OSError:
        return None
    own = os.path.realpath(path)
    for folder, _, names in os.walk(root):
        for name in names:
            candidate = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                other = os.lstat(candidate)
                if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                    if os.path.realpath(candidate) != own:
                        return Path(candidate)
    return None


class OutputFile:
    """A local output written new and renamed into place.

    The writer writes :attr:`temp` (a fresh, hidden name in the target's directory; with
    ``keep_suffix`` it ends in the target's suffixes, for a writer that infers the format from
    the name); :meth:`commit` makes it durable and renames it over :attr:`target`;
    :meth:`discard` removes it. Temp files of killed writers of the same target are removed
    on creation.
    """

    def __init__(self, target: str | os.PathLike[str], *, keep_suffix: bool = False) -> None:
        self.target = Path(target)
        local(self.target).remove_dead_temps()
        self.temp = temp_path_for(self.target, keep_suffix=keep_suffix)
        self.committed = False

    def side_files(self) -> list[Path]:
        """Every file a writer of :attr:`temp` may create (DuckDB's ``tmp_`` sibling too)."""
        return [self.temp, self.temp.with_name(f"tmp_{self.temp.name}")]

    def commit(self) -> Path:
        if not self.temp.is_file():
            raise FileNotFoundError(f"{self.target}: the writer produced no file")
        with open(self.temp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(self.temp, self.target)
        fsync_dir(self.target.parent)
        self.committed = True
        return self.target

    def discard(self) -> None:
        for path in self.side_files():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def __enter__(self) -> OutputFile:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        try:
            if kind is None and not self.committed:
                self.commit()
        finally:
            self.discard()


@contextlib.contextmanager
def atomic_output(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Write the local file ``target`` atomically: yields the temp path to write; on success
    it replaces ``target``, on failure it is removed (see :class:`OutputFile`)."""
    with OutputFile(target) as output:
        yield output.temp
