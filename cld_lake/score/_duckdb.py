"""The DuckDB engine: the three sums in SQL over wide rows streamed as Arrow batches.

DuckDB pulls ``(r, label, l0..l{K-1})`` batches from the lake's block iterator through an Arrow
C stream (nothing is exported or materialised), joins the small per-class table
``(label, u0..u{n-1})`` and computes, per row, the sufficient statistics in wide form
(``sum e_t u'_t``, ``sum e_t``, ``sum e_t^2``) with no GROUP BY. Results stream back in batches
(with ``r``) and are finalised as they arrive. ``memory_limit`` and ``temp_directory`` are set
explicitly.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from cld_lake.lake.store import Split
from cld_lake.score._formula import Chunk, Progress, Reference, Sums
from cld_lake.score._wide import arrow_schema, record_batches, reference_table

RESULT_BATCH_ROWS = 1 << 17


def sums_sql(k: int, source: str = "trajectories", ref: str = "reference") -> str:
    """The SQL computing ``r, a, b, q`` for ``k`` selected checkpoints."""
    d0 = "(l1::DOUBLE - l0::DOUBLE)"
    es = [f"(l{t + 1}::DOUBLE - l{t}::DOUBLE) - {d0} AS e{t}" for t in range(1, k - 1)]
    n = k - 1
    a = " + ".join(f"e{t} * u{t}" for t in range(1, n)) or "0.0"
    b = " + ".join(f"e{t}" for t in range(1, n)) or "0.0"
    q = " + ".join(f"e{t} * e{t}" for t in range(1, n)) or "0.0"
    # e0 = 0 exactly, so the t = 0 terms are left out.
    return (
        f"WITH e AS (SELECT r, label, {', '.join(es)} FROM {source}) "
        f"SELECT r, label, {a} AS a, {b} AS b, {q} AS q FROM e JOIN {ref} USING (label)"
    )


def compute(
    split: Split,
    reference: Reference,
    *,
    block_rows: int | None = None,
    progress: Progress | None = None,
    memory_limit: str = "1GB",
    threads: int | None = None,
) -> Iterator[Chunk]:
    """The three sums for every row of ``split`` computed by DuckDB."""
    import duckdb
    import pyarrow as pa

    k = len(reference.checkpoints)
    temp_dir = tempfile.mkdtemp(prefix="cld-lake-duckdb-")
    config: dict[str, Any] = {"memory_limit": memory_limit, "temp_directory": temp_dir}
    if threads is not None:
        config["threads"] = threads
    con = duckdb.connect(config=config)
    try:
        reader = pa.RecordBatchReader.from_batches(
            arrow_schema(split, k), record_batches(split, reference, block_rows, progress)
        )
        con.register("trajectories", reader)
        con.register("reference", reference_table(reference))
        result = con.sql(sums_sql(k)).to_arrow_reader(RESULT_BATCH_ROWS)
        for batch in result:
            cols = [batch.column(i).to_numpy(zero_copy_only=False) for i in range(5)]
            a, b, q = (np.asarray(c, dtype=np.float64) for c in cols[2:])
            yield Chunk(cols[0], cols[1], Sums(a, b, q))
    finally:
        con.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
