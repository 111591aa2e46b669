"""The selection rules on arrays: size, class quotas, top-k and CCS (no lake, no I/O).

:func:`select_rows` is the reference every other path matches row for row (the streaming
top-k, its dask twin); :func:`ccs_rows` is Coverage-Centric Coreset Selection. Both return
a :class:`Picked`; what a manifest is built from is a :class:`Chosen`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from cld_lake._types import Balance, Strategy, choices
from cld_lake.errors import BadInputError
from cld_lake.lake.scores import DIRECTIONS

BALANCES = choices(Balance)
STRATEGIES = choices(Strategy)
# CCS defaults: 50 strata as in the authors' code; a hard cut-off of 10% (the paper tunes it per
# pruning rate, larger for smaller coresets, e.g. 0.3 for a 10% coreset of CIFAR-10)
CCS_PRUNE = 0.1
CCS_BINS = 50


@dataclass(frozen=True)
class Picked:
    """Rows chosen by :func:`select_rows` plus the per-class bookkeeping."""

    rows: np.ndarray  # indices into the candidates, in manifest order
    ranks: np.ndarray
    requested: int
    quotas: dict[int, int]
    shortfall: dict[int, int]


@dataclass(frozen=True)
class Chosen:
    """The selected rows in manifest order (class, then rank) and the counts a manifest records."""

    sample_ids: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    ranks: np.ndarray
    requested: int
    shortfall: dict[int, int]
    candidates: int
    nan_scores: int
    classes: int
    in_order: bool = False  # already by class, then rank (the manifest's order)


# --- size, quotas and the top-k ---------------------------------------------------------
def check_size_args(fraction: float | None, count: int | None) -> None:
    """The checks of ``fraction`` / ``count`` that need no candidate count."""
    if (fraction is None) == (count is None):
        raise BadInputError("give exactly one of --fraction F (0 < F <= 1) or --count K (K >= 1)")
    if fraction is not None:
        if not (isinstance(fraction, int | float) and 0 < fraction <= 1) or math.isnan(fraction):
            raise BadInputError(
                f"--fraction {fraction}: must be in (0, 1], e.g. 0.1 for a 10% coreset"
            )
    elif isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 1:
        raise BadInputError(f"--count {count}: must be an integer >= 1")


def fraction_size(fraction: float, n: int) -> int:
    """``round(fraction x n)``, halves rounded up, exact for ``fraction`` as written in decimal.

    ``0.29 x 50`` is 14.5 and gives 15 (binary floating point makes it 14.499999999999998).
    """
    return math.floor(Fraction(str(float(fraction))) * n + Fraction(1, 2))


def target_size(
    n: int, fraction: float | None, count: int | None, *, pool: str = "candidate samples"
) -> int:
    """Total rows asked for: :func:`fraction_size` or ``count``; validated against the ``n``
    samples of ``pool`` (named in the error)."""
    check_size_args(fraction, count)
    if fraction is not None:
        total = fraction_size(fraction, n)
        if total < 1:
            raise BadInputError(
                f"--fraction {fraction}: selects 0 of {n} samples; use a larger fraction or --count"
            )
        return total
    assert count is not None  # check_size_args: exactly one is given
    if count > n:
        raise BadInputError(f"--count {count}: exceeds the {n} {pool}; use --count <= {n}")
    return int(count)


def class_quotas(labels: np.ndarray, total: int, balance: Balance) -> dict[int, int]:
    """Rows per class for ``total`` rows under ``balance`` (``proportional`` or ``equal``)."""
    classes, _, sizes = _class_index(np.asarray(labels, dtype=np.int64))
    quota = _quotas(sizes, classes, total, balance)
    return {int(c): int(q) for c, q in zip(classes, quota, strict=True)}


def _quotas(sizes: np.ndarray, classes: np.ndarray, total: int, balance: Balance) -> np.ndarray:
    n = int(sizes.sum())
    if balance == "proportional":
        exact = total * sizes.astype(np.int64)
        quota, remainder = exact // n, exact % n
        extra = total - int(quota.sum())
        order = np.lexsort((classes, -remainder))  # largest remainder first, then smaller label
        quota[order[:extra]] += 1
        return quota
    if balance == "equal":
        quota = np.full(len(classes), total // len(classes), dtype=np.int64)
        quota[: total % len(classes)] += 1
        return quota
    raise BadInputError(f"--balance {balance!r}: use one of {', '.join(BALANCES)}")


def _class_index(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Classes present (ascending), each row's class position, and class sizes.

    Labels are class indices 0..C-1, so a bincount and a lookup table replace sorting.
    """
    if len(labels) and labels.min() >= 0 and labels.max() <= 4 * len(labels) + 1024:
        counts = np.bincount(labels)
        classes = np.flatnonzero(counts)
        lookup = np.zeros(len(counts), dtype=np.int64)
        lookup[classes] = np.arange(len(classes))
        return classes, lookup[labels], counts[classes]
    classes, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    return classes, inverse.reshape(-1), sizes


