"""The report's numbers: one streaming pass per split, and statistics on score columns.

Nothing here holds a split's trajectories: :func:`scan_split` keeps sums per checkpoint (per
split, per chosen class, per row group) and the per-sample statistics of a strided sample of
rows; the score statistics work on one score column (8 bytes per sample) at a time.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
    (None when all are: then no mask is made, the common case and three times faster)."""
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
def suspicion(values: np.ndarray, direction: str) -> np.ndarray:
    """How likely a label is wrong by a score: its hardness, high = suspicious.

    ``higher_keep`` scores (CLD) are negated; ``higher_harder`` ones are used as they are.
    """
    values = np.asarray(values, dtype=np.float64)
    return -values if direction != "higher_harder" else values


def detection(
    values: np.ndarray,
    noisy: np.ndarray,
    direction: str,
    fractions: Sequence[float] = (0.05, 0.1, 0.2),
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """A score as a detector of noisy labels, from one stable sort of its finite values.

    Samples are ranked most suspicious first (see :func:`suspicion`; equal scores: row order);
    rows with a non-finite score are left out. Returns

    - ``n``, ``noisy``, ``noise_rate``; ``auroc``: the probability that a noisy sample is more
      suspicious than a clean one, ties counting one half; ``precision_at_noise_rate``: the
      share of noisy labels among the ``k`` most suspicious samples, ``k`` = the number of
      noisy ones (NaN when there are none, or only noisy ones);
    - per fraction ``f``: ``noisy_share_lowest`` and ``recall`` among the ``round(f x n)``
      most suspicious (halves up, at least one, as ``cld-lake select`` counts), and the
      ``base_rate``.
    """
    keep = -suspicion(values, direction)  # low = suspicious
    ok = np.isfinite(keep)
    flags = np.asarray(noisy, dtype=bool)
    if not ok.all():
        keep, flags = keep[ok], flags[ok]
    # sorted noisy and clean values instead of an argsort of all: no per-sample index array,
    # and a plain sort is several times faster than a stable argsort on 10M values
    noisy_sorted, clean_sorted = np.sort(keep[flags]), np.sort(keep[~flags])
    n, pos = len(keep), len(noisy_sorted)
    rate = pos / n if n else float("nan")
    fraction_k = [min(max(1, fraction_size(f, n)), n) for f in fractions] if n else []
    needed = sorted({k for k in [*fraction_k, pos] if 0 < k <= n})
    cut = (
        dict(
            zip(
                needed,
                np.partition(keep, [k - 1 for k in needed])[[k - 1 for k in needed]],
                strict=True,
            )
        )
        if needed
        else {}
    )

    def noisy_in_top(k: int) -> int:
        """Noisy labels among the ``k`` most suspicious, ties taken in row order."""
        last = cut[k]
        noisy_before = int(np.searchsorted(noisy_sorted, last, side="left"))
        before = noisy_before + int(np.searchsorted(clean_sorted, last, side="left"))
        tied = np.flatnonzero(keep == last)[: k - before]
        return noisy_before + int(flags[tied].sum())

    row = {"n": n, "noisy": pos, "noise_rate": rate}
    if 0 < pos < n:
        clean = n - pos
        below = np.searchsorted(clean_sorted, noisy_sorted, side="left")
        upto = np.searchsorted(clean_sorted, noisy_sorted, side="right")
        # clean samples less suspicious than each noisy one, ties counting one half
        wins = float((clean - upto).sum()) + 0.5 * float((upto - below).sum())
        row |= {"auroc": wins / (pos * clean), "precision_at_noise_rate": noisy_in_top(pos) / pos}
    else:
        row |= {"auroc": float("nan"), "precision_at_noise_rate": float("nan")}
    by_fraction = []
    for f, k in zip(fractions, fraction_k or [0] * len(fractions), strict=True):
        hits = noisy_in_top(k) if k else 0
        by_fraction.append(
            {
                "fraction": f,
                "noisy_share_lowest": hits / k if k else float("nan"),
                "recall": float(hits / max(pos, 1)),
                "base_rate": rate,
            }
        )
    return row, by_fraction


def detection_row(values: np.ndarray, noisy: np.ndarray, direction: str) -> dict[str, float]:
    """AUROC and precision at the noise rate of a score (see :func:`detection`)."""
    return detection(values, noisy, direction, ())[0]


def noise_detection(
    scores: np.ndarray, noisy: np.ndarray, fractions: Sequence[float] = (0.05, 0.1, 0.2)
) -> list[dict[str, float]]:
    """Share of noisy labels among the lowest-scored fraction, next to the base rate.

    The lowest ``fraction`` of the finite scores are ``round(fraction x n)`` samples, halves
    up (at least one), as ``cld-lake select --lowest --balance none`` counts them.
    """
    return detection(scores, noisy, "higher_keep", fractions)[1]


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


# --- detection in bounded memory -----------------------------------------------------------
FINE_BINS = 1 << 18  # bins of the streamed detection histogram (AUROC and top-k cut-offs)
CUT_ROWS = 1 << 22  # most rows of one cut-off bin held to place a top-k cut exactly


class DetectionTally:
    """:func:`detection` over a score streamed in batches, in memory independent of N.

    Two passes over the same batches (same row order): :meth:`add` each batch, then
    :meth:`add_cut` each batch again, then :meth:`result`. The first pass counts noisy and
    clean samples in ``bins`` equal-width bins of the keep-value (``-suspicion``: low =
    suspicious) from ``lo`` to ``hi``, with each bin's smallest and largest value; the
    second follows the few bins where a top-k cut falls, in row order.

    Exact, as :func:`detection`, for the counts, the noise rate and every top-k figure
    (precision at the noise rate, noisy share and recall of the lowest fractions; ties in row
    order): all rows below the cut's bin are counted whole, and within that bin the rows are
    held (at most ``CUT_ROWS``; a bin of one value needs only its row order). AUROC is exact
    for pairs in different bins and for pairs in a bin that holds one value (a tie, counted one
    half); a pair in a bin holding several values is counted one half as well, so AUROC is
    within ``auroc_bound`` (half the share of such noisy-clean pairs, reported) of the exact
    value, 0 when no bin mixes values. A cut bin of several values with more than
    ``CUT_ROWS`` rows is split in proportion (``approximate`` lists the figures).
    """

    def __init__(
        self,
        lo: float,
        hi: float,
        direction: str,
        fractions: Sequence[float] = (0.05, 0.1, 0.2),
        bins: int = FINE_BINS,
        cut_rows: int = CUT_ROWS,
    ) -> None:
        self.direction = direction
        self.fractions = tuple(fractions)
        self.lo, self.hi = (lo, hi) if direction != "higher_harder" else (-hi, -lo)
        self.bins = bins if np.isfinite(self.lo) and self.hi > self.lo else 1
        self.noisy = np.zeros(self.bins, np.int64)
        self.clean = np.zeros(self.bins, np.int64)
        self.bin_min = np.full(self.bins, np.inf)
        self.bin_max = np.full(self.bins, -np.inf)
        self.cut_rows = cut_rows
        self._cuts: dict[int, _Cut] | None = None

    def _keep(self, values: np.ndarray, noisy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = -suspicion(values, self.direction)
        ok = np.isfinite(keep)
        flags = np.asarray(noisy, dtype=bool)
        return (keep, flags) if ok.all() else (keep[ok], flags[ok])

    def _index(self, keep: np.ndarray) -> np.ndarray:
        """Bin of each value: monotone in the value (each step is a rounded monotone op)."""
        if self.bins == 1:
            return np.zeros(len(keep), np.int64)
        index = np.floor((keep - self.lo) / (self.hi - self.lo) * self.bins)
        return np.clip(index, 0, self.bins - 1).astype(np.int64)

    def add(self, values: np.ndarray, noisy: np.ndarray) -> None:
        """First pass: one batch of scores and their noisy flags."""
        keep, flags = self._keep(values, noisy)
        index = self._index(keep)
        self.noisy += np.bincount(index[flags], minlength=self.bins)
        self.clean += np.bincount(index[~flags], minlength=self.bins)
        np.minimum.at(self.bin_min, index, keep)
        np.maximum.at(self.bin_max, index, keep)

    def _ks(self) -> tuple[int, int, list[int]]:
        n, pos = int(self.noisy.sum() + self.clean.sum()), int(self.noisy.sum())
        fraction_k = [min(max(1, fraction_size(f, n)), n) for f in self.fractions] if n else []
        return n, pos, fraction_k

    def cuts(self) -> dict[int, _Cut]:
        """Where each needed top-k cut falls (after the first pass)."""
        if self._cuts is None:
            n, pos, fraction_k = self._ks()
            total = np.cumsum(self.noisy + self.clean)
            noisy_total = np.cumsum(self.noisy)
            self._cuts = {}
            for k in sorted({k for k in [*fraction_k, pos] if 0 < k <= n}):
                j = int(np.searchsorted(total, k))  # the first bin reaching k rows
                before = int(total[j - 1]) if j else 0
                self._cuts[k] = _Cut(
                    bin=j,
                    need=k - before,
                    noisy_before=int(noisy_total[j - 1]) if j else 0,
                    one_value=bool(self.bin_min[j] == self.bin_max[j]),
                )
        return self._cuts

    def add_cut(self, values: np.ndarray, noisy: np.ndarray) -> None:
        """Second pass: the same batch as in the first, in the same order."""
        cuts = self.cuts()
        if not cuts:
            return
        keep, flags = self._keep(values, noisy)
        index = self._index(keep)
        for j in {c.bin for c in cuts.values()}:
            inside = index == j
            if not inside.any():
                continue
            values_j, flags_j = keep[inside], flags[inside]
            for cut in cuts.values():
                if cut.bin == j:
                    cut.take(values_j, flags_j, self.cut_rows)

    def result(self) -> tuple[dict[str, float], list[dict[str, float]]]:
        """As :func:`detection` (after both passes), the row with ``auroc_bound`` and
        ``approximate`` (the figures split in proportion, usually none) added."""
        n, pos, fraction_k = self._ks()
        cuts = self.cuts()
        approximate: list[str] = []

        def noisy_in_top(k: int, what: str) -> float:
            cut = cuts[k]
            hits = cut.hits()
            if hits is None:  # a bin of several values, too many rows to hold: in proportion
                approximate.append(what)
                count = int(self.noisy[cut.bin] + self.clean[cut.bin])
                return cut.noisy_before + cut.need * int(self.noisy[cut.bin]) / count
            return cut.noisy_before + hits

        rate = pos / n if n else float("nan")
        row: dict[str, Any] = {"n": n, "noisy": pos, "noise_rate": rate}
        if 0 < pos < n:
            clean = n - pos
            clean_above = clean - np.cumsum(self.clean)  # clean rows in higher (safer) bins
            wins = float((self.noisy * clean_above).sum()) + 0.5 * float(
                (self.noisy * self.clean).sum()
            )
            mixed = self.bin_min < self.bin_max
            bound = 0.5 * float((self.noisy[mixed] * self.clean[mixed]).sum()) / (pos * clean)
            row |= {
                "auroc": wins / (pos * clean),
                "precision_at_noise_rate": noisy_in_top(pos, "precision_at_noise_rate") / pos,
                "auroc_bound": bound,
            }
        else:
            row |= {"auroc": float("nan"), "precision_at_noise_rate": float("nan")}
            row["auroc_bound"] = 0.0
        by_fraction = []
        for f, k in zip(self.fractions, fraction_k or [0] * len(self.fractions), strict=True):
            hits = noisy_in_top(k, f"fraction {f}") if k else 0
            by_fraction.append(
                {
                    "fraction": f,
                    "noisy_share_lowest": hits / k if k else float("nan"),
                    "recall": float(hits / max(pos, 1)),
                    "base_rate": rate,
                }
            )
        row["approximate"] = approximate
        return row, by_fraction


@dataclass
class _Cut:
    """A top-k cut: ``need`` more rows taken from bin ``bin`` after ``noisy_before`` noisy
    ones in the bins below; the second pass feeds it the bin's rows in row order."""

    bin: int
    need: int
    noisy_before: int
    one_value: bool
    seen: int = 0
    first_noisy: int = 0  # one value: noisy among the first ``need`` rows of the bin
    held: list[tuple[np.ndarray, np.ndarray]] | None = None
    overflow: bool = False

    def take(self, values: np.ndarray, flags: np.ndarray, limit: int) -> None:
        if self.one_value:  # ties in row order: the first ``need`` rows of the bin
            self.first_noisy += int(flags[: max(0, self.need - self.seen)].sum())
        elif not self.overflow:
            if self.seen + len(values) > limit:
                self.overflow, self.held = True, None
            else:
                self.held = self.held if self.held is not None else []
                self.held.append((values, flags))
        self.seen += len(values)

    def hits(self) -> int | None:
        """Noisy rows among the ``need`` smallest (value, row) of the bin; None if not held."""
        if self.one_value:
            return self.first_noisy
        if self.overflow:
            return None
        values = np.concatenate([v for v, _ in self.held or []] or [np.zeros(0)])
        flags = np.concatenate([f for _, f in self.held or []] or [np.zeros(0, bool)])
        order = np.argsort(values, kind="stable")[: self.need]
        return int(flags[order].sum())
