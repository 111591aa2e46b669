"""The report's numbers: one streaming pass per split, and statistics on score columns.

Nothing here holds a split's trajectories: :func:`scan_split` keeps sums per checkpoint (per
split, per chosen class, per row group) and the per-sample statistics of a strided sample of
rows; the score statistics work on one score column (8 bytes per sample) at a time.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cld_lake.lake.store import Split
from cld_lake.select import fraction_size


@dataclass(frozen=True)
class SplitScan:
    """What one pass over a split gives the report.

    ``mean_loss`` and ``accuracy`` are per checkpoint (finite losses only); ``class_mean``
    is ``(len(classes), K)``, ``group_mean`` is ``(n_groups, K)``; ``confidence`` and
    ``variability`` are the mean and (population) standard deviation over checkpoints of
    ``p_true = exp(-loss)`` for the rows ``sample_rows`` (NaN where no loss is finite).
    """

    checkpoints: np.ndarray
    mean_loss: np.ndarray
    accuracy: np.ndarray | None
    classes: np.ndarray
    class_mean: np.ndarray
    class_count: np.ndarray
    group_mean: np.ndarray
    group_count: np.ndarray
    sample_rows: np.ndarray
    confidence: np.ndarray
    variability: np.ndarray


def sample_stride(n: int, max_points: int) -> int:
    """Every ``stride``-th row gives at most ``max_points`` rows."""
    return max(1, -(-n // max(max_points, 1)))


def scan_split(
    split: Split,
    *,
    classes: Sequence[int] | np.ndarray = (),
    row_groups: np.ndarray | tuple[np.ndarray, np.ndarray] | None = None,
    n_groups: int = 0,
    stride: int | None = None,
) -> SplitScan:
    """Stream ``split`` once: mean finite loss (and accuracy) per checkpoint, the mean loss
    curve of each class in ``classes`` and of each row group, and data-map statistics of every
    ``stride``-th row.

    ``row_groups`` gives each row its group in ``0..n_groups-1`` (-1 for none): an array with
    one entry per row, or, sparse, ``(rows, groups)`` with the member rows ascending (memory
    per member, not per row)."""
    k = split.num_checkpoints
    classes = np.asarray(classes, dtype=np.int64)
    loss_sum, loss_n, acc_sum = np.zeros(k), np.zeros(k), np.zeros(k)
    class_sum, class_n = np.zeros((len(classes), k)), np.zeros((len(classes), k))
    group_sum, group_n = np.zeros((n_groups, k)), np.zeros((n_groups, k))
    sample_rows = (
        np.arange(0, split.num_samples, stride, dtype=np.int64) if stride else np.zeros(0, np.int64)
    )
    confidence = np.full(len(sample_rows), np.nan)
    variability = np.full(len(sample_rows), np.nan)
    has_correct = "correct" in split.channels
    channels = ["loss"] + (["correct"] if has_correct else [])
    for block in split.blocks(channels=channels):
        zeroed, finite = _zeroed(block.loss)
        loss_sum += zeroed.sum(axis=0)
        loss_n += _finite_count(finite, slice(None), len(block))
        if has_correct:
            acc_sum += block.values["correct"].sum(axis=0)
        for i, c in enumerate(classes):
            rows = np.flatnonzero(block.labels == c)
            class_sum[i] += zeroed[rows].sum(axis=0)
            class_n[i] += _finite_count(finite, rows, len(rows))
        if n_groups and row_groups is not None:
            rows_in, gid = _block_groups(row_groups, block.start, len(block))
            for g in range(n_groups):
                rows = rows_in[gid == g]
                group_sum[g] += zeroed[rows].sum(axis=0)
                group_n[g] += _finite_count(finite, rows, len(rows))
        if stride:
            lo = np.searchsorted(sample_rows, block.start)
            hi = np.searchsorted(sample_rows, block.start + len(block))
            conf, var = data_map_stats(block.loss[sample_rows[lo:hi] - block.start])
            confidence[lo:hi], variability[lo:hi] = conf, var
    with np.errstate(invalid="ignore", divide="ignore"):
        return SplitScan(
            checkpoints=split.checkpoint_ids,
            mean_loss=loss_sum / loss_n,
            accuracy=acc_sum / max(split.num_samples, 1) if has_correct else None,
            classes=classes,
            class_mean=class_sum / class_n,
            class_count=class_n.max(axis=1) if k else np.zeros(len(classes)),
            group_mean=group_sum / group_n,
            group_count=group_n.max(axis=1) if k else np.zeros(n_groups),
            sample_rows=sample_rows,
            confidence=confidence,
            variability=variability,
        )


def _zeroed(loss: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """A block's losses as float64 with non-finite ones set to 0, and where they are finite
    (None when all are, the common case: then no mask is made)."""
    values = loss.astype(np.float64)
    if np.isfinite(values.sum()):  # a NaN or inf anywhere makes the sum non-finite
        return values, None
    finite = np.isfinite(values)
    values[~finite] = 0.0
    return values, finite


def _finite_count(
    finite: np.ndarray | None, rows: slice | np.ndarray, size: int
) -> np.ndarray | int:
    """Finite values per checkpoint among ``rows`` of a block (``size`` of them)."""
    return size if finite is None else finite[rows].sum(axis=0)


def _block_groups(
    row_groups: np.ndarray | tuple[np.ndarray, np.ndarray], start: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows (relative to ``start``) of a block that belong to a group, and their groups."""
    if isinstance(row_groups, tuple):
        members, groups = row_groups
        lo, hi = np.searchsorted(members, [start, start + size])
        return members[lo:hi] - start, groups[lo:hi]
    gid = row_groups[start : start + size]
    inside = np.flatnonzero(gid >= 0)
    return inside, gid[inside]


