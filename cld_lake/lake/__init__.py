"""The trajectory lake: chunked Zarr v3 arrays plus Parquet tables, one directory."""

from cld_lake.lake.importer import ImportResult, import_file
from cld_lake.lake.store import Block, Lake, Split, open_lake, parse_window
from cld_lake.lake.writer import CheckpointBuffer, SplitWriter

__all__ = [
    "Block",
    "CheckpointBuffer",
    "ImportResult",
    "Lake",
    "Split",
    "SplitWriter",
    "import_file",
    "open_lake",
    "parse_window",
]
