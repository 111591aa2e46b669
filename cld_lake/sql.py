"""SQL over the lake with embedded DuckDB.

Every connection gets views over the lake's tables: ``samples``, ``checkpoints`` and
``losses`` (long form, streamed block by block from the trajectory store through an Arrow
C stream: DuckDB pulls batches as it needs them, nothing is materialised).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cld_lake.errors import BadInputError
from cld_lake.lake import _format as fmt
from cld_lake.lake.store import Lake, Split

LONG_BATCH_ROWS = 1 << 17


class LongLossStream:
    """An Arrow C stream source producing the long form of one split.

    DuckDB calls ``__arrow_c_stream__`` once per scan, so a view over it can be scanned any
    number of times (self-joins, sub-queries); each scan walks the row blocks afresh.
    """

    def __init__(self, split: Split, block_rows: int | None = None) -> None:
        self.split = split
        self.block_rows = block_rows

    def schema(self) -> Any:
        import pyarrow as pa

        fields = [
            pa.field("split", pa.string()),
            pa.field("sample_id", pa.int64()),
            pa.field("label", pa.int64()),
            pa.field("checkpoint", pa.int64()),
        ]
        types = {"float32": pa.float32(), "float16": pa.float32(), "float64": pa.float64(), "bool": pa.bool_()}
        for channel, dtype in self.split.channels.items():
            fields.append(pa.field(channel, types[dtype]))
        return pa.schema(fields)

    def batches(self) -> Iterator[Any]:
        import pyarrow as pa

        schema = self.schema()
        channels = list(self.split.channels)
        rows = self.block_rows or max(1, LONG_BATCH_ROWS // max(1, self.split.num_checkpoints))
        for block in self.split.blocks(block_rows=rows, channels=channels):
            n, k = block.loss.shape
            if n == 0 or k == 0:
                continue
            cols = [
                pa.array(np.full(n * k, self.split.name, dtype=object), pa.string()),
                pa.array(np.repeat(block.sample_ids, k)),
                pa.array(np.repeat(block.labels, k)),
                pa.array(np.tile(block.checkpoints, n)),
            ]
            for channel in channels:
                values = block.values[channel].reshape(-1)
                if values.dtype == np.float16:
                    values = values.astype(np.float32)
                cols.append(pa.array(values))
            yield pa.RecordBatch.from_arrays(cols, schema=schema)

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        import pyarrow as pa

        reader = pa.RecordBatchReader.from_batches(self.schema(), self.batches())
        return reader.__arrow_c_stream__(requested_schema)


def _sql_str(value: str | os.PathLike[str]) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def connect(lake: Lake | str | os.PathLike[str], memory_limit: str = "2GB") -> Any:
    """A DuckDB connection with the lake's views registered."""
    import duckdb

    if not isinstance(lake, Lake):
        lake = Lake(lake)
    import tempfile

    con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": tempfile.gettempdir()})
    splits = [lake.split(name) for name in lake.splits()]
    sample_parts, ck_parts, loss_parts = [], [], []
    for split in splits:
        sample_parts.append(
            f"SELECT * REPLACE (sample_id::BIGINT AS sample_id) FROM (SELECT {_sql_str(split.name)} AS split, * "
            f"FROM read_parquet({_sql_str(split.path / fmt.SAMPLES_FILE)}))"
        )
        ck_parts.append(
            f"SELECT {_sql_str(split.name)} AS split, checkpoint, epoch, step, wall_time, committed_at, "
            f"nonfinite, true AS complete FROM read_parquet({_sql_str(split.path / fmt.CHECKPOINTS_FILE)})"
        )
        name = f"_losses_{len(loss_parts)}"
        con.register(name, LongLossStream(split))
        loss_parts.append(f"SELECT * FROM {name}")
    if splits:
        con.execute("CREATE VIEW samples AS " + " UNION ALL BY NAME ".join(sample_parts))
        con.execute("CREATE VIEW checkpoints AS " + " UNION ALL ".join(ck_parts))
        con.execute("CREATE VIEW losses AS " + " UNION ALL BY NAME ".join(loss_parts))
    else:
        con.execute("CREATE VIEW samples AS SELECT NULL::VARCHAR split, NULL::BIGINT sample_id, NULL::BIGINT label WHERE false")
        con.execute("CREATE VIEW checkpoints AS SELECT NULL::VARCHAR split, NULL::BIGINT checkpoint WHERE false")
        con.execute(
            "CREATE VIEW losses AS SELECT NULL::VARCHAR split, NULL::BIGINT sample_id, NULL::BIGINT label, "
            "NULL::BIGINT checkpoint, NULL::FLOAT loss WHERE false"
        )
    return con


def query(lake: Lake | str | os.PathLike[str], sql: str) -> Any:
    """Run ``sql`` over the lake's views and return a Polars DataFrame."""
    con = connect(lake)
    try:
        return con.sql(sql).pl()
    finally:
        con.close()


OUT_FORMATS = {".parquet": "PARQUET", ".csv": "CSV", ".json": "JSON"}


def write_query(lake: Lake | str | os.PathLike[str], sql: str, out: str | os.PathLike[str]) -> int:
    """Stream the result of ``sql`` to ``out`` (.parquet, .csv or .json); return the row count."""
    out = Path(out)
    fmt_name = OUT_FORMATS.get(out.suffix.lower())
    if fmt_name is None:
        raise BadInputError(f"--out {out}: unknown format; use .parquet, .csv or .json")
    if not out.parent.exists():
        raise BadInputError(f"--out {out}: directory {out.parent} does not exist; create it first")
    from cld_lake._io import atomic_path

    con = connect(lake)
    try:
        with atomic_path(out) as tmp:
            options = "FORMAT JSON, ARRAY true" if fmt_name == "JSON" else f"FORMAT {fmt_name}"
            rows = con.execute(f"COPY ({sql}) TO {_sql_str(tmp)} ({options})").fetchone()[0]
        return int(rows)
    finally:
        con.close()