def select_rows(
    sample_ids: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    fraction: float | None = None,
    count: int | None = None,
    balance: Balance = "proportional",
    lowest: bool = False,
    seed: int | None = None,
    selectable: np.ndarray | None = None,
) -> Picked:
    """Choose rows: class-balanced top-k (or seeded random when ``seed`` is given).

    ``selectable`` (default: score is not NaN) marks rows that may be chosen; the others still
    count in the class sizes. Deterministic: ties go to the smaller sample id, a random order
    depends only on ``seed`` and the set of (sample_id, label) pairs, not on row order.
    """
    if balance not in BALANCES:
        raise BadInputError(f"--balance {balance!r}: use one of {', '.join(BALANCES)}")
    ids = np.asarray(sample_ids, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    n = len(ids)
    if n == 0:
        raise BadInputError("no candidate samples to select from")
    total = target_size(n, fraction, count)
    ok = ~np.isnan(scores) if selectable is None else np.asarray(selectable, dtype=bool)
    if seed is not None:  # a random order, independent of row order
        key = np.empty(n, dtype=np.float64)
        key[np.argsort(ids, kind="stable")] = np.random.default_rng(seed).permutation(n)
    else:
        key = np.where(ok, scores if lowest else -scores, 0.0)
    blocked = ~ok
    if balance == "none":
        order = np.lexsort((ids, key, blocked))
        take = min(total, int(ok.sum()))
        chosen = order[:take]
        inner = np.lexsort((ids[chosen], key[chosen], labels[chosen]))
        rows = chosen[inner]
        quotas = {}
        shortfall = {-1: total - take} if take < total else {}
    else:
        classes, index, sizes = _class_index(labels)
        quota = _quotas(sizes, classes, total, balance)
        quotas = {int(c): int(q) for c, q in zip(classes, quota, strict=True)}
        order = np.lexsort((ids, key, blocked, labels))
        sorted_index = index[order]
        starts = np.r_[0, np.cumsum(sizes)[:-1]]
        position = np.arange(n) - starts[sorted_index]
        available = np.bincount(index[ok], minlength=len(classes))
        take = np.minimum(quota, available)
        rows = order[position < take[sorted_index]]
        short = quota - take
        shortfall = {int(c): int(s) for c, s in zip(classes, short, strict=True) if s > 0}
    ranks = _ranks_within_class(labels[rows])
    return Picked(rows, ranks, total, quotas, shortfall)


def _ranks_within_class(sorted_labels: np.ndarray) -> np.ndarray:
    """1, 2, ... within each run of equal labels (rows already in class, then rank order)."""
    n = len(sorted_labels)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    run = np.repeat(starts, np.diff(np.r_[starts, n]))
    return np.arange(n, dtype=np.int64) - run + 1


# --- CCS: coverage-centric selection -----------------------------------------------------


def check_ccs_args(prune: float, bins: int, seed: int) -> None:
    """The checks of the CCS parameters that need no data."""
    if isinstance(prune, bool) or not isinstance(prune, int | float) or not 0 <= prune < 1:
        raise BadInputError(
            f"--ccs-prune {prune}: must be in [0, 1), the share of hardest samples dropped, e.g. 0.1"
        )
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or not 1 <= bins <= 100_000:
        raise BadInputError(f"--ccs-bins {bins}: must be an integer in [1, 100000], e.g. 50")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise BadInputError(f"--seed {seed}: must be an integer >= 0")


def ccs_rows(
    sample_ids: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    fraction: float | None = None,
    count: int | None = None,
    balance: Balance = "proportional",
    prune: float = CCS_PRUNE,
    bins: int = CCS_BINS,
    seed: int = 0,
    direction: str = "higher_keep",
    selectable: np.ndarray | None = None,
) -> Picked:
    """Choose rows by Coverage-Centric Coreset Selection, per class (or globally for ``none``).

    Within each class (the quotas are those of the top-k rule, NaN scores counted in the class
    sizes, never selected; ``+inf`` and ``-inf`` are the largest and smallest scores):

    1. *Hard cut-off*: drop the ``floor(prune x n)`` hardest of the class's ``n`` selectable
       samples: the lowest scores for a ``higher_keep`` score (CLD), the highest for a
       ``higher_harder`` one; equal scores: the smaller sample id is dropped first.
    2. *Strata*: split the remaining scores into ``bins`` equal-width bins over the
       ``[min, max]`` of their finite values (bin ``min(floor((s - min) / (max - min) x bins),
       bins - 1)``; all in bin 0 when ``min == max``); ``-inf`` joins the first bin, ``+inf``
       the last.
    3. *Budget*: visit the bins from the least filled up (ties: lower bin first); each gets
       ``min(its size, floor(budget left / bins left))`` (the authors' ``bin_allocate``).
    4. *Draw*: within a bin, the samples with the smallest random keys, where the keys are a
       permutation drawn from ``seed`` and laid on the samples in ``sample_id`` order (so the
       draw does not depend on row order).

    Ranks within a class follow the score, most useful first (highest for ``higher_keep``),
    ties by the smaller sample id. A class whose pruned pool is smaller than its quota gives
    all it has (shortfall). Raises :class:`BadInputError` when pruning leaves fewer samples
    than the total asked for.
    """
    if balance not in BALANCES:
        raise BadInputError(f"--balance {balance!r}: use one of {', '.join(BALANCES)}")
    if direction not in DIRECTIONS:
        raise BadInputError(f"direction {direction!r}: use one of {', '.join(DIRECTIONS)}")
    check_ccs_args(prune, bins, seed)
    ids = np.asarray(sample_ids, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    n = len(ids)
    if n == 0:
        raise BadInputError("no candidate samples to select from")
    total = target_size(n, fraction, count)
    ok = ~np.isnan(scores) if selectable is None else np.asarray(selectable, dtype=bool)
    if balance == "none":
        groups, group, sizes = np.zeros(1, np.int64), np.zeros(n, np.int64), np.array([n])
        quota = np.array([total], dtype=np.int64)
    else:
        groups, group, sizes = _class_index(labels)
        quota = _quotas(sizes, groups, total, balance)
    n_groups = len(groups)
    keep = np.where(ok, scores if direction == "higher_keep" else -scores, 0.0)
    n_ok = np.bincount(group[ok], minlength=n_groups)
    beta = Fraction(str(float(prune)))
    hard = n_ok * beta.numerator // beta.denominator  # floor(prune x n), exact
    if total > n - int(hard.sum()):
        most = math.floor((n - total) / n * 1000) / 1000
        raise BadInputError(
            f"--ccs-prune {prune}: dropping the hardest {int(hard.sum())} leaves "
            f"{n - int(hard.sum())} of {n} samples, fewer than the {total} asked for; "
            f"use --ccs-prune <= {most:g} or a smaller coreset"
        )
    # hardest first within each group (lowest keep value, then smaller id); unselectable last
    order = np.lexsort((ids, keep, ~ok, group))
    start = np.r_[0, np.cumsum(sizes)[:-1]]
    g_sorted = group[order]
    position = np.arange(n) - start[g_sorted]
    in_pool = (position >= hard[g_sorted]) & (position < n_ok[g_sorted])
    pool = order[in_pool]
    g_pool = g_sorted[in_pool]
    s_pool = scores[pool]
    lo, hi = _finite_ends(s_pool, g_pool, n_groups)
    strata = ccs_bin_index(s_pool, lo[g_pool], hi[g_pool], bins)
    counts = np.bincount(g_pool * bins + strata, minlength=n_groups * bins).reshape(n_groups, bins)
    budget = ccs_bin_budgets(counts, quota)
    key = np.empty(n, dtype=np.int64)
    key[np.argsort(ids, kind="stable")] = np.random.default_rng(seed).permutation(n)
    cell = g_pool * bins + strata
    within = np.lexsort((key[pool], cell))
    cell_start = np.r_[0, np.cumsum(counts.ravel())[:-1]]
    cell_sorted = cell[within]
    rank_in_cell = np.arange(len(pool)) - cell_start[cell_sorted]
    chosen = pool[within[rank_in_cell < budget.ravel()[cell_sorted]]]
    rows = chosen[np.lexsort((ids[chosen], -keep[chosen], labels[chosen]))]
    short = quota - budget.sum(axis=1)
    if balance == "none":
        quotas: dict[int, int] = {}
        shortfall = {-1: int(short[0])} if short[0] else {}
    else:
        quotas = {int(c): int(q) for c, q in zip(groups, quota, strict=True)}
        shortfall = {int(c): int(s) for c, s in zip(groups, short, strict=True) if s > 0}
    return Picked(rows, _ranks_within_class(labels[rows]), total, quotas, shortfall)


def _finite_ends(values: np.ndarray, group: np.ndarray, n_groups: int) -> tuple[np.ndarray, ...]:
    """The smallest and largest finite value of each group (0 and 0 for a group without one).

    ``values`` are a pool sorted by group, then by score (either way round), so each group's
    finite values are one contiguous run (its infinities sit at the run's ends) and the ends
    of that run are its minimum and maximum."""
    finite = np.flatnonzero(np.isfinite(values))
    lo, hi = np.zeros(n_groups), np.zeros(n_groups)
    if len(finite):
        groups, first = np.unique(group[finite], return_index=True)
        last = np.r_[first[1:], len(finite)] - 1
        a, b = values[finite[first]], values[finite[last]]
        lo[groups], hi[groups] = np.minimum(a, b), np.maximum(a, b)
    return lo, hi


def ccs_bin_index(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of each value over ``[lo, hi]`` (per value, the finite range of its
    group), the maximum in the last bin; all in bin 0 when ``lo == hi``. ``-inf`` is in the
    first bin and ``+inf`` in the last (below and above every finite value)."""
    span = hi - lo
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        raw = np.floor((values - lo) / span * bins)
    index = np.where(span > 0, np.clip(np.nan_to_num(raw), 0, bins - 1), 0).astype(np.int64)
    index[values == np.inf] = bins - 1
    index[values == -np.inf] = 0
    return index


def ccs_bin_budgets(counts: np.ndarray, quota: np.ndarray) -> np.ndarray:
    """Rows per bin (``groups x bins``): the least-filled bin first, each bin
    ``min(size, floor(left / bins left))``, as the CCS authors' ``bin_allocate``."""
    order = np.argsort(counts, axis=1, kind="stable")
    sorted_counts = np.take_along_axis(counts, order, axis=1)
    left = np.asarray(quota, dtype=np.int64).copy()
    taken = np.zeros_like(sorted_counts)
    width = counts.shape[1]
    for i in range(width):
        taken[:, i] = np.minimum(sorted_counts[:, i], left // (width - i))
        left -= taken[:, i]
    budget = np.empty_like(taken)
    np.put_along_axis(budget, order, taken, axis=1)
    return budget
