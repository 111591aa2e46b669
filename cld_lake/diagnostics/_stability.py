"""Rank stability: Spearman's rho between two stored scores (two CLD windows, two runs, two
methods), and the two CLD windows that feed it."""

from __future__ import annotations

from typing import Any

import numpy as np

from cld_lake.diagnostics._ranks import spearman
from cld_lake.diagnostics._read import (
    EXACT_ROWS,
    LakeLike,
    as_lake,
    score_column,
    scores_rows,
)
from cld_lake.errors import BadInputError, ScoringError
from cld_lake.lake.scores import iter_scores
from cld_lake.lake.store import Lake
from cld_lake.score import score


def rank_stability(
    lake: LakeLike, a: str, b: str, *, exact_rows: int = EXACT_ROWS
) -> dict[str, Any]:
    """Spearman's rank correlation between stored scores ``a`` and ``b`` (e.g. CLD over the
    first half of the checkpoints vs all of them), over the samples both define.

    Up to ``exact_rows`` rows of the scores table both columns are read whole (exact); past
    it they are streamed and rho is taken over every ``s``-th row (at most ``exact_rows``
    rows, ``s`` reported as ``sampled_every``), so memory does not grow with N.

    Returns
    -------
    dict
        ``a``, ``b``, ``spearman`` (in [-1, 1]; NaN with fewer than 2 pairs or a constant
        side), ``pairs`` (samples scored by both); when sampled also ``sampled_every`` and
        ``sample_pairs`` (the pairs rho was computed over).
    """
    lake = as_lake(lake)
    rows = scores_rows(lake, [a, b])
    if rows > exact_rows:
        return _sampled_rank_stability(lake, a, b, rows, exact_rows)
    ids_a, _, va = score_column(lake, a)
    ids_b, _, vb = score_column(lake, b)
    if not np.array_equal(ids_a, ids_b):  # one table: cannot differ, checked all the same
        raise ScoringError(f"{a} and {b} hold different samples; recompute one of them")
    rho, pairs = spearman(va, vb)
    return {"a": a, "b": b, "spearman": rho, "pairs": pairs}


def _sampled_rank_stability(lake: Lake, a: str, b: str, rows: int, limit: int) -> dict[str, Any]:
    """:func:`rank_stability` over every ``s``-th row, streamed (pairs counted over all)."""
    every = -(-rows // max(limit, 1))
    kept_a, kept_b = [], []
    pairs, start = 0, 0
    for part in iter_scores(lake, [a, b]):
        va = part.column(a).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        vb = part.column(b).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        pairs += int(np.count_nonzero(np.isfinite(va) & np.isfinite(vb)))
        first = (-start) % every  # the next multiple of ``every`` in this group
        kept_a.append(va[first::every].copy())
        kept_b.append(vb[first::every].copy())
        start += part.num_rows
    rho, sample_pairs = spearman(np.concatenate(kept_a), np.concatenate(kept_b))
    return {
        "a": a,
        "b": b,
        "spearman": rho,
        "pairs": pairs,
        "sampled_every": every,
        "sample_pairs": sample_pairs,
    }


def cld_windows(
    lake: LakeLike, *, first_half: str = "cld_first_half", stride2: str = "cld_stride2"
) -> tuple[str, str]:
    """Store CLD over the first half of the checkpoints (``0:K//2``) and over every other one
    (``::2``) as columns ``first_half`` and ``stride2``; returns their names.

    Compare each with the full-window ``cld`` through :func:`rank_stability`. Needs at least
    6 common checkpoints (CLD needs 3 per window).
    """
    lake = as_lake(lake)
    k = len(np.intersect1d(lake.split("train").checkpoint_ids, lake.split("val").checkpoint_ids))
    if k < 6:
        raise BadInputError(
            f"{lake.root}: {k} checkpoints common to train and val; the window diagnostics "
            "need at least 6 (3 per half)"
        )
    score(lake, checkpoints=f"0:{k // 2}", name=first_half)
    score(lake, checkpoints="::2", name=stride2)
    return first_half, stride2
