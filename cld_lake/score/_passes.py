"""One pass over the train split's row blocks, scoring every planned method on each block.

What every engine yields is a :class:`ScoredChunk`: every planned method's final scores for
some rows. The numpy engine runs :func:`score_blocks` over the whole split, the dask engine over
a row range per task. A block is read once (the union of the methods' channels and
checkpoints), cut into pieces of :data:`PIECE_ROWS` rows whose derived arrays the methods share
(:class:`~cld_lake.score._method.Rows`), and each method's scores for the block are final when
it is done: memory is one block, never the N x T matrix.

The DuckDB and Polars engines compute CLD's three row sums in their own language and yield
:class:`SumsChunk` objects; :func:`finalised` turns them into scored chunks through the
method's own last stage (``Method.from_sums``), so the edge cases are decided in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cld_lake.lake.store import Split
from cld_lake.score._formula import Reference, Sums
from cld_lake.score._kernel import run_pieces
from cld_lake.score._method import Plan, Rows, Scored

# Rows of a block handed to the methods at once: keeps the float64 temporaries (one
# (checkpoints x rows) array per derived quantity) a few MB.
PIECE_ROWS = 8192

Progress = Callable[[int], None]


@dataclass
class ScoredChunk:
    """What an engine yields: every planned method's scores for some rows (a slice, or row
    positions in any order), their labels, and the counters each method keeps (``nan`` and
    the method's own)."""

    rows: slice | np.ndarray
    labels: np.ndarray
    scores: dict[str, np.ndarray]
    counts: dict[str, dict[str, int]]


@dataclass
class SumsChunk:
    """CLD's three sums of some rows (a slice or row positions) and their labels: what the
    DuckDB and Polars engines compute before :func:`finalised`."""

    rows: slice | np.ndarray
    labels: np.ndarray
    sums: Sums


def read_needs(plans: Sequence[Plan]) -> tuple[np.ndarray, list[str]]:
    """The checkpoints (ascending) and channels one read must cover for every plan."""
    ids = np.unique(np.concatenate([p.used for p in plans])) if plans else np.zeros(0, np.int64)
    channels = list(dict.fromkeys(c for p in plans for c in p.method.channels))
    return ids.astype(np.int64), channels


def _counted(scored: Scored) -> dict[str, int]:
    """A method's counters for some rows: ``nan`` (rows without a score) and its own."""
    return {"nan": int(np.isnan(scored.scores).sum()), **scored.counts}


def score_values(
    values: Mapping[str, np.ndarray],
    labels: np.ndarray,
    plans: Sequence[Plan],
    threads: int = 1,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, int]]]:
    """Every plan's scores for one block of rows (values ``(m, T)`` per channel), in pieces
    of :data:`PIECE_ROWS` rows (one per thread when every method takes whole blocks)."""
    n = len(labels)
    scores = {p.name: np.empty(n, dtype=np.float64) for p in plans}
    piece_counts: list[dict[str, dict[str, int]]] = []
    step = PIECE_ROWS
    if all(p.method.whole_blocks for p in plans):
        step = max(1, -(-n // max(threads, 1)))
    pieces = [(a, min(a + step, n)) for a in range(0, n, step)]

    def run(piece: tuple[int, int]) -> None:
        a, b = piece
        rows = Rows({c: v[a:b] for c, v in values.items()}, labels[a:b])
        counts: dict[str, dict[str, int]] = {}
        for plan in plans:
            scored = plan.method.score(rows, plan)
            scores[plan.name][a:b] = scored.scores
            counts[plan.name] = _counted(scored)
        piece_counts.append(counts)  # list.append is atomic under the GIL

    run_pieces(run, pieces, threads)
    return scores, merge_counts(piece_counts, [p.name for p in plans])


def merge_counts(
    parts: Sequence[Mapping[str, Mapping[str, int]]], names: Sequence[str]
) -> dict[str, dict[str, int]]:
    """Sum per-piece counters by method and counter name."""
    out: dict[str, dict[str, int]] = {name: {} for name in names}
    for part in parts:
        for name, counts in part.items():
            for key, value in counts.items():
                out[name][key] = out[name].get(key, 0) + int(value)
    return out


def score_blocks(
    split: Split,
    plans: Sequence[Plan],
    block_rows: int | None = None,
    start: int = 0,
    stop: int | None = None,
    progress: Progress | None = None,
    threads: int = 1,
) -> Iterator[ScoredChunk]:
    """Score rows ``[start, stop)`` of ``split`` for every plan, one chunk per block."""
    ids, channels = read_needs(plans)
    blocks = split.blocks(
        block_rows=block_rows, checkpoints=ids, channels=channels, start=start, stop=stop
    )
    for block in blocks:
        scores, counts = score_values(block.values, block.labels, plans, threads)
        yield ScoredChunk(
            slice(block.start, block.start + len(block)), block.labels, scores, counts
        )
        if progress is not None:
            progress(len(block))


def finalised(
    plans: Sequence[Plan], sums: Callable[[Reference], Iterator[SumsChunk]]
) -> Iterator[ScoredChunk]:
    """The pass of an engine that computes the three sums itself: ``sums(reference)`` streams
    them for the one planned method (CLD), each chunk finished by ``Method.from_sums``."""
    [plan] = plans  # the engine registry lets these engines run their one method alone
    finish, reference = plan.method.from_sums, plan.reference
    if finish is None or reference is None:
        raise RuntimeError(f"--method {plan.method.name} has no sums stage for this engine")
    for chunk in sums(reference):
        scored = finish(chunk.sums, chunk.labels, plan)
        yield ScoredChunk(
            chunk.rows, chunk.labels, {plan.name: scored.scores}, {plan.name: _counted(scored)}
        )
