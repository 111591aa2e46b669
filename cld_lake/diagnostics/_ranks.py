"""Rank statistics in plain NumPy: average ranks, Spearman's rho, AUROC, precision at k."""

from __future__ import annotations

import numpy as np


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values`` (finite), ties given the mean of the ranks they span."""
    values = np.asarray(values, dtype=np.float64)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse.reshape(-1)]


def spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, int]:
    """Spearman's rho of the pairs where both values are finite, and the number of pairs.

    NaN when fewer than 2 pairs remain or either side is constant over them.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    n = int(both.sum())
    if n < 2:
        return float("nan"), n
    ra, rb = average_ranks(a[both]), average_ranks(b[both])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return (float((ra * rb).sum() / denom) if denom > 0 else float("nan")), n


def auroc(suspicion: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``suspicion`` (higher = more suspect) for ``positive``.

    The Mann-Whitney form with average ranks, so a tie between a positive and a negative
    counts one half. NaN without positives or without negatives.
    """
    s = np.asarray(suspicion, dtype=np.float64)
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def precision_at(suspicion: np.ndarray, positive: np.ndarray, k: int, ids: np.ndarray) -> float:
    """Share of positives among the ``k`` most suspect rows (ties: the smaller id first)."""
    if k < 1:
        return float("nan")
    order = np.lexsort((np.asarray(ids), -np.asarray(suspicion, dtype=np.float64)))
    return float(np.asarray(positive, dtype=bool)[order[:k]].mean())
