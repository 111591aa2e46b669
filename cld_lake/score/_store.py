"""Storing a score as a named column of ``LAKE/scores.parquet`` (atomic replace).

The table has one row per training sample (``sample_id, label`` in the train split's row
order) and one column per stored score; the Parquet key-value metadata ``cld_lake`` holds
``{"scores": {name: provenance}}``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from cld_lake._io import atomic_path, atomic_write_parquet
from cld_lake.errors import ScoringError
from cld_lake.lake import _format as fmt
from cld_lake.lake.store import Lake, Split, root_lock

RESERVED = ("sample_id", "label")
BATCH_ROWS = 1 << 16


def check_score_name(name: str) -> str:
    """A score name is a plain identifier (it becomes a SQL column of the ``scores`` view)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name or "") or name.lower() in RESERVED:
        raise ScoringError(
            f"--name {name!r}: use a plain identifier (letters, digits, '_', not starting with a "
            f"digit, not {' or '.join(RESERVED)}), e.g. cld or cld_first45"
        )
    return name


def read_provenance(schema: Any) -> dict[str, Any]:
    raw = (schema.metadata or {}).get(b"cld_lake", b"{}")
    try:
        meta = json.loads(raw)
    except ValueError:
        meta = {}
    return meta if isinstance(meta, dict) else {}


def store_score(
    lake: Lake, train: Split, name: str, scores: np.ndarray, provenance: dict[str, Any]
) -> None:
    """Add or replace column ``name`` of the scores table, with its provenance.

    The new file is streamed in row batches next to the old one and renamed over it
    (atomic); memory is one batch of the table, not the whole table.
    """
    path = lake.path / fmt.SCORES_FILE
    with root_lock(lake.path):  # read-modify-write: one scorer at a time
        if path.exists() and not _same_rows(path, train):
            _store_realigned(path, train, name, scores, provenance)
        else:
            _store_streamed(path, train, name, scores, provenance)


def _same_rows(path: Any, train: Split) -> bool:
    """Does the old scores file hold the train split's rows, in order? (streamed)"""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if pf.metadata.num_rows != train.num_samples:
        return False
    pos = 0
    for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=["sample_id"]):
        part = batch.column(0).to_numpy()
        ids, _ = train.sample_rows(pos, pos + len(part))
        if not np.array_equal(part, ids):
            return False
        pos += len(part)
    return True


def _metadata(old_schema: Any, name: str, provenance: dict[str, Any]) -> dict[str, str]:
    meta = read_provenance(old_schema) if old_schema is not None else {}
    scores_meta = dict(meta.get("scores", {}))
    scores_meta[name] = provenance
    meta["scores"] = scores_meta
    return {"cld_lake": json.dumps(meta, sort_keys=True)}


def _store_streamed(
    path: Any, train: Split, name: str, scores: np.ndarray, provenance: dict[str, Any]
) -> None:
    """The old file (if any) holds the train rows in order: copy it batch by batch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    old = pq.ParquetFile(path) if path.exists() else None
    old_columns = [c for c in old.schema_arrow.names if c not in RESERVED] if old else []
    columns = old_columns if name in old_columns else [*old_columns, name]
    fields = [pa.field("sample_id", pa.int64()), pa.field("label", pa.int64())]
    fields += [pa.field(c, pa.float64()) for c in columns]
    schema = pa.schema(
        fields, metadata=_metadata(old.schema_arrow if old else None, name, provenance)
    )
    n = train.num_samples
    old_batches = _exact_batches(old.iter_batches(BATCH_ROWS, columns=old_columns)) if old else None
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for a in range(0, n, BATCH_ROWS) if n else [0]:
            b = min(a + BATCH_ROWS, n)
            batch = next(old_batches) if old_batches is not None and n else None
            ids, labels = train.sample_rows(a, b)
            arrays = [pa.array(ids), pa.array(labels)]
            for column in columns:
                if column == name:
                    arrays.append(pa.array(np.asarray(scores[a:b], dtype=np.float64)))
                else:
                    arrays.append(batch.column(column).combine_chunks().cast(pa.float64()))
            writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))


def _exact_batches(batches: Any) -> Any:
    """Re-cut record batches (which may end early at row-group ends) to exactly BATCH_ROWS."""
    import pyarrow as pa

    pending: list[Any] = []
    size = 0
    for batch in batches:
        pending.append(batch)
        size += batch.num_rows
        while size >= BATCH_ROWS:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, BATCH_ROWS)
            rest = table.slice(BATCH_ROWS)
            pending, size = rest.to_batches(), rest.num_rows
    if size:
        yield pa.Table.from_batches(pending)


def _store_realigned(
    path: Any, train: Split, name: str, scores: np.ndarray, provenance: dict[str, Any]
) -> None:
    """The train split's rows differ from the old file's: carry old scores over by sample_id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = train.sample_ids
    old = pq.read_table(path)
    rows = train.rows_of(old.column("sample_id").to_numpy())
    keep = rows >= 0
    table = pa.table(
        {"sample_id": pa.array(ids, pa.int64()), "label": pa.array(train.labels, pa.int64())}
    )
    for column in old.column_names:
        if column in RESERVED:
            continue
        if column == name:
            table = table.append_column(name, pa.array(np.asarray(scores, dtype=np.float64)))
            continue
        carried = np.full(len(ids), np.nan)
        carried[rows[keep]] = old.column(column).to_numpy(zero_copy_only=False)[keep]
        table = table.append_column(column, pa.array(carried))
    if name not in table.column_names:
        table = table.append_column(name, pa.array(np.asarray(scores, dtype=np.float64)))
    table = table.replace_schema_metadata(_metadata(old.schema, name, provenance))
    atomic_write_parquet(path, table)
