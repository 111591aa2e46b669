"""CLD scores out of core: one formula (``_formula``), several engines that stream rows through it.

``score(lake)`` computes the Correlation of Loss Differences of every training sample and
stores it as a named column of ``LAKE/scores.parquet``. Without a lake, on arrays in memory or
blocks from any storage: ``cld_reference(val_blocks, num_classes)`` then
``CLDAccumulator(reference).update(losses, labels)`` block by block, ``.finalise()``.

Score range and direction: CLD is a Pearson correlation in ``[-1, 1]``; higher = the sample's
loss moves with its class's validation loss = more useful; a coreset keeps the highest scores
of every class. Undefined rule: a sample with a NaN or infinite loss at a selected checkpoint
has no score (NaN in NumPy arrays, null in DataFrames, the scores table and SQL; never
selected). A sample whose loss differences, or whose class's validation differences, are
constant scores 0.0 ("degenerate"). See ``docs/scores.md``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cld_lake._io import remove_dead_temps
from cld_lake._types import Engine, Fallback
from cld_lake.errors import ScoringError
from cld_lake.lake.scores import check_score_name, scores_path, store_score
from cld_lake.lake.store import Lake, Split
from cld_lake.score._engines import ENGINES, EngineCompute, load_engine
from cld_lake.score._formula import (
    MIN_CHECKPOINTS,
    Chunk,
    Counts,
    Reference,
    ScoreColumn,
    check_fallback,
    plan_checkpoints,
)
from cld_lake.score._stream import CLDAccumulator, CLDScores, cld_reference

if TYPE_CHECKING:
    import polars as pl

METHODS = ("cld",)
TRAIN, VAL = "train", "val"

__all__ = [
    "ENGINES",
    "METHODS",
    "MIN_CHECKPOINTS",
    "CLDAccumulator",
    "CLDScores",
    "EngineCompute",
    "Reference",
    "ScoreResult",
    "cld_reference",
    "compute_cld",
    "score",
]


@dataclass(frozen=True)
class ScoreResult:
    """Scores of every training sample (train row order) and the provenance stored with them.

    Sample ids and labels are read from the lake on first use, so computing and storing a
    score holds only the score column in memory.
    """

    name: str
    train: Split
    scores: np.ndarray | None
    provenance: dict[str, Any]
    _ids_labels: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def sample_ids(self) -> np.ndarray:
        return self._ids_labels[0] if self._ids_labels else self.train.sample_ids

    @property
    def labels(self) -> np.ndarray:
        return self._ids_labels[1] if self._ids_labels else self.train.labels

    def to_polars(self) -> pl.DataFrame:
        """``sample_id, label, score``; an undefined score is null (as in the scores table)."""
        import polars as pl

        if self.scores is None:
            raise ScoringError(
                f"score {self.name!r} was not kept in memory (keep_scores=False); read it from "
                "the scores table, e.g. cld_lake.sql.query(lake, 'SELECT * FROM scores')"
            )
        return pl.DataFrame(
            [
                pl.Series("sample_id", self.sample_ids, dtype=pl.Int64),
                pl.Series("label", self.labels, dtype=pl.Int64),
                pl.Series("score", self.scores, dtype=pl.Float64, nan_to_null=True),
            ]
        )


def _open_splits(lake: Lake) -> tuple[Split, Split]:
    missing = [s for s in (TRAIN, VAL) if not lake.has_split(s)]
    if missing:
        present = ", ".join(lake.splits()) or "none"
        raise ScoringError(
            f"{lake.path}: CLD needs a {' and a '.join(missing)} split (present: {present}); "
            f"import or record the {' and '.join(missing)} losses first, e.g. "
            f"cld-lake import {lake.path} --split {missing[0]} --loss ... --labels ..."
        )
    return lake.split(TRAIN), lake.split(VAL)


def _num_classes(lake: Lake, train: Split, val: Split) -> int:
    if lake.num_classes is not None:  # set at the first write; every stored label is below it
        return lake.num_classes
    return max(len(train.label_counts()), len(val.label_counts()))


def _compact(ids: np.ndarray) -> str:
    if len(ids) > 1:
        steps = np.diff(ids)
        if np.all(steps == steps[0]):
            step = f" step {steps[0]}" if steps[0] != 1 else ""
            return f"{ids[0]}..{ids[-1]}{step} ({len(ids)})"
    return f"{', '.join(str(i) for i in ids)} ({len(ids)})"


def compute_cld(
    lake: Lake | str | os.PathLike[str],
    *,
    engine: Engine = "numpy",
    checkpoints: str | slice | None = None,
    name: str | None = None,
    fallback: Fallback | None = None,
    store: bool = True,
    block_rows: int | None = None,
    progress: Callable[[int], None] | None = None,
    method: str = "cld",
    engine_options: dict[str, Any] | None = None,
    collect_ids: bool = True,
    keep_scores: bool = True,
) -> ScoreResult:
    """Compute CLD for every training sample and (``store``) save it; see :func:`score`.

    The lake-level orchestrator of the streaming API: :func:`cld_reference` over the val
    split's blocks, the engine's chunks of row sums through one :class:`CLDAccumulator`.
    ``collect_ids=False`` keeps only the score column in memory; the result's ``sample_ids`` /
    ``labels`` are then read from the lake on first use. ``keep_scores=False`` (with ``store``,
    the CLI's way) spills the column to a temporary file while it is computed, so nothing
    per-sample stays in memory; the result's ``scores`` is then None.
    """
    started = time.perf_counter()
    if method not in METHODS:
        raise ScoringError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    name = check_score_name(name if name is not None else method)
    compute = load_engine(engine)
    check_fallback(fallback)
    if block_rows is not None and block_rows < 1:
        raise ScoringError(f"block_rows must be >= 1, got {block_rows}")
    lake = lake if isinstance(lake, Lake) else Lake(lake)
    train, val = _open_splits(lake)
    ckpts = plan_checkpoints(train, val, checkpoints)
    num_classes = _num_classes(lake, train, val)
    val_blocks = val.blocks(block_rows=block_rows, checkpoints=ckpts)
    reference = cld_reference(
        ((block.loss, block.labels) for block in val_blocks),
        num_classes,
        checkpoints=ckpts,
        fallback=fallback,
        train_classes=np.flatnonzero(train.label_counts(num_classes)),
    )
    chunks = compute(
        train, reference, block_rows=block_rows, progress=progress, **(engine_options or {})
    )
    column, counts = _collect(chunks, train.num_samples, reference, spill=not keep_scores)
    from cld_lake._version import __version__
    from cld_lake.lake._format import now_iso

    window = (
        checkpoints if isinstance(checkpoints, str) or checkpoints is None else str(checkpoints)
    )
    provenance: dict[str, Any] = {
        "method": method,
        "engine": engine,
        "checkpoints": _compact(ckpts),
        "checkpoint_ids": [int(c) for c in ckpts],
        "window": window,
        "train_samples": int(train.num_samples),
        "val_samples_used": int(reference.val_counts.sum()),
        "val_left_out": int(reference.val_left_out),
        "nan": counts.nan,
        "degenerate": counts.degenerate,
        "fallback": counts.fallback,
        "fallback_mode": fallback,
        "fallback_classes": [int(c) for c in np.flatnonzero(reference.fallback)],
        "lake_id": lake.lake_id,
        "created_at": now_iso(),
        "seconds": round(time.perf_counter() - started, 3),
        "version": __version__,
    }
    ids_labels = (train.sample_ids, train.labels) if collect_ids else None
    try:
        if store:
            # a scorer killed mid-write (kill -9) left its temp file in the lake root
            remove_dead_temps(scores_path(lake))
            store_score(lake, train, name, column.read, provenance)
    finally:
        column.close()
    return ScoreResult(name, train, column.values, provenance, ids_labels)


def _collect(
    chunks: Iterable[Chunk], num_rows: int, reference: Reference, spill: bool
) -> tuple[ScoreColumn, Counts]:
    """Score the engine's chunks as they arrive, into a column of ``num_rows`` (on disk with
    ``spill``): memory holds at most the score column, never the sums."""
    accumulator = CLDAccumulator(reference, keep=False)
    column = ScoreColumn(num_rows, spill=spill)
    try:
        for chunk in chunks:
            sums = chunk.sums
            part = accumulator.add_sums(sums.a, sums.b, sums.q, chunk.labels)
            try:
                column.write(chunk.rows, part)
            except OSError as exc:
                raise _spill_error(exc) if spill else exc from exc
        column.check_complete()
    except BaseException:
        column.close()
        raise
    return column, accumulator.counts


def _spill_error(exc: OSError) -> OSError:
    """A failed write of the (unnamed) spill file, naming the directory it lives in."""
    import tempfile

    if exc.filename is not None:
        return exc
    where = f"{tempfile.gettempdir()} (the temporary directory scoring spills to; set TMPDIR)"
    return OSError(exc.errno, exc.strerror, where)


def score(
    lake: Lake | str | os.PathLike[str],
    engine: Engine = "numpy",
    checkpoints: str | slice | None = None,
    name: str | None = None,
    fallback: Fallback | None = None,
    store: bool = True,
    *,
    block_rows: int | None = None,
    method: str = "cld",
    progress: Callable[[int], None] | None = None,
) -> pl.DataFrame:
    """CLD score of every training sample, as a Polars DataFrame ``sample_id, label, score``.

    Parameters
    ----------
    lake : Lake or path
        A lake with a ``train`` and a ``val`` split.
    engine : {"numpy", "duckdb", "polars", "dask"}
        How rows stream through the formula; every engine gives the same scores (to ~1e-15).
    checkpoints : str or slice, optional
        Window/stride ``START:STOP[:STEP]`` over the positions of the checkpoints committed in
        both train and val (e.g. ``"0:45"``, ``"::2"``). Default: all of them. At least 3.
    name : str, optional
        Column of ``scores.parquet`` to store into (default: the method name, ``cld``).
    fallback : {None, "global"}
        For classes without validation samples: error (default) or use the global
        validation trajectory (those rows are counted as ``fallback``).
    store : bool
        Store the column (atomically) with its provenance; ``False`` only computes.
    block_rows : int, optional
        Rows per block of the lake's iterator (default: one chunk). Scores do not depend on it.

    Returns
    -------
    polars.DataFrame
        One row per training sample in the train split's order. ``score`` in ``[-1, 1]``,
        higher = more useful; null for a sample with a non-finite loss at a selected
        checkpoint (as in the scores table); 0.0 when its loss differences or its class's
        are constant.

    Raises
    ------
    cld_lake.errors.ScoringError
        No train/val split, fewer than 3 (selected) common checkpoints, or classes without
        validation samples (and no fallback). Nothing is written.

    Examples
    --------
    >>> import cld_lake
    >>> df = cld_lake.score("runs/cifar.lake", checkpoints="0:45", name="cld_first45")  # doctest: +SKIP
    """
    result = compute_cld(
        lake,
        engine=engine,
        checkpoints=checkpoints,
        name=name,
        fallback=fallback,
        store=store,
        block_rows=block_rows,
        progress=progress,
        method=method,
    )
    return result.to_polars()
