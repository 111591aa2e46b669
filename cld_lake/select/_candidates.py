"""What a selection ranks: the rows of a stored score, of a SQL query, or the whole train split.

Each reader returns :class:`Candidates` (ids, labels, scores with NaN = not selectable, and
the score's provenance) or one line saying what to give instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cld_lake.errors import BadInputError, ScoringError
from cld_lake.lake import Lake
from cld_lake.lake import scores as scores_table


@dataclass(frozen=True)
class Candidates:
    """The samples a selection ranks: ids, labels, scores (NaN = not selectable)."""

    sample_ids: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    score_name: str | None
    provenance: dict[str, Any]


def score_candidates(lake: Lake, score: str) -> Candidates:
    """``sample_id, label`` and column ``score`` of the scores table with its provenance."""
    provenance = stored_score(lake, score)
    table = scores_table.read_scores(lake, [score])
    return Candidates(
        table.column("sample_id").to_numpy().astype(np.int64, copy=False),
        table.column("label").to_numpy().astype(np.int64, copy=False),
        table.column(score).to_numpy(zero_copy_only=False).astype(np.float64, copy=False),
        score,
        provenance,
    )


def stored_score(lake: Lake, score: str) -> dict[str, Any]:
    """The provenance of stored score ``score``; a one-line error when there is none."""
    stored = scores_table.stored_scores(lake)
    if score in scores_table.RESERVED:
        raise BadInputError(
            f"--score {score}: {' and '.join(scores_table.RESERVED)} are columns of the scores "
            f"table, not scores; stored scores: {', '.join(stored) or 'none'}"
        )
    if not stored:
        raise BadInputError(
            f"--score {score}: {lake.root} has no scores yet; "
            + (
                _how_to_store(lake, score)
                if _valid_score_name(score)
                else f"compute one with `cld-lake score {lake.root}`"
            )
        )
    if score not in stored:
        where = scores_table.scores_path(lake)
        raise BadInputError(
            f"--score {score}: no such score in {where} (stored: {', '.join(stored)}); "
            + _how_to_store(lake, score)
        )
    return stored[score]


def _how_to_store(lake: Lake, score: str) -> str:
    """How to store the score ``score`` names: the method of that name (``score`` alone would
    compute CLD under it), or a method under that name."""
    from cld_lake.score import METHODS

    if score in METHODS:
        return f"compute it with `cld-lake score {lake.root} --method {score}`"
    if _valid_score_name(score):
        return (
            f"store a score under that name with `cld-lake score {lake.root} --method METHOD "
            f"--name {score}` (methods: {', '.join(METHODS)})"
        )
    return "give one of the stored names"


def _valid_score_name(name: str) -> bool:
    try:
        scores_table.check_score_name(name)
    except ScoringError:
        return False
    return True


def train_candidates(lake: Lake) -> Candidates:
    train = lake.split("train")
    return Candidates(train.sample_ids, train.labels, np.full(train.num_samples, np.nan), None, {})


def query_candidates(lake: Lake, query: str, score: str | None, need_score: bool) -> Candidates:
    """Candidates from a SQL query returning ``sample_id`` (and optionally ``score``)."""
    import pyarrow as pa

    from cld_lake import sql as lake_sql

    relation = lake_sql.query(lake, query, lazy=True)
    if relation is None:
        raise BadInputError(
            "--query: the statement returns no rows; give a SELECT returning sample_id"
        )
    table = relation.to_arrow_table()
    if "sample_id" not in table.column_names:
        raise BadInputError(
            f"--query: the result has no sample_id column (columns: {', '.join(table.column_names)})"
        )
    id_column = table.column("sample_id")
    if not pa.types.is_integer(id_column.type) or id_column.null_count:
        found = f"{id_column.null_count} null(s)" if id_column.null_count else id_column.type
        raise BadInputError(f"--query: sample_id must be an integer column, got {found}")
    ids = id_column.to_numpy().astype(np.int64)
    if len(np.unique(ids)) != len(ids):
        raise BadInputError(
            f"--query: {len(ids) - len(np.unique(ids))} duplicate sample ids in the result; add DISTINCT"
        )
    train = lake.split("train")
    rows = train.rows_of(ids)
    if (rows < 0).any():
        raise BadInputError(
            f"--query: sample ids {ids[rows < 0][:5].tolist()} are not training samples of {lake.root}"
        )
    labels = train.labels[rows]
    if score is not None:
        stored = score_candidates(lake, score)
        where = np.full(train.num_samples, -1, dtype=np.int64)
        where[train.rows_of(stored.sample_ids)] = np.arange(len(stored.sample_ids))
        at = where[rows]
        values = np.where(at >= 0, stored.scores[np.maximum(at, 0)], np.nan)
        return Candidates(ids, labels, values, score, stored.provenance)
    if "score" in table.column_names:
        kind = table.schema.field("score").type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind)):
            raise BadInputError(
                f"--query: the score column is {kind}, not a number; return a numeric score, "
                "e.g. CAST(x AS DOUBLE) AS score"
            )
        values = table.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
        return Candidates(ids, labels, values, "query", {"method": "sql", "query": query})
    if need_score:
        raise BadInputError(
            "--query: give --score NAME, or return a score column from the query, or use --random"
        )
    return Candidates(ids, labels, np.full(len(ids), np.nan), None, {})


def candidates(
    lake: Lake, score: str | None, query: str | None, *, random: bool, strategy: str
) -> Candidates:
    """The candidates of a selection: the rows of ``query`` (with ``score`` looked up when
    given), else stored score ``score``, else every training sample for a ``random`` one."""
    if query is not None:
        return query_candidates(lake, query, score, need_score=not random)
    if score is not None:
        return score_candidates(lake, score)
    if random:
        return train_candidates(lake)
    if strategy == "ccs":
        raise BadInputError("--strategy ccs needs a score: give --score NAME (a stored score)")
    raise BadInputError("give --score NAME (a stored score), --random, or --query")
