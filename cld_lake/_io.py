"""Parquet files read through a store, and the one guard for the local files a command writes.

A lake's Parquet tables are read through its :class:`~cld_lake.storage.StorePath` (ranged
reads, on the local disk or an object store alike). Outputs (``--out`` of sql, export, select
and report; manifests) are local files: :func:`check_output_path` decides where one may go,
and the writer puts it in place atomically with ``storage.local(path).put_file()``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cld_lake.errors import BadInputError
from cld_lake.storage import StorePath, local, local_file

__all__ = ["check_output_path", "is_inside", "parquet_file", "row_group_batches"]


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
    """The one guard for every file a command writes (sql/export/select/report ``--out``).

    Refuses, with a one-line :class:`BadInputError` naming ``what`` and the fix: a place on
    an object store; a suffix not in ``suffixes``; a path inside the lake at ``lake_root``
    (except directly in ``LAKE/<allowed_dir>/``); a missing parent directory; an existing
    file unless ``overwrite``.
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
    if resolved.is_dir():
        raise BadInputError(f"{what} {out}: is a directory; give a file name")
    if resolved.exists() and not overwrite:
        raise BadInputError(f"{what} {out}: file exists; pass --force to overwrite it")
    return out
