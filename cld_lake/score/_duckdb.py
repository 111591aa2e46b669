"""The DuckDB engine: CLD's three sums in SQL over wide rows streamed as Arrow batches.

DuckDB pulls ``(r, label, l0..l{K-1})`` batches from the lake's block iterator through an Arrow
C stream (nothing is exported or materialised), joins the small per-class table
``(label, u0..u{n-1})`` and computes, per row, the sufficient statistics in wide form
(``sum e_t u'_t``, ``sum e_t``, ``sum e_t^2``) with no GROUP BY. Results stream back in batches
(with ``r``) and are finalised as they arrive, by CLD's own last stage (``Method.from_sums``). ``memory_limit``, ``temp_directory`` and
``threads`` are set explicitly.

The stream is registered as a scan source that declares its row count: without it DuckDB
cannot tell the stream from the 1000-row class table and may build the join's hash table on
the stream, i.e. hold (and spill) every row. With it, the class table is the build side and
the stream passes through the join one batch at a time.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from cld_lake import _duckdb
from cld_lake.lake.store import Split
from cld_lake.score._formula import Reference, Sums
from cld_lake.score._method import Plan
from cld_lake.score._passes import Progress, ScoredChunk, SumsChunk, finalised
from cld_lake.score._wide import BATCH_ROWS, arrow_schema, record_batches, reference_table

RESULT_BATCH_ROWS = 1 << 16
MEMORY_LIMIT = "512MB"


class TrajectorySource(_duckdb.ScanSource):
    """The split's selected losses as a stream of wide Arrow batches, with a known row count."""

    def __init__(
        self,
        split: Split,
        reference: Reference,
        block_rows: int | None = None,
        progress: Progress | None = None,
        batch_rows: int = BATCH_ROWS,
    ) -> None:
        super().__init__()
        self.split, self.reference = split, reference
        self.block_rows, self.progress, self.batch_rows = block_rows, progress, batch_rows
        self._schema = arrow_schema(split, len(reference.checkpoints))

    @property
    def schema(self) -> Any:
        return self._schema

    def rows(self) -> int:
        return self.split.num_samples

    def batches(self, columns: list[str] | None, filters: Sequence[Any]) -> Iterator[Any]:
        """Every column of every row (the source takes no filters and does not narrow)."""
        return record_batches(
            self.split, self.reference, self.block_rows, self.progress, self.batch_rows
        )

    def stream(self, columns: Sequence[int] | None, filters: Sequence[Any]) -> tuple[object, bool]:
        return self.reader().__arrow_c_stream__(), False


def sums_sql(k: int, source: str = "trajectories", ref: str = "reference") -> str:
    """The SQL computing ``r, label, a, b, q`` for ``k`` selected checkpoints."""
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
    plans: Sequence[Plan],
    *,
    block_rows: int | None = None,
    progress: Progress | None = None,
    memory_limit: str = MEMORY_LIMIT,
    threads: int | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[ScoredChunk]:
    """CLD for every row of ``split``: :func:`sums` finished by the one formula."""
    return finalised(
        plans,
        lambda reference: sums(
            split,
            reference,
            block_rows=block_rows,
            progress=progress,
            memory_limit=memory_limit,
            threads=threads,
            batch_rows=batch_rows,
        ),
    )


def sums(
    split: Split,
    reference: Reference,
    *,
    block_rows: int | None = None,
    progress: Progress | None = None,
    memory_limit: str = MEMORY_LIMIT,
    threads: int | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[SumsChunk]:
    """The three sums for every row of ``split`` computed by DuckDB.

    ``threads`` defaults to the CPU count, at most 4; ``batch_rows`` is the size of the Arrow
    batches DuckDB is handed (the lake is still read in ``block_rows`` blocks).
    """
    k = len(reference.checkpoints)
    temp_dir = tempfile.mkdtemp(prefix="cld-lake-duckdb-")
    con = _duckdb.connect(
        memory_limit=memory_limit,
        threads=threads or _duckdb.default_threads(),
        temp_directory=temp_dir,
        # Without a row count DuckDB may build the join's hash table on the stream.
        pin_join_order=not _duckdb.SCAN_SOURCES,
    )
    try:
        source = TrajectorySource(split, reference, block_rows, progress, batch_rows)
        _duckdb.register(con, "trajectories", source)
        con.register("reference", reference_table(reference))
        result = con.sql(sums_sql(k)).to_arrow_reader(RESULT_BATCH_ROWS)
        for batch in result:
            rows, labels, a, b, q = (
                batch.column(i).to_numpy(zero_copy_only=False) for i in range(5)
            )
            yield SumsChunk(rows, labels, Sums(*(np.asarray(x, np.float64) for x in (a, b, q))))
    finally:
        con.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
