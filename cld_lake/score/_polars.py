"""The Polars engine: CLD's three sums by one Polars plan run on each wide batch of the block
iterator, finished by CLD's own last stage (``Method.from_sums``).

Each batch of the lake's row blocks (``r, label, l0..l{K-1}``, at most ``batch_rows`` rows)
becomes a DataFrame; the plan joins the per-class table ``(label, u0..)`` and computes the three
sums as horizontal expressions in wide form (no group-by), and the batch's sums are handed on
before the next batch is read.

Why one plan per batch rather than one streaming query over a source of every batch: the
streaming engine pulls its source ahead of a slower consumer (the scorer writing scores out),
so the frames it held grew with the split (``docs/scores.md`` has the measurements). Here
memory is one batch of K columns and its float64 stages, whatever N and however slow the
consumer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import reduce
from typing import TYPE_CHECKING

from cld_lake.lake.store import Split
from cld_lake.score._formula import Reference, Sums
from cld_lake.score._method import Plan
from cld_lake.score._passes import Progress, ScoredChunk, SumsChunk, finalised
from cld_lake.score._wide import loss_columns, reference_table, u_columns, wide_batches

if TYPE_CHECKING:
    import polars as pl

# Rows per batch: each plan has a start-up cost (hundreds of expressions at K = 90), so small
# batches pay it often, large ones hold more; docs/scores.md has the measured trade-off.
BATCH_ROWS = 1 << 15


def sums_plan(lazy: pl.LazyFrame, reference: pl.LazyFrame, k: int) -> pl.LazyFrame:
    """The plan computing ``r, label, a, b, q`` from a wide LazyFrame ``r, label, l0..l{k-1}``
    and the per-class table (rows in any order: ``r`` says which)."""
    import polars as pl

    ls = loss_columns(k)
    ts = range(1, k - 1)
    # Stages, each column computed once: float64 losses, differences d_t, e_t = d_t - d_0.
    widened = lazy.select("r", "label", *[pl.col(c).cast(pl.Float64) for c in ls])
    d0 = (pl.col(ls[1]) - pl.col(ls[0])).alias("d0")
    diffs = [(pl.col(ls[t + 1]) - pl.col(ls[t])).alias(f"d{t}") for t in ts]
    es = [(pl.col(f"d{t}") - pl.col("d0")).alias(f"e{t}") for t in ts]
    e = [pl.col(f"e{t}") for t in ts]
    u = [pl.col(c) for c in u_columns(k - 1)[1:]]
    zero = pl.lit(0.0, dtype=pl.Float64)
    # e0 = 0 exactly, so the t = 0 terms are left out. The sums run left to right from 0.0, the
    # order of the numpy kernel (the same bits; sum_horizontal adds in another order).
    a = reduce(lambda x, y: x + y, [x * y for x, y in zip(e, u, strict=True)], zero)
    b = reduce(lambda x, y: x + y, e, zero)
    q = reduce(lambda x, y: x + y, [x * x for x in e], zero)
    return (
        widened.select("r", "label", d0, *diffs)
        .select("r", "label", *es)
        .join(reference, on="label", how="inner")
        .select("r", "label", a.alias("a"), b.alias("b"), q.alias("q"))
    )


def compute(
    split: Split,
    plans: Sequence[Plan],
    *,
    block_rows: int | None = None,
    progress: Progress | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[ScoredChunk]:
    """CLD for every row of ``split``: :func:`sums` finished by the one formula."""
    return finalised(
        plans,
        lambda reference: sums(
            split, reference, block_rows=block_rows, progress=progress, batch_rows=batch_rows
        ),
    )


def sums(
    split: Split,
    reference: Reference,
    *,
    block_rows: int | None = None,
    progress: Progress | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[SumsChunk]:
    """Chunks of the three sums for every row of ``split``, one per batch of at most
    ``batch_rows`` rows (the lake is still read in ``block_rows`` blocks)."""
    import polars as pl

    k = len(reference.checkpoints)
    names = loss_columns(k)
    float_type = pl.Float64 if split.channels["loss"] == "float64" else pl.Float32
    schema = {"r": pl.Int64, "label": pl.Int64, **{c: float_type for c in names}}
    ref = pl.from_arrow(reference_table(reference)).lazy()
    # The plan is already staged (each column computed once): optimising it again for every
    # batch costs CPU time for nothing.
    plain = pl.QueryOptFlags.none()
    for rows, labels, columns in wide_batches(split, reference, block_rows, progress, batch_rows):
        data = {"r": rows, "label": labels, **dict(zip(names, columns, strict=True))}
        frame = pl.DataFrame(data, schema=schema)
        out = sums_plan(frame.lazy(), ref, k).collect(engine="in-memory", optimizations=plain)
        if out.height != len(rows):  # every label has a row in the per-class table
            raise RuntimeError(f"polars returned {out.height} of {len(rows)} rows of a batch")
        batch_sums = Sums(*(out[c].to_numpy() for c in ("a", "b", "q")))
        yield SumsChunk(out["r"].to_numpy(), out["label"].to_numpy(), batch_sums)
