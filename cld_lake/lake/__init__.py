"""The trajectory lake: chunked Zarr v3 arrays plus Parquet tables, one directory."""

from cld_lake.lake.store import Block, Lake, Split, open_lake, parse_window
from cld_lake.lake.writer import CheckpointBuffer, SplitWriter

__all__ = ["Block", "CheckpointBuffer", "Lake", "Split", "SplitWriter", "open_lake", "parse_window"]
