"""The trajectory lake: chunked Zarr v3 arrays plus Parquet tables, one directory."""

from cld_lake.lake.importer import ImportResult, import_file
from cld_lake.lake.store import Block, Lake, Split, open_lake, parse_window
from cld_lake.lake.writer import CheckpointBuffer, SampleBlocks, SplitWriter

__all__ = [
    "Block",
    "CheckpointBuffer",
    "ImportResult",
    "Lake",
    "SampleBlocks",
    "Split",
    "SplitWriter",
    "import_file",
    "open_lake",
    "parse_window",
]
