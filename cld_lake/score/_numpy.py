"""The default engine: the NumPy kernel over the lake's row blocks (float64 accumulation).

The block iterator reads the next block in a background thread while this one computes, so
reading and arithmetic overlap; memory is one block plus a few cache-sized temporaries.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from cld_lake.lake.store import Split
from cld_lake.score._formula import Chunk, Progress, Reference, sums_over_blocks


def compute(
    split: Split,
    reference: Reference,
    *,
    block_rows: int | None = None,
    progress: Progress | None = None,
    threads: int | None = None,
) -> Iterator[Chunk]:
    """Chunks of the three sums for every row of ``split``, block by block, on ``threads`` threads
    (default: the CPU count, at most 4)."""
    threads = threads or min(os.cpu_count() or 1, 4)
    yield from sums_over_blocks(
        split, reference, block_rows=block_rows, progress=progress, threads=threads
    )
