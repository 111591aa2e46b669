"""cld_lake: out-of-core CLD (Correlation of Loss Differences) coreset selection.

record (cld_lake.torch) -> lake -> score -> sql / select -> manifest -> train on the coreset.
``import cld_lake`` never imports torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cld_lake._version import __version__
from cld_lake.errors import CldLakeError
from cld_lake.lake import Block, Lake, Split, SplitWriter, compact, import_file, open_lake
from cld_lake.manifest import Manifest, load_manifest
from cld_lake.score import (
    CLDAccumulator,
    cld_reference,
    score,  # the function; the subpackage stays importable by name
)
from cld_lake.select import select  # the function (module: cld_lake.select)

if TYPE_CHECKING:
    import os

    import polars as pl


def query(lake: Lake | str | os.PathLike[str], sql: str) -> pl.DataFrame:
    """Run DuckDB SQL over the lake's views and return a Polars DataFrame.

    The same as :func:`cld_lake.sql.query`, loaded on first use so that ``import cld_lake``
    does not import DuckDB. Views: ``samples``, ``scores``, ``checkpoints``, ``losses``,
    ``val_reference`` (see ``docs/sql.md``).
    """
    from cld_lake.sql import query as run_query

    return run_query(lake, sql)


__all__ = [
    "Block",
    "CLDAccumulator",
    "CldLakeError",
    "Lake",
    "Manifest",
    "Split",
    "SplitWriter",
    "__version__",
    "import_file",
    "cld_reference",
    "compact",
    "load_manifest",
    "open_lake",
    "query",
    "score",
    "select",
]
