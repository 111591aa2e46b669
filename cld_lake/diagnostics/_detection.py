"""A score as a detector of noisy labels, on arrays: whole (:func:`detection`) or streamed in
batches in memory independent of N (:class:`DetectionTally`).

Every score is oriented by its direction (:func:`suspicion`): for ``higher_keep`` scores (CLD)
a low value is suspicious, for ``higher_harder`` ones a high value. Top-ranked figures count
the lowest fraction as ``cld-lake select`` does (``round(f x n)``, halves up, at least one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cld_lake.select import fraction_size

FINE_BINS = 1 << 18  # bins of the streamed detection histogram (AUROC and top-k cut-offs)
CUT_ROWS = 1 << 22  # most rows of one cut-off bin held to place a top-k cut exactly


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
    # and a plain sort is cheaper than a stable argsort
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


def noisy_among_lowest(
    scores: np.ndarray, noisy: np.ndarray, fractions: Sequence[float] = (0.05, 0.1, 0.2)
) -> list[dict[str, float]]:
    """Share of noisy labels among the lowest-scored fraction of ``scores``, next to the base
    rate (the ``by_fraction`` rows of :func:`detection` for a ``higher_keep`` score).

    The lowest ``fraction`` of the finite scores are ``round(fraction x n)`` samples, halves
    up (at least one), as ``cld-lake select --lowest --balance none`` counts them.
    """
    return detection(scores, noisy, "higher_keep", fractions)[1]


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
