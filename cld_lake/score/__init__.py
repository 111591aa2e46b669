"""Scores out of core: every method defined once (CLD among them), and engines that stream row
blocks through them.

``score(lake)`` computes the Correlation of Loss Differences of every training sample and
stores it as a named column of ``LAKE/scores.parquet``; ``score(lake, method="aum")`` any other
registered method (:data:`METHODS`), and :func:`compute_scores` several methods in one pass
over the blocks. Without a lake, on arrays in memory or blocks from any storage:
``cld_reference(val_blocks, num_classes)`` then ``CLDAccumulator(reference).update(losses,
labels)`` block by block, ``.finalise()``.

Score range and direction: CLD is a Pearson correlation in ``[-1, 1]``; higher = the sample's
loss moves with its reference trajectory (by default its group's (class's) mean validation
loss; ``reference="global"`` or ``"split:NAME"`` for one trajectory, ``reference_split`` for a
split other than val: :mod:`cld_lake.score._reference`) = more useful; a coreset keeps the
highest scores of every group. Undefined rule: a sample with a NaN or infinite loss at a selected checkpoint
has no score (NaN in NumPy arrays, null in DataFrames, the scores table and SQL; never
selected). A sample whose loss differences, or whose class's validation differences, are
constant scores 0.0 ("degenerate"). Every method's range, direction and NaN rule: see
``docs/scores.md`` (and the provenance stored with each column).

Where things live: ``_formula`` (CLD's maths), ``_kernel`` (its row kernel: compiled C or
NumPy), ``_stream`` (the streaming API), ``_method`` (the method contract), ``_registry`` (the
methods), ``_reference`` (CLD's reference, checked), ``_plan`` (checkpoints, windows, CLD's
reference table), ``_passes`` (one pass over the
blocks), ``_engines`` (the engine contract and registry; engines ``_numpy``, ``_duckdb``,
``_polars``, ``_dask``), ``_column`` (a score column, spilled to disk), ``_provenance``,
``_orchestrate`` (the lake-level path behind :func:`compute_scores`).
"""

from __future__ import annotations

from cld_lake.score._engines import ENGINES, METHOD_ENGINES, EngineCompute
from cld_lake.score._formula import MIN_CHECKPOINTS, Reference
from cld_lake.score._kernel import kernel_name
from cld_lake.score._method import Method
from cld_lake.score._orchestrate import ScoreResult, compute_cld, compute_scores, score
from cld_lake.score._reference import (
    DEFAULT_REFERENCE_SPLIT,
    REFERENCE_FORMS,
    ReferenceChoice,
    parse_reference,
    reference_problem,
)
from cld_lake.score._registry import METHOD_REGISTRY, METHODS
from cld_lake.score._stream import CLDAccumulator, CLDScores, cld_reference

__all__ = [
    "DEFAULT_REFERENCE_SPLIT",
    "ENGINES",
    "METHODS",
    "METHOD_ENGINES",
    "METHOD_REGISTRY",
    "MIN_CHECKPOINTS",
    "REFERENCE_FORMS",
    "CLDAccumulator",
    "CLDScores",
    "EngineCompute",
    "Method",
    "Reference",
    "ReferenceChoice",
    "ScoreResult",
    "cld_reference",
    "compute_cld",
    "compute_scores",
    "kernel_name",
    "parse_reference",
    "reference_problem",
    "score",
]