def data_map_stats(loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confidence and variability (Swayamdipta et al., 2020) of rows of losses.

    ``p_true = exp(-loss)`` (the cross-entropy loss is ``-log p_true``); confidence is its
    mean over checkpoints, variability its population standard deviation; non-finite
    losses are left out, NaN for a row with none.
    """
    loss = np.asarray(loss, dtype=np.float64)
    p = np.exp(-loss)
    p[~np.isfinite(loss)] = np.nan  # as everywhere in the lake: a non-finite loss is missing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows give NaN, as documented
        return np.nanmean(p, axis=1), np.nanstd(p, axis=1)


def curve_groups(
    values: np.ndarray, labels: np.ndarray, classes: np.ndarray, share: float = 0.1
) -> tuple[np.ndarray, list[tuple[int, str, int]]]:
    """Rows of the highest, near-zero and lowest (most negative) CLD of each class in ``classes``.

    Each group holds ``max(1, round(share x n))`` of the class's ``n`` finite scores: first the
    lowest, then the highest, then (of the rest) those closest to zero. Returns the group of
    every row (-1 for none) and ``(class, group name, size)`` per group id.
    """
    group = np.full(len(values), -1, dtype=np.int8 if 3 * len(classes) < 127 else np.int32)
    names: list[tuple[int, str, int]] = []
    for c in classes:
        rows = np.flatnonzero((labels == c) & np.isfinite(values))
        if len(rows) == 0:
            continue
        size = max(1, fraction_size(share, len(rows)))
        order = rows[np.argsort(values[rows], kind="stable")]
        bottom, top = order[:size], order[::-1][:size]
        top = top[~np.isin(top, bottom)]
        rest = order[~np.isin(order, np.r_[bottom, top])]
        near = rest[np.argsort(np.abs(values[rest]), kind="stable")][:size]
        for name, members in (("highest", top), ("near zero", near), ("lowest", bottom)):
            if len(members):
                group[members] = len(names)
                names.append((int(c), name, len(members)))
    return group, names


def pick_classes(present: np.ndarray, how_many: int = 4) -> np.ndarray:
    """Up to ``how_many`` classes spread evenly over the classes present (ascending)."""
    present = np.unique(np.asarray(present, dtype=np.int64))
    if len(present) <= how_many:
        return present
    return present[np.round(np.linspace(0, len(present) - 1, how_many)).astype(int)]


# --- score statistics ----------------------------------------------------------------------
def binned_counts(
    values: np.ndarray, edges: np.ndarray, groups: np.ndarray | None = None
) -> list[np.ndarray]:
    """Counts of the finite ``values`` per bin of ``edges`` (equal width, last bin closed),
    per group (``groups``: False/True -> two count arrays); one pass, no copy per group."""
    bins = len(edges) - 1
    finite = np.isfinite(values)
    with np.errstate(invalid="ignore"):
        index = np.floor((values - edges[0]) / (edges[-1] - edges[0]) * bins)
    index = np.clip(np.nan_to_num(index, nan=0.0), 0, bins - 1).astype(np.int32)
    if groups is not None:
        index += bins * groups.astype(np.int32)
    index[~finite] = 2 * bins  # dropped below
    counts = np.bincount(index, minlength=2 * bins + 1)
    del index
    return [counts[:bins]] if groups is None else [counts[:bins], counts[bins : 2 * bins]]


def histogram_edges(values: np.ndarray, bins: int = 50) -> np.ndarray | None:
    """``bins + 1`` equal-width edges over the finite values; None when there are none."""
    return range_edges(*finite_range(values), bins)


def finite_range(values: np.ndarray) -> tuple[float, float]:
    """Smallest and largest finite value (``inf, -inf`` when there is none): combine the
    ranges of batches with ``min`` and ``max``."""
    finite = np.isfinite(values)
    if not finite.any():
        return np.inf, -np.inf
    lo = float(np.min(values, where=finite, initial=np.inf))
    hi = float(np.max(values, where=finite, initial=-np.inf))
    return lo, hi


def range_edges(lo: float, hi: float, bins: int = 50) -> np.ndarray | None:
    """``bins + 1`` equal-width edges from ``lo`` to ``hi`` (widened by one half each way when
    they are equal); None for an empty range (no finite value)."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)
