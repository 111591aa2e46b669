"""Files a command writes and reads: atomic writes (through :mod:`cld_lake.storage`), Parquet
readers, and the one guard for output paths."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cld_lake.errors import BadInputError
from cld_lake.storage import Lock, StorePath, is_url, local, location
from cld_lake.storage import fsync_dir as _fsync_dir
from cld_lake.storage._local import FileLock, temp_path_for

#: a place a lake file lives: a local path, or a location on a store
AnyPath = str | os.PathLike[str] | StorePath

__all__ = [
    "AnyPath",
    "FileLock",
    "atomic_path",
    "atomic_write_json",
    "atomic_write_parquet",
    "check_output_path",
    "fsync_dir",
    "is_inside",
    "parquet_file",
    "remove_dead_temps",
    "row_group_batches",
    "temp_path_for",
    "writer_lock",
]


def fsync_dir(path: AnyPath) -> None:
    """Make a rename inside the local folder ``path`` durable (an object store: nothing)."""
    folder = location(path).local_path
    if folder is not None:
        _fsync_dir(folder)


def remove_dead_temps(path: AnyPath) -> list[Path]:
    """Delete the temp files of ``path`` left by writers of this host that no longer run.

    A temp file whose writer is alive (or on another host, or unknown) is kept. Returns the
    paths deleted. (Nothing is ever written to a temp name on an object store.)
    """
    return [Path(str(p)) for p in location(path).remove_dead_temps()]


def atomic_path(path: AnyPath) -> contextlib.AbstractContextManager[Path]:
    """Yield a temp path next to ``path``; on success fsync it and rename it over ``path``.

    An interrupted write leaves only a hidden temp file, never a half-written ``path``. On an
    object store the temp file is local and replaces the object in one upload, which the store
    shows whole or not at all.
    """
    return location(path).put_file()


def parquet_file(path: AnyPath, **options: Any) -> Any:
    """``pyarrow.parquet.ParquetFile`` of a local file or an object (read by ranges)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(location(path).open_reader(), **options)


def row_group_batches(pf: Any, columns: list[str] | None, max_rows: int) -> Iterator[Any]:
    """Record batches of ``columns`` of a ``ParquetFile``, one row group at a time (its
    ``iter_batches`` keeps buffers that grow with the file; this holds one row group)."""
    for g in range(pf.metadata.num_row_groups):
        yield from pf.read_row_group(g, columns=columns, use_threads=False).to_batches(
            max_chunksize=max_rows
        )


def atomic_write_json(path: AnyPath, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_parquet(path: AnyPath, table: Any, **options: Any) -> None:
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **options)


def is_inside(path: AnyPath, root: AnyPath) -> bool:
    """Is ``path`` (resolved, ``~`` expanded) ``root`` or below it? (A path given as text is
    a local path here, never a URL.)"""
    return local(path).canonical().is_within(location(root).canonical())


_FOLDED_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/[^/]")


def check_output_path(
    out: str | os.PathLike[str] | StorePath,
    lake_path: AnyPath | None,
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
    given = local(out).local_path
    if given is None or is_url(str(out)) or _FOLDED_URL.match(str(out)):
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
    if lake_path is not None and is_inside(resolved, lake_path):
        root = location(lake_path).canonical()
        if allowed_dir is None or local(resolved.parent) != root / allowed_dir:
            where = f" or into {location(lake_path) / allowed_dir}/" if allowed_dir else ""
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


def writer_lock(path: AnyPath, holder: str) -> Lock:
    """The single-writer lock at ``path``: an ``flock`` on local disk, a lease object on an
    object store (both: ``try_acquire`` / ``check`` / ``release`` / ``held``)."""
    return location(path).lock(holder)
