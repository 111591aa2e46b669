"""The default engine: every method's row maths over the lake's row blocks (float64), CLD's
three sums in the fused C kernel.

The block iterator reads the next block in a background thread while this one computes, so
reading and arithmetic overlap; memory is one block plus a few cache-sized temporaries.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from cld_lake.lake.store import Split
from cld_lake.score._method import Plan
from cld_lake.score._passes import Progress, ScoredChunk, score_blocks


def compute(
    split: Split,
    plans: Sequence[Plan],
    *,
    block_rows: int | None = None,
    progress: Progress | None = None,
    threads: int | None = None,
) -> Iterator[ScoredChunk]:
    """Every planned method's scores for every row of ``split``, in one pass over its blocks,
    pieces of each block on ``threads`` threads (default: the CPU count, at most 4)."""
    threads = threads or min(os.cpu_count() or 1, 4)
    yield from score_blocks(split, plans, block_rows=block_rows, progress=progress, threads=threads)
