"""Writing a new segment's values: row blocks go to their chunk files in background threads
while the caller produces the next block, and each block's NaN/inf count goes to the commit
record.

Every write path of :class:`~cld_lake.lake.SplitWriter` reduces to a stream of
``(start, {channel: values (rows, columns)})`` blocks: a checkpoint buffer is one block,
``append_columns`` reads its blocks from a row reader, ``commit_row_blocks`` takes the
caller's blocks after checking that they follow each other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from cld_lake.errors import BadInputError
from cld_lake.lake._segments import ChunkWriter
from cld_lake.lake._validate import count_nonfinite

RowReader = Callable[[int, int], Mapping[str, np.ndarray]]
RowBlock = tuple[int, Mapping[str, np.ndarray]]
T = TypeVar("T")

WRITES_IN_FLIGHT = 2  # blocks being checksummed and written while the next one is read


def write_blocks(
    arrays: Mapping[str, ChunkWriter],
    blocks: Iterable[RowBlock],
    width: int,
    alongside: Callable[[], T] | None = None,
) -> tuple[np.ndarray, T | None]:
    """Write each ``(start, {channel: values})`` block to ``arrays`` in a background thread,
    at most ``WRITES_IN_FLIGHT`` at a time, while ``blocks`` produces the next one; run
    ``alongside`` (a new split's tables) in one more thread meanwhile. Returns the NaN/inf
    count of the loss per column and what ``alongside`` returned.

    If ``blocks`` raises, the writes in flight finish and the error propagates."""
    nonfinite = np.zeros(width, np.int64)
    threads = WRITES_IN_FLIGHT + (alongside is not None)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cld-lake-write") as pool:
        side = pool.submit(alongside) if alongside is not None else None
        pending: list[Future[np.ndarray]] = []
        for start, block in blocks:
            if len(pending) >= WRITES_IN_FLIGHT:
                nonfinite += pending.pop(0).result()
            stop = start + len(block["loss"])
            pending.append(pool.submit(_check_and_write_rows, arrays, block, start, stop))
        for future in pending:
            nonfinite += future.result()
        return nonfinite, side.result() if side is not None else None


def _check_and_write_rows(
    arrays: Mapping[str, ChunkWriter], blocks: Mapping[str, np.ndarray], a: int, b: int
) -> np.ndarray:
    """Write rows ``[a, b)`` of every channel; return the NaN/inf count per loss column."""
    for channel, arr in arrays.items():
        arr.write(a, b, blocks[channel])
    return count_nonfinite(blocks["loss"])


def reader_blocks(
    read_rows: RowReader,
    num_rows: int,
    step: int,
    channels: Mapping[str, str],
    order: np.ndarray | None,
) -> Iterator[RowBlock]:
    """``read_rows(a, b)`` for each ``step`` rows, its columns put in ``order`` (None: as
    they are) and cast to the stored dtypes."""
    for a in range(0, num_rows, step):
        values = read_rows(a, min(a + step, num_rows))
        blocks = {}
        for channel, dtype in channels.items():
            block = np.asarray(values[channel])
            blocks[channel] = (block if order is None else block[:, order]).astype(
                dtype, copy=False
            )
        yield a, blocks


def checked_blocks(
    blocks: Iterable[RowBlock],
    channels: Mapping[str, str],
    num_rows: int,
    chunk: int,
    checkpoint: int,
) -> Iterator[RowBlock]:
    """The caller's blocks of ``checkpoint`` as one-column blocks cast to the stored dtypes,
    after checking that they follow each other from row 0, each starting on a chunk; raises
    if they stop short."""
    expected = 0
    for start, values in blocks:
        n = len(values["loss"])
        if start != expected or start % chunk or start + n > num_rows:
            raise BadInputError(
                f"row block at {start} of {n} rows: blocks must follow each other from "
                f"row 0 to {num_rows}, each starting on a multiple of {chunk}"
            )
        yield (
            start,
            {
                c: np.asarray(values[c]).astype(d, copy=False).reshape(n, 1)
                for c, d in channels.items()
            },
        )
        expected = start + n
    if expected != num_rows:
        raise BadInputError(
            f"checkpoint {checkpoint}: row blocks covered {expected} of {num_rows} rows"
        )
