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

from cld_lake._io import atomic_write_parquet
from cld_lake.errors import ScoringError
from cld_lake.lake import _format as fmt
from cld_lake.lake.store import Lake, Split, root_lock

RESERVED = ("sample_id", "label")


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
    """Add or replace column ``name`` of the scores table, with its provenance."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = lake.path / fmt.SCORES_FILE
    ids = train.sample_ids
    new_values = pa.array(np.asarray(scores, dtype=np.float64))
    with root_lock(lake.path):  # read-modify-write: one scorer at a time
        table = pa.table(
            {"sample_id": pa.array(ids, pa.int64()), "label": pa.array(train.labels, pa.int64())}
        )
        meta: dict[str, Any] = {}
        if path.exists():
            old = pq.read_table(path)
            meta = read_provenance(old.schema)
            old_ids = old.column("sample_id").to_numpy()
            if np.array_equal(old_ids, ids):
                rows = None
            else:  # other sample order or set: carry old scores over by sample_id
                rows = train.rows_of(old_ids)
            for column in old.column_names:
                if column in RESERVED:
                    continue
                if column == name:  # replaced in place: the column keeps its position
                    table = table.append_column(name, new_values)
                    continue
                values = old.column(column)
                if rows is not None:
                    carried = np.full(len(ids), np.nan)
                    keep = rows >= 0
                    carried[rows[keep]] = values.to_numpy(zero_copy_only=False)[keep]
                    values = pa.array(carried)
                table = table.append_column(column, values)
        if name not in table.column_names:
            table = table.append_column(name, new_values)
        scores_meta = dict(meta.get("scores", {}))
        scores_meta[name] = provenance
        meta["scores"] = scores_meta
        table = table.replace_schema_metadata({"cld_lake": json.dumps(meta, sort_keys=True)})
        atomic_write_parquet(path, table)
