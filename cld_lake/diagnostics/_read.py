"""What the diagnostics read from a lake: stored score columns (whole or one row group of the
scores table at a time) and the train split's ``noisy`` flags (as bits)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from cld_lake._io import parquet_file
from cld_lake._meta import WholeTableChecksum, read_meta, streamed_checksum_problem
from cld_lake.errors import CorruptLakeError, ScoringError
from cld_lake.lake import SAMPLES_FILE
from cld_lake.lake.scores import (
    iter_scores,
    open_scores_file,
    read_scores,
    score_direction,
    stored_scores,
)
from cld_lake.lake.store import Lake, Split, check_sample_group, open_lake, sample_groups

LakeLike = Lake | str | os.PathLike[str]
# up to this many rows, score columns are read whole and every figure is exact; past it,
# detection and rank statistics stream (the report's limit too)
EXACT_ROWS = 2_000_000


def as_lake(lake: LakeLike) -> Lake:
    """``lake`` opened, if given as a path or URL."""
    return lake if isinstance(lake, Lake) else open_lake(lake)


def check_stored(lake: Lake, score: str) -> None:
    """Refuse a score the scores table does not hold, naming those it does."""
    stored = stored_scores(lake)
    if score not in stored:
        have = ", ".join(stored) or "none"
        raise ScoringError(
            f"score {score!r} is not stored in {lake.root} (stored: {have}); "
            f"compute it first: cld-lake score {lake.root} --method METHOD --name {score}"
        )


def score_batches(lake: Lake, score: str, *, ids: bool = False) -> Iterator[tuple[np.ndarray, ...]]:
    """``(labels, values)`` (``(ids, labels, values)`` with ``ids``) of one stored score, one
    row group of the scores table at a time (its checksums checked after the last)."""
    for part in iter_scores(lake, [score]):
        labels = part.column("label").to_numpy().astype(np.int64, copy=False)
        values = part.column(score).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        if ids:
            yield part.column("sample_id").to_numpy().astype(np.int64, copy=False), labels, values
        else:
            yield labels, values


def score_column(lake: Lake, score: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(sample_ids, labels, values)`` of one stored score (NaN where null)."""
    check_stored(lake, score)
    table = read_scores(lake, [score])
    assert table is not None  # stored_scores found the file
    ids = table.column("sample_id").to_numpy().astype(np.int64, copy=False)
    labels = table.column("label").to_numpy().astype(np.int64, copy=False)
    values = table.column(score).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return ids, labels, values


def direction_of(lake: Lake, score: str) -> str:
    """The direction of stored score ``score`` (:func:`~cld_lake.lake.scores.score_direction`)."""
    return score_direction(stored_scores(lake).get(score, {}))


def scores_rows(lake: Lake, names: list[str]) -> int:
    """Rows of the scores table (from its footer), after checking ``names`` are stored."""
    for name in names:
        check_stored(lake, name)
    return int(open_scores_file(lake).metadata.num_rows)


def noisy_bits(train: Split) -> np.ndarray | None:
    """The train split's ``noisy`` flags packed as bits (``np.packbits`` order; null = False),
    streamed one row group of the samples table at a time and, in a checksummed lake, checked
    as a whole read is (row-group sizes and CRCs against the commit record, the file's
    checksum); None when the samples carry no flag. :func:`flags_at` reads them back."""
    path, fix = train.root / SAMPLES_FILE, train.lake.fix
    try:
        pf = parquet_file(path)
        sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
        # the schema (and JSON) of a whole read: a row group's, not the embedded Arrow schema
        first = pf.read_row_group(0) if sizes else pf.read()
    except Exception as exc:
        raise CorruptLakeError(f"{path} cannot be decoded ({exc}); {fix}") from exc
    if "noisy" not in first.schema.names:
        return None
    checked = train.lake.checksummed
    if checked and sizes != [rows for rows, _ in sample_groups(train.meta)]:
        raise CorruptLakeError(f"{path}: row groups differ from the commit record's; {fix}")
    whole = WholeTableChecksum(first.schema) if checked else None
    meta = read_meta(first.schema)
    packed: list[np.ndarray] = []
    rest = np.zeros(0, bool)
    for g in range(len(sizes)):
        try:
            part = first if g == 0 else pf.read_row_group(g)
        except Exception as exc:
            raise CorruptLakeError(f"{path} cannot be decoded ({exc}); {fix}") from exc
        if whole is not None:
            check_sample_group(train, g, part)
            whole.update(part)
        flags = part.column("noisy").fill_null(False).to_numpy(zero_copy_only=False)
        flags = np.concatenate([rest, flags.astype(bool)])
        whole_bytes = len(flags) // 8 * 8
        packed.append(np.packbits(flags[:whole_bytes]))
        rest = flags[whole_bytes:]
        del part
    del first
    packed.append(np.packbits(rest))
    if sum(sizes) != train.num_samples:
        raise CorruptLakeError(
            f"{path} has {sum(sizes)} rows, the split {train.num_samples}; {fix}"
        )
    if whole is not None:
        problem = streamed_checksum_problem(meta, whole)
        if problem is not None:
            raise CorruptLakeError(f"{path} fails its checksum ({problem}); {fix}")
    return np.concatenate(packed)


def flags_at(bits: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The flags of ``rows`` from ``np.packbits`` bits (as :func:`noisy_bits` packs them)."""
    return ((bits[rows >> 3] >> (7 - (rows & 7)).astype(np.uint8)) & 1).astype(bool)


def scores_aligned(lake: Lake, train: Split) -> bool:
    """Is row i of the scores table train row i? O(1) when both carry the fingerprint of the
    ids recorded at the split's creation; otherwise the ids are compared row group by row
    group (the split's id column is never loaded whole)."""
    pf = open_scores_file(lake)
    if pf.metadata.num_rows != train.num_samples:
        return False
    recorded = read_meta(pf.schema_arrow).get("rows", {}).get("ids_sha1")
    if recorded is not None and train.ids_digest is not None:
        return bool(recorded == train.ids_digest)
    start = 0
    for part in iter_scores(lake, []):
        ids = part.column("sample_id").to_numpy()
        mine, _ = train.sample_rows(start, start + len(ids))
        if not np.array_equal(mine, ids):
            return False
        start += len(ids)
    return True
