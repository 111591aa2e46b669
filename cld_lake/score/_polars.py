"""The Polars engine: a LazyFrame over the block iterator, collected with the streaming engine.

The lake's row blocks enter Polars through an IO-source plugin (a generator of wide
DataFrames ``r, label, l0..l{K-1}``); the plan joins the per-class table ``(label, u0..)`` and
computes the three sums as horizontal expressions in wide form (no group-by).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import reduce
from typing import TYPE_CHECKING

from cld_lake.lake.store import Split
from cld_lake.score._formula import Chunk, Progress, Reference, Sums
from cld_lake.score._wide import (
    BATCH_ROWS,
    loss_columns,
    reference_table,
    u_columns,
    wide_batches,
)

if TYPE_CHECKING:
    import polars as pl

RESULT_BATCH_ROWS = 1 << 16


def _source(
    split: Split,
    reference: Reference,
    block_rows: int | None,
    progress: Progress | None,
    batch_rows: int = BATCH_ROWS,
) -> pl.LazyFrame:
    import polars as pl

    k = len(reference.checkpoints)
    names = loss_columns(k)
    float_type = pl.Float64 if split.channels["loss"] == "float64" else pl.Float32
    schema = {"r": pl.Int64, "label": pl.Int64, **{c: float_type for c in names}}

    def io_source(
        with_columns: list[str] | None,
        predicate: pl.Expr | None,
        n_rows: int | None,
        batch_size: int | None,
    ) -> Iterator[pl.DataFrame]:
        size = min(batch_size or batch_rows, batch_rows)
        produced = 0
        for rows, labels, columns in wide_batches(split, reference, block_rows, progress, size):
            data = {"r": rows, "label": labels, **dict(zip(names, columns, strict=True))}
            frame = pl.DataFrame(data, schema=schema)
            if with_columns is not None:
                frame = frame.select(with_columns)
            if predicate is not None:
                frame = frame.filter(predicate)
            if n_rows is not None and produced + frame.height >= n_rows:
                yield frame.head(n_rows - produced)
                return
            produced += frame.height
            yield frame

    from polars.io.plugins import register_io_source

    return register_io_source(io_source, schema=schema, explain_name="cld_lake row blocks")


def sums_plan(lazy: pl.LazyFrame, reference: pl.LazyFrame, k: int) -> pl.LazyFrame:
    """The plan computing ``r, a, b, q`` from a wide LazyFrame and the per-class table."""
    import polars as pl

    l64 = [pl.col(c).cast(pl.Float64) for c in loss_columns(k)]
    d0 = l64[1] - l64[0]
    e_cols = [((l64[t + 1] - l64[t]) - d0).alias(f"e{t}") for t in range(1, k - 1)]
    es = [pl.col(f"e{t}") for t in range(1, k - 1)]
    us = [pl.col(c) for c in u_columns(k - 1)[1:]]
    zero = pl.lit(0.0, dtype=pl.Float64)
    # e0 = 0 exactly, so the t = 0 terms are left out; sums run left to right, as in SQL.
    a = reduce(lambda x, y: x + y, [x * y for x, y in zip(es, us, strict=True)], zero)
    b = reduce(lambda x, y: x + y, es, zero)
    q = reduce(lambda x, y: x + y, [x * x for x in es], zero)
    return (
        lazy.select("r", "label", *e_cols)
        .join(reference, on="label", how="inner")
        .select("r", "label", a.alias("a"), b.alias("b"), q.alias("q"))
    )


def compute(
    split: Split,
    reference: Reference,
    *,
    block_rows: int | None = None,
    progress: Progress | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[Chunk]:
    """Chunks of the three sums for every row of ``split``, from Polars' streaming engine.

    ``batch_rows`` bounds the frames the source hands Polars (the lake is still read in
    ``block_rows`` blocks).
    """
    import polars as pl

    k = len(reference.checkpoints)
    ref = pl.from_arrow(reference_table(reference)).lazy()
    plan = sums_plan(_source(split, reference, block_rows, progress, batch_rows), ref, k)
    for frame in plan.collect_batches(
        chunk_size=RESULT_BATCH_ROWS, maintain_order=False, engine="streaming"
    ):
        sums = Sums(*(frame[c].to_numpy() for c in ("a", "b", "q")))
        yield Chunk(frame["r"].to_numpy(), frame["label"].to_numpy(), sums)
