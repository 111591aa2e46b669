"""Class-balanced selection: scores -> a coreset manifest.

Rules (see ``docs/sql.md``):

- Size: ``fraction`` of the candidates (``round(fraction x N)``, halves rounded up, exact for
  the decimal fraction as written) or ``count`` rows in total. Candidates are the training
  samples of ``LAKE/scores.parquet`` (or the rows of ``query``).
- Balance: ``proportional`` (default) gives class ``c`` ``total x n_c / N`` rows, rounded by
  largest remainder (ties: smaller label) so the total is exact; ``equal`` gives every class
  ``total // C`` rows, the first ``total % C`` classes by label one more (the authors' rule);
  ``none`` takes the global top ``total``.
- Order: highest score first (``lowest=True``: lowest first); ties by smaller ``sample_id``.
  ``random=True`` draws a seeded random order instead, with the same class balance.
- NaN scores are never selected. They still count in the class sizes (the class balance of
  the data); a class with fewer non-NaN samples than its quota gives all it has and the
  shortfall is reported, not moved to other classes.
- A stored score computed over fewer checkpoints than the lake now holds (see
  :func:`cld_lake.lake.scores.stale_scores`) is used, with a warning recorded in the
  manifest's ``score_stale``.
- Memory: the top-k of a stored score streams the scores table once it has
  ``STREAM_MIN_ROWS`` rows (:func:`stream_top_k`: the same rows, in memory of about the
  selected rows); ``--query``, ``--random`` and ``ccs`` read their candidates whole.
- Strategy ``ccs`` (Coverage-Centric Coreset Selection, Zheng et al., ICLR 2023) replaces the
  top-k within each class by: prune the hardest ``prune`` share, split the rest into ``bins``
  equal-width score bins, spread the quota over the bins from the least-filled bin up, and
  draw within each bin at random (seeded). See :func:`ccs_rows`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from cld_lake._io import check_output_path
from cld_lake._types import Balance, Strategy, choices
from cld_lake.errors import BadInputError, CorruptLakeError, ScoringError
from cld_lake.lake import scores as scores_table
from cld_lake.lake.scores import DIRECTIONS, score_direction
from cld_lake.lake.store import Lake
from cld_lake.manifest import (
    MANIFEST_KIND,
    MANIFEST_VERSION,
    Manifest,
    manifest_table,
    seal,
    write_manifest,
)

BALANCES = choices(Balance)
STRATEGIES = choices(Strategy)
MANIFESTS_DIR = "manifests"
# CCS defaults: 50 strata as in the authors' code; a hard cut-off of 10% (the paper tunes it per
# pruning rate, larger for smaller coresets, e.g. 0.3 for a 10% coreset of CIFAR-10)
CCS_PRUNE = 0.1
CCS_BINS = 50


@dataclass(frozen=True)
class Candidates:
    """The samples a selection ranks: ids, labels, scores (NaN = not selectable)."""

    sample_ids: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    score_name: str | None
    provenance: dict[str, Any]


@dataclass(frozen=True)
class Picked:
    """Rows chosen by :func:`select_rows` plus the per-class bookkeeping."""

    rows: np.ndarray  # indices into the candidates, in manifest order
    ranks: np.ndarray
    requested: int
    quotas: dict[int, int]
    shortfall: dict[int, int]


# --- the core: pure numpy ----------------------------------------------------------------
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
    sizes, never selected):

    1. *Hard cut-off*: drop the ``floor(prune x n)`` hardest of the class's ``n`` selectable
       samples: the lowest scores for a ``higher_keep`` score (CLD), the highest for a
       ``higher_harder`` one; equal scores: the smaller sample id is dropped first.
    2. *Strata*: split the remaining scores into ``bins`` equal-width bins over their
       ``[min, max]`` (bin ``min(floor((s - min) / (max - min) x bins), bins - 1)``; all in
       bin 0 when ``min == max``).
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
    # the pool of a group is a contiguous run sorted by keep value: its ends are min and max
    has = n_ok > hard
    first = np.where(has, start + hard, 0)
    last = np.where(has, start + n_ok - 1, 0)
    ends = np.stack([scores[order[first]], scores[order[last]]])
    lo, hi = ends.min(axis=0), ends.max(axis=0)
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


def ccs_bin_index(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of each value over ``[lo, hi]`` (per value), the maximum in the last bin."""
    span = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        raw = np.floor((values - lo) / span * bins)
    return np.where(span > 0, np.clip(raw, 0, bins - 1), 0).astype(np.int64)


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


# --- reading candidates ------------------------------------------------------------------
def _score_candidates(lake: Lake, score: str) -> Candidates:
    """``sample_id, label`` and column ``score`` of the scores table with its provenance."""
    provenance = _stored_score(lake, score)
    table = scores_table.read_scores(lake, [score])
    return Candidates(
        table.column("sample_id").to_numpy().astype(np.int64, copy=False),
        table.column("label").to_numpy().astype(np.int64, copy=False),
        table.column(score).to_numpy(zero_copy_only=False).astype(np.float64, copy=False),
        score,
        provenance,
    )


def _stored_score(lake: Lake, score: str) -> dict[str, Any]:
    """The provenance of stored score ``score``; a one-line error when there is none."""
    stored = scores_table.stored_scores(lake)
    if score in scores_table.RESERVED:
        raise BadInputError(
            f"--score {score}: {' and '.join(scores_table.RESERVED)} are columns of the scores "
            f"table, not scores; stored scores: {', '.join(stored) or 'none'}"
        )
    if not stored:
        raise BadInputError(
            f"--score {score}: {lake.path} has no scores yet; compute one with `cld-lake score {lake.path}`"
        )
    if score not in stored:
        where = scores_table.scores_path(lake)
        raise BadInputError(
            f"--score {score}: no such score in {where} (stored: {', '.join(stored)}); "
            + (
                f"compute it with `cld-lake score {lake.path} --name {score}`"
                if _valid_score_name(score)
                else "give one of the stored names"
            )
        )
    return stored[score]


def _valid_score_name(name: str) -> bool:
    try:
        scores_table.check_score_name(name)
    except ScoringError:
        return False
    return True


def _train_candidates(lake: Lake) -> Candidates:
    train = lake.split("train")
    return Candidates(train.sample_ids, train.labels, np.full(train.num_samples, np.nan), None, {})


def _query_candidates(lake: Lake, query: str, score: str | None, need_score: bool) -> Candidates:
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
            f"--query: sample ids {ids[rows < 0][:5].tolist()} are not training samples of {lake.path}"
        )
    labels = train.labels[rows]
    if score is not None:
        stored = _score_candidates(lake, score)
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


# --- the public function -----------------------------------------------------------------
def select(
    lake: Lake | str | os.PathLike[str],
    score: str | None = None,
    *,
    fraction: float | None = None,
    count: int | None = None,
    balance: Balance = "proportional",
    lowest: bool = False,
    random: bool = False,
    seed: int | None = None,
    query: str | None = None,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
    strategy: Strategy = "topk",
    ccs_prune: float | None = None,
    ccs_bins: int | None = None,
    dask: bool = False,
    scheduler: str | None = None,
) -> Manifest:
    """Select a class-balanced coreset and (optionally) write its manifest.

    Parameters
    ----------
    lake : Lake or path
    score : str, optional
        Name of a stored score (a column of the ``scores`` view). ``topk`` takes the highest
        values (CLD: Pearson correlation in [-1, 1], higher = more useful, NaN for samples with
        non-finite losses); ``ccs`` reads the score's direction from its provenance.
    fraction, count : exactly one
        ``fraction`` in (0, 1] of the candidates, or ``count`` >= 1 rows in total.
    balance : {"proportional", "equal", "none"}
    lowest : bool
        ``topk`` only: take the lowest scores instead (e.g. likely mislabeled samples).
    random, seed : bool, int
        A seeded random selection with the same class balance (the baseline); ``seed``
        defaults to 0. With ``score`` the NaN-score samples are left out as for the coreset.
        ``seed`` is also the seed of the ``ccs`` draw.
    query : str, optional
        SQL over the lake's views returning ``sample_id`` (and optionally ``score``): the
        candidates, e.g. to filter by metadata before ranking.
    out : path, optional
        Where to write the manifest (atomically): outside the lake, or in ``LAKE/manifests/``.
    force : bool
        Overwrite ``out`` if it exists (otherwise an existing file is an error).
    strategy : {"topk", "ccs"}
        ``topk`` (default): the best ``k`` per class. ``ccs``: Coverage-Centric Coreset
        Selection (:func:`ccs_rows`): drop the hardest ``ccs_prune`` share of each class, then
        draw the quota over ``ccs_bins`` equal-width score bins.
    ccs_prune : float, optional
        Share in [0, 1) of each class's hardest samples never selected (default 0.1).
    ccs_bins : int, optional
        Number of score bins (strata), default 50.
    dask : bool
        ``topk`` of a stored score only: run the streaming passes on dask workers (the same
        rows; see :func:`stream_top_k_on_cluster`).
    scheduler : str, optional
        With ``dask``: the address of a running dask scheduler (else the active client, else
        a LocalCluster for this call).

    Returns
    -------
    Manifest
        Its metadata is what the file holds (checksum included). A stale score (its window
        now picks other checkpoints, e.g. after more were appended) is used with a
        ``UserWarning`` and the reason in ``metadata["score_stale"]``.
    """
    lake = (lake if isinstance(lake, Lake) else Lake(lake)).resolve_run()
    if balance not in BALANCES:
        raise BadInputError(f"--balance {balance!r}: use one of {', '.join(BALANCES)}")
    check_size_args(fraction, count)  # argument checks before any reading
    rule = _check_rule(strategy, lowest, random, seed, ccs_prune, ccs_bins)
    if scheduler is not None and not dask:
        raise BadInputError("--scheduler is used with --dask; add --dask or drop --scheduler")
    if dask:
        if score is None or query is not None or rule.random or rule.strategy != "topk":
            raise BadInputError(
                "--dask runs the top-k of a stored score (--score NAME) only; drop --query, "
                "--random or --strategy ccs, or drop --dask"
            )
        rule = dataclasses.replace(rule, dask=True, scheduler=scheduler)
    if out is None:
        return _select(lake, score, fraction, count, balance, rule, query, None)
    created = _make_manifests_dir(Path(out), lake)
    try:
        path = check_output_path(
            out,
            lake.path,
            what="--out",
            suffixes=(".parquet",),
            allowed_dir=MANIFESTS_DIR,
            overwrite=force,
        )
        return _select(lake, score, fraction, count, balance, rule, query, path)
    except BaseException:
        if created:  # a failed call leaves the lake as it was
            with contextlib.suppress(OSError):
                (lake.path / MANIFESTS_DIR).rmdir()
        raise


@dataclass(frozen=True)
class _Rule:
    """How rows are chosen: top-k (highest/lowest), random, or CCS with its parameters."""

    strategy: str
    lowest: bool
    random: bool
    seed: int | None
    prune: float = CCS_PRUNE
    bins: int = CCS_BINS
    dask: bool = False  # where: the streaming passes on dask workers
    scheduler: str | None = None


def _check_rule(
    strategy: str,
    lowest: bool,
    random: bool,
    seed: int | None,
    prune: float | None,
    bins: int | None,
) -> _Rule:
    if strategy not in STRATEGIES:
        raise BadInputError(f"--strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if strategy == "topk":
        if prune is not None or bins is not None:
            flag = "--ccs-prune" if prune is not None else "--ccs-bins"
            raise BadInputError(f"{flag} is used with --strategy ccs only")
        if random and lowest:
            raise BadInputError("--lowest has no meaning with --random; drop one of them")
        return _Rule("topk", lowest, random, (0 if seed is None else int(seed)) if random else None)
    if lowest:
        raise BadInputError(
            "--lowest is for --strategy topk; ccs already drops the hardest samples by the score's direction"
        )
    if random:
        raise BadInputError("--random is its own baseline; drop --strategy ccs or --random")
    rule = _Rule(
        "ccs",
        False,
        False,
        0 if seed is None else seed,
        CCS_PRUNE if prune is None else prune,
        CCS_BINS if bins is None else bins,
    )
    assert rule.seed is not None
    check_ccs_args(rule.prune, rule.bins, rule.seed)
    return rule


def _make_manifests_dir(out: Path, lake: Lake) -> bool:
    """Create ``LAKE/manifests/`` when ``out`` goes directly into it; True if created here."""
    manifests = lake.path / MANIFESTS_DIR
    if out.expanduser().resolve().parent != manifests.resolve() or manifests.exists():
        return False
    manifests.mkdir()
    return True


def _candidates(lake: Lake, score: str | None, query: str | None, rule: _Rule) -> Candidates:
    if query is not None:
        return _query_candidates(lake, query, score, need_score=not rule.random)
    if score is not None:
        return _score_candidates(lake, score)
    if rule.random:
        return _train_candidates(lake)
    if rule.strategy == "ccs":
        raise BadInputError("--strategy ccs needs a score: give --score NAME (a stored score)")
    raise BadInputError("give --score NAME (a stored score), --random, or --query")


def _select(
    lake: Lake,
    score: str | None,
    fraction: float | None,
    count: int | None,
    balance: Balance,
    rule: _Rule,
    query: str | None,
    out: Path | None,
) -> Manifest:
    pool = "rows of --query" if query is not None else "training samples"
    if query is None and score is not None and rule.strategy == "topk" and not rule.random:
        provenance = _stored_score(lake, score)
        pf = scores_table._open_checked(lake)
        n = int(pf.metadata.num_rows)
        if rule.dask or n >= stream_min_rows():
            target_size(n, fraction, count, pool=pool)
            stale = _stale_warning(lake, score)
            size = {"fraction": fraction, "count": count, "balance": balance}
            if rule.dask:
                chosen = stream_top_k_on_cluster(
                    lake, score, lowest=rule.lowest, scheduler=rule.scheduler, **size
                )
            else:
                chosen = stream_select(_ScoresStream(pf, lake), score, lowest=rule.lowest, **size)
            selection = {"strategy": "topk", "rule": "lowest" if rule.lowest else "highest"}
            return _finish(
                lake,
                chosen,
                score,
                provenance,
                stale,
                selection,
                rule,
                balance,
                query,
                fraction,
                count,
                out,
            )
    cand = _candidates(lake, score, query, rule)
    target_size(len(cand.sample_ids), fraction, count, pool=pool)
    stale = _stale_warning(lake, score)
    scored = cand.score_name is not None
    selectable = ~np.isnan(cand.scores) if scored else np.ones(len(cand.sample_ids), dtype=bool)
    selection: dict[str, Any] = {"strategy": rule.strategy}
    if rule.strategy == "ccs":
        direction = score_direction(cand.provenance)
        picked = ccs_rows(
            cand.sample_ids,
            cand.labels,
            cand.scores,
            fraction=fraction,
            count=count,
            balance=balance,
            prune=rule.prune,
            bins=rule.bins,
            seed=int(rule.seed or 0),
            direction=direction,
            selectable=selectable,
        )
        selection |= {
            "rule": "ccs",
            "ccs": {
                "prune": rule.prune,
                "bins": rule.bins,
                "direction": direction,
                "pruned": "the floor(prune x n) hardest of each class's scored samples: "
                + ("lowest" if direction == "higher_keep" else "highest")
                + " scores, ties: smaller sample_id",
                "budget": "least-filled bin first, min(size, floor(left / bins left))",
                "draw": "within a bin: smallest keys of a seeded permutation laid in sample_id order",
                "rank": "score order within class, most useful first",
            },
        }
    else:
        picked = select_rows(
            cand.sample_ids,
            cand.labels,
            cand.scores,
            fraction=fraction,
            count=count,
            balance=balance,
            lowest=rule.lowest,
            seed=rule.seed,
            selectable=selectable,
        )
        selection["rule"] = "random" if rule.random else ("lowest" if rule.lowest else "highest")
    rows = picked.rows
    chosen = Chosen(
        cand.sample_ids[rows],
        cand.labels[rows],
        cand.scores[rows],
        picked.ranks,
        picked.requested,
        picked.shortfall,
        candidates=len(cand.sample_ids),
        nan_scores=int((~selectable).sum()),
        classes=len(np.unique(cand.labels)),
    )
    return _finish(
        lake,
        chosen,
        cand.score_name,
        cand.provenance,
        stale,
        selection,
        rule,
        balance,
        query,
        fraction,
        count,
        out,
    )


def _stale_warning(lake: Lake, score: str | None) -> str | None:
    """Why stored score ``score`` is stale (warned about here), or None."""
    stale = scores_table.stale_scores(lake).get(score) if score is not None else None
    if stale is not None:
        warnings.warn(f"--score {score}: {stale}", UserWarning, stacklevel=4)
    return stale


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


def _table_in_order(chosen: Chosen) -> Any:
    """:func:`manifest_table` of rows already in its order (class, then rank): no sort and no
    copy of the columns (a 10M-row manifest would otherwise hold them three times)."""
    import pyarrow as pa

    from cld_lake.manifest import manifest_schema

    columns = (chosen.sample_ids, chosen.labels, chosen.scores, chosen.ranks)
    return pa.Table.from_arrays([pa.array(c) for c in columns], schema=manifest_schema())


def _finish(
    lake: Lake,
    chosen: Chosen,
    score_name: str | None,
    prov: dict[str, Any],
    stale: str | None,
    selection: dict[str, Any],
    rule: _Rule,
    balance: Balance,
    query: str | None,
    fraction: float | None,
    count: int | None,
    out: Path | None,
) -> Manifest:
    """The manifest of ``chosen``: table, sealed metadata, and the file when ``out`` is given."""
    import datetime as dt

    from cld_lake._version import __version__

    if chosen.in_order:
        table = _table_in_order(chosen)
    else:
        table = manifest_table(chosen.sample_ids, chosen.labels, chosen.scores, chosen.ranks)
    metadata = {
        "kind": MANIFEST_KIND,
        "manifest_version": MANIFEST_VERSION,
        "score": score_name,
        "method": "random" if rule.random else prov.get("method"),
        "score_provenance": prov,
        "score_stale": stale,
        "checkpoints": prov.get("checkpoint_ids", prov.get("checkpoints")),
        "selection": selection
        | {
            "balance": balance,
            "seed": rule.seed,
            "query": query,
            "ties": "equal scores: smaller sample_id first",
            "nan": "never selected; counted in class sizes",
        },
        "fraction": fraction,
        "count": count,
        "requested": chosen.requested,
        "selected": len(chosen.sample_ids),
        "candidates": chosen.candidates,
        "nan_scores": chosen.nan_scores,
        "classes": chosen.classes,
        "shortfall": {
            "total": int(sum(chosen.shortfall.values())),
            "by_class": {("all" if k < 0 else str(k)): v for k, v in chosen.shortfall.items()},
        },
        "lake": {"lake_id": lake.lake_id, "path": str(lake.path.resolve())},
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cld_lake_version": __version__,
    }
    sealed = seal(table, metadata)
    return Manifest(table, sealed, None if out is None else write_manifest(out, table, sealed))


# --- streaming top-k: bounded memory over the scores table -------------------------------
# The default path for a stored score (``topk``, not random, no --query) once the table has
# ``stream_min_rows()`` rows: the same rows in the same order as :func:`select_rows`, with
# memory of about the selected rows instead of the whole table. Three passes stream the
# table ``SPAN_ROWS`` rows at a time (each column's checksum is checked the first time it is
# read): class sizes; per-class histograms of the ranking key over ``buckets`` quantile
# buckets of a sample; then only the rows that can still be selected (those below each
# class's boundary bucket, the boundary bucket itself) are kept and cut to each class's
# quota by the exact order (key, sample_id, row), pruning whenever the kept rows outgrow
# the quota by ``PRUNE_SLACK``. Buckets only decide how few rows are kept, never which
# rows win, so the result is exact for any data (ties, NaN, infinities included).
STREAM_ROWS_ENV = "CLD_LAKE_SELECT_STREAM_ROWS"
STREAM_MIN_ROWS = 2_000_000  # below this the table is read whole (faster, and small)
SPAN_ROWS = 1 << 20  # rows of the scores table read at a time
HIST_BUCKETS = 256  # per class; sized down when there are very many classes
HIST_CELLS = 1 << 22  # classes x buckets at most (32 MB of counts)
SAMPLE_ROW_GROUPS = 16  # row groups read to place the bucket edges
PRUNE_SLACK = 1 << 21  # rows kept beyond the quotas before the kept rows are cut back
TIE_BLOCK = 1 << 20  # tied rows ordered by id at a time
DENSE_LABELS = 1 << 20  # labels below this are counted with a lookup table, not a sort
_SIGN_BIT = np.int64(-(2**63))
_KEY_MAX = np.uint64(2**64 - 1)
_ID_MIN = np.iinfo(np.int64).min
_ID_MAX = np.iinfo(np.int64).max


def stream_min_rows() -> int:
    """Rows from which ``select`` streams the scores table: ``CLD_LAKE_SELECT_STREAM_ROWS``
    (0 = always) or ``STREAM_MIN_ROWS``."""
    raw = os.environ.get(STREAM_ROWS_ENV)
    if raw is None:
        return STREAM_MIN_ROWS
    try:
        rows = int(raw)
    except ValueError:
        rows = -1
    if rows < 0:
        raise BadInputError(
            f"{STREAM_ROWS_ENV}={raw!r}: must be an integer >= 0 (rows from which select "
            f"streams the scores table), e.g. {STREAM_MIN_ROWS}; or unset it"
        )
    return rows


def rank_keys(scores: np.ndarray, lowest: bool) -> np.ndarray:
    """Unsigned 64-bit keys in selection order: ascending key = higher score first
    (``lowest``: lower score first), as :func:`select_rows` sorts them.

    The IEEE bit pattern of the (negated) score, made order-preserving as unsigned: equal
    floats get equal keys (``-0.0`` is ``0.0``, as a float sort has them), so ties are exact.
    NaN scores get keys too; they are never selectable and callers mask them out.
    """
    value = np.asarray(scores, dtype=np.float64)
    value = np.add(value, 0.0) if lowest else np.negative(value)
    value += 0.0  # -0.0 becomes 0.0
    signed = value.view(np.int64)
    flip = np.right_shift(signed, 63)  # all ones for a negative value, else zero
    np.bitwise_or(flip, _SIGN_BIT, out=flip)
    np.bitwise_xor(signed, flip, out=signed)  # negative: every bit flipped; else the sign bit
    return signed.view(np.uint64)


class _ClassIndex:
    """Labels -> positions in ``classes`` (ascending): a lookup table for small labels."""

    def __init__(self, classes: np.ndarray) -> None:
        self.classes = classes
        self._lookup: np.ndarray | None = None
        if len(classes) and classes[0] >= 0 and classes[-1] < DENSE_LABELS:
            self._lookup = np.zeros(int(classes[-1]) + 1, dtype=np.int32)
            self._lookup[classes] = np.arange(len(classes), dtype=np.int32)

    def __call__(self, labels: np.ndarray) -> np.ndarray:
        lookup = self._lookup
        if lookup is not None and (
            not len(labels) or (labels.min() >= 0 and labels.max() < len(lookup))
        ):
            return lookup[labels]
        return np.searchsorted(self.classes, labels).astype(np.int32)


class _ScoresStream:
    """A scores table read ``span_rows`` rows (whole row groups) at a time; each column's
    checksum is computed the first time a pass reads it and compared at the end of that pass.

    ``pf`` is the lake's scores table as :mod:`cld_lake.lake.scores` opened it (its metadata
    checked), ``lake`` names it in errors; without ``lake`` (a bare Parquet file, as the tests
    write) no checksum is compared.
    """

    def __init__(
        self,
        pf: Any,
        lake: Lake | None = None,
        span_rows: int | None = None,
        check: bool = True,
    ) -> None:
        span_rows = SPAN_ROWS if span_rows is None else span_rows
        self.pf = pf
        self.lake = lake
        checked = lake is not None and check
        self.recorded = scores_table._recorded_checksums(pf) if checked else None
        self.checked: set[str] = set()
        self.spans: list[list[int]] = []
        rows = 0
        for g in range(pf.metadata.num_row_groups):
            if not self.spans or rows >= span_rows:
                self.spans.append([])
                rows = 0
            self.spans[-1].append(g)
            rows += pf.metadata.row_group(g).num_rows

    def read(self, span: list[int], columns: list[str]) -> Any:
        try:
            return self.pf.read_row_groups(span, columns=columns)
        except Exception as exc:
            if self.lake is None:
                raise
            path = scores_table.scores_path(self.lake)
            raise CorruptLakeError(
                f"{path}: unreadable ({scores_table._first_line(exc)}); {self.lake.fix}"
            ) from exc

    def passes(self, columns: list[str]) -> Any:
        """Yield each span of ``columns`` as NumPy arrays (name -> array; a null score is NaN)."""
        fresh = [c for c in columns if c not in self.checked] if self.recorded is not None else []
        sums = scores_table._ColumnChecksums(self.pf.schema_arrow, fresh) if fresh else None
        for span in self.spans:
            table = self.read(span, columns)
            if sums is not None:
                sums.update(table)
            yield {name: _column_array(table, name) for name in columns}
        if sums is not None:
            assert self.lake is not None and self.recorded is not None
            scores_table._compare_columns(self.lake, self.recorded, sums)
            self.checked.update(fresh)

    # the passes of stream_select (a _Cluster runs the same ones over its workers)
    @property
    def num_rows(self) -> int:
        return int(self.pf.metadata.num_rows)

    def class_counts(self) -> tuple[np.ndarray, np.ndarray]:
        return _count_classes(self)

    def edges(self, score: str, lowest: bool, buckets: int) -> np.ndarray:
        return _bucket_edges(self.sample_scores(score), lowest, buckets)

    def histogram(
        self, score: str, lowest: bool, classes: np.ndarray, single: bool, edges: np.ndarray
    ) -> np.ndarray:
        groups = 1 if single else len(classes)
        return _histograms(self, score, lowest, _group_of(classes, single), groups, edges)

    def keep(self, score: str, classes: np.ndarray, top: _TopRows) -> None:
        """Offer every row to ``top``, in table order."""
        index = _ClassIndex(classes)
        for part in self.passes(["sample_id", "label", score]):
            top.offer(index(part["label"]), part["sample_id"], part[score])

    def sample_scores(self, score: str) -> np.ndarray:
        """The ``score`` column of up to ``SAMPLE_ROW_GROUPS`` row groups spread over the table
        (used only to place bucket edges, so it is not checked)."""
        groups = self.pf.metadata.num_row_groups
        if groups == 0:
            return np.zeros(0)
        picks = np.unique(np.linspace(0, groups - 1, min(groups, SAMPLE_ROW_GROUPS)).round())
        table = self.read([int(g) for g in picks], [score])
        return _column_array(table, score)


def _group_of(classes: np.ndarray, single: bool) -> Any:
    """Labels -> histogram group: the class position, or 0 for everything (``none``)."""
    if single:
        return lambda labels: np.zeros(len(labels), np.int64)
    return _ClassIndex(classes)


def _column_array(table: Any, name: str) -> np.ndarray:
    column = table.column(name)
    if name == "sample_id" or name == "label":
        return column.to_numpy().astype(np.int64, copy=False)
    return column.to_numpy().astype(np.float64, copy=False)


def _count_classes(stream: _ScoresStream) -> tuple[np.ndarray, np.ndarray]:
    """Classes present (ascending) and their sizes, NaN scores included."""
    classes = np.zeros(0, dtype=np.int64)
    sizes = np.zeros(0, dtype=np.int64)
    for part in stream.passes(["label"]):
        classes, sizes = _merge_counts(classes, sizes, *_label_counts(part["label"]))
    return classes, sizes


def _label_counts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels present in ``labels`` (ascending) and how often each occurs."""
    if not len(labels):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if labels.min() >= 0 and labels.max() < DENSE_LABELS:
        counts = np.bincount(labels)
        found = np.flatnonzero(counts)
        return found, counts[found]
    return np.unique(labels, return_counts=True)


def _merge_counts(
    classes: np.ndarray, sizes: np.ndarray, found: np.ndarray, found_sizes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    merged, where = np.unique(np.r_[classes, found], return_inverse=True)
    total = np.zeros(len(merged), dtype=np.int64)
    np.add.at(total, where, np.r_[sizes, found_sizes])
    return merged, total


def _bucket_edges(sample: np.ndarray, lowest: bool, buckets: int) -> np.ndarray:
    """``buckets - 1`` (or fewer, distinct) key edges at the quantiles of a sample's keys."""
    keys = np.sort(rank_keys(sample[~np.isnan(sample)], lowest))
    if buckets <= 1 or not len(keys):
        return np.zeros(0, dtype=np.uint64)
    return np.unique(keys[(np.arange(1, buckets) * len(keys)) // buckets])


def _histograms(
    stream: _ScoresStream,
    score: str,
    lowest: bool,
    group_of: Any,
    groups: int,
    edges: np.ndarray,
) -> np.ndarray:
    """Per group: how many selectable rows fall in each bucket (``searchsorted`` of the key)."""
    hist = np.zeros((groups, len(edges) + 1), dtype=np.int64)
    for part in stream.passes(["label", score]):
        hist += _part_histogram(part["label"], part[score], lowest, group_of, groups, edges)
    return hist


def _part_histogram(
    labels: np.ndarray,
    values: np.ndarray,
    lowest: bool,
    group_of: Any,
    groups: int,
    edges: np.ndarray,
) -> np.ndarray:
    """The (groups x buckets) counts of one part's selectable rows."""
    buckets = len(edges) + 1
    ok = ~np.isnan(values)
    if not ok.all():
        values, labels = values[ok], labels[ok]
    cell = group_of(labels).astype(np.int64)
    cell *= buckets
    cell += np.searchsorted(edges, rank_keys(values, lowest), side="right")
    return np.bincount(cell, minlength=groups * buckets).reshape(groups, buckets)


def sorted_order(
    group: np.ndarray | None, values: np.ndarray, lowest: bool, ids: np.ndarray, groups: int
) -> np.ndarray:
    """``np.lexsort((ids, rank_keys(values, lowest), group))`` (``group`` None: one group) in
    less time and memory: a stable sort by key, a stable (radix, for < 65536 groups) sort by
    group, then only the runs of equal (group, key) are ordered by id; equal ids stay in row
    order."""
    key = rank_keys(values, lowest)
    order = np.argsort(key, kind="stable")
    if group is not None:
        small = group.astype(np.uint16) if groups <= 1 << 16 else group
        order = order[np.argsort(small[order], kind="stable")]
        del small
    sorted_key = key[order]
    del key
    tied = sorted_key[1:] == sorted_key[:-1]
    del sorted_key
    if group is not None:
        sorted_group = group[order]
        tied &= sorted_group[1:] == sorted_group[:-1]
        del sorted_group
    if tied.any():  # position p + 1 ties with position p
        small_index = np.int32 if len(order) < 2**31 else np.int64
        in_run = np.zeros(len(order), dtype=bool)
        in_run[:-1] = tied
        in_run[1:] |= tied
        members = np.flatnonzero(in_run).astype(small_index)
        del in_run
        run = np.zeros(len(order), dtype=small_index)
        np.cumsum(~tied, out=run[1:])  # the run each position belongs to
        del tied
        run = run[members]
        start = 0
        while start < len(members):  # whole runs, about TIE_BLOCK positions at a time
            stop = min(start + TIE_BLOCK, len(members))
            stop = int(np.searchsorted(run, run[stop - 1], side="right"))
            at = members[start:stop]
            rows = order[at]
            order[at] = rows[np.lexsort((ids[rows], run[start:stop]))]
            start = stop
    return order


class _TopRows:
    """The best ``take[g]`` rows of each group by (key, sample id, row), kept in bounded memory.

    Rows are offered in table order; a row passes when it is before its group's bound in
    (key, sample id) order (strictly: a later row with an equal pair loses, as in the stable
    sort of :func:`select_rows`). The kept rows live in preallocated arrays of ``take.sum() +
    PRUNE_SLACK`` rows; when they fill up, each group is cut back to ``take[g]`` rows (sorted)
    and a full group's bound tightens to its last kept row.
    """

    def __init__(
        self,
        take: np.ndarray,
        bound_key: np.ndarray,
        bound_id: np.ndarray,
        lowest: bool,
        single_group: bool,
        slack: int = PRUNE_SLACK,
    ) -> None:
        self.take = take
        self.bound_key = bound_key
        self.bound_id = bound_id
        self.lowest = lowest
        self.single = single_group
        capacity = int(take.sum()) + max(1, slack)
        self.cls = np.empty(capacity, dtype=np.int32)
        self.ids = np.empty(capacity, dtype=np.int64)
        self.scores = np.empty(capacity, dtype=np.float64)
        self.size = 0

    def passes(self, cls: np.ndarray, ids: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Positions of the rows that are selectable and before their group's bound."""
        key = rank_keys(values, self.lowest)
        if self.single:
            near = np.flatnonzero(key <= self.bound_key[0])  # a cheap superset first
            bound_key, bound_id = self.bound_key[0], self.bound_id[0]
        else:
            near = np.flatnonzero(key <= self.bound_key[cls])
            bound_key, bound_id = self.bound_key[cls[near]], self.bound_id[cls[near]]
        key = key[near]
        before = (key < bound_key) | ((key == bound_key) & (ids[near] < bound_id))
        before &= ~np.isnan(values[near])
        return near[before]

    def offer(self, cls: np.ndarray, ids: np.ndarray, values: np.ndarray) -> None:
        """Keep the rows of this part (in table order) that can still be selected."""
        keep = self.passes(cls, ids, values)
        cls, ids, values = cls[keep], ids[keep], values[keep]
        while len(ids):
            room = len(self.ids) - self.size
            if room == 0:  # cut back, then drop what the tightened bounds exclude
                self.prune()
                keep = self.passes(cls, ids, values)
                cls, ids, values = cls[keep], ids[keep], values[keep]
                continue
            n = min(room, len(ids))
            self.cls[self.size : self.size + n] = cls[:n]
            self.ids[self.size : self.size + n] = ids[:n]
            self.scores[self.size : self.size + n] = values[:n]
            self.size += n
            cls, ids, values = cls[n:], ids[n:], values[n:]

    def prune(self) -> None:
        """Cut each group back to its ``take`` best rows, sorted by (group, key, id, row)."""
        m = self.size
        cls, ids, values = self.cls[:m], self.ids[:m], self.scores[:m]
        groups = len(self.take)
        group = None if self.single else cls
        order = sorted_order(group, values, self.lowest, ids, groups)
        if group is None:
            order = order[: int(self.take[0])]
        else:
            sorted_group = group[order]
            starts = np.searchsorted(sorted_group, np.arange(groups))
            position = np.arange(m) - starts[sorted_group]
            order = order[position < self.take[sorted_group]]
            del sorted_group, position
        kept = len(order)
        self.cls[:kept] = cls[order]
        self.ids[:kept] = ids[order]
        self.scores[:kept] = values[order]
        self.size = kept
        del order
        # a group holding all it takes only admits rows before its last kept row
        if group is None:
            counts = np.array([kept])
        else:
            counts = np.bincount(self.cls[:kept], minlength=groups)
        ends = np.cumsum(counts) - 1
        full = np.flatnonzero((counts == self.take) & (counts > 0))
        last = ends[full]
        self.bound_key[full] = rank_keys(self.scores[last], self.lowest)
        self.bound_id[full] = self.ids[last]

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Class positions, ids and scores of the kept rows, by group, then key, id, row."""
        self.prune()
        m = self.size
        return self.cls[:m], self.ids[:m], self.scores[:m]


def stream_top_k(
    lake: Lake,
    score: str,
    *,
    fraction: float | None = None,
    count: int | None = None,
    balance: Balance = "proportional",
    lowest: bool = False,
) -> Chosen:
    """:func:`select_rows` (top-k, no seed) over stored score ``score``, streaming the scores
    table of ``lake``: the same rows in manifest order, in memory of about the selected rows.

    Size, balance, largest-remainder quotas, NaN counted in class sizes and never selected,
    ties by the smaller sample id (then row order), shortfall: all as :func:`select_rows`.
    """
    stream = _ScoresStream(scores_table._open_checked(lake), lake)
    return stream_select(
        stream, score, fraction=fraction, count=count, balance=balance, lowest=lowest
    )


def stream_select(
    source: Any,
    score: str,
    *,
    fraction: float | None = None,
    count: int | None = None,
    balance: Balance = "proportional",
    lowest: bool = False,
    buckets: int = HIST_BUCKETS,
    slack: int = PRUNE_SLACK,
) -> Chosen:
    """:func:`stream_top_k` over a :class:`_ScoresStream` (one process) or a :class:`_Cluster`
    (the same passes mapped over dask workers); ``buckets`` (histogram buckets per class) and
    ``slack`` (rows kept beyond the quotas before a cut) change only the work done, never the
    result (the tests shrink them to exercise every path)."""
    if balance not in BALANCES:
        raise BadInputError(f"--balance {balance!r}: use one of {', '.join(BALANCES)}")
    n = source.num_rows
    if n == 0:
        raise BadInputError("no candidate samples to select from")
    total = target_size(n, fraction, count)
    classes, sizes = source.class_counts()
    single = balance == "none"
    groups = 1 if single else len(classes)
    edges = source.edges(score, lowest, max(1, min(buckets, HIST_CELLS // groups)))
    hist = source.histogram(score, lowest, classes, single, edges)
    available = hist.sum(axis=1)
    quota = np.array([total]) if single else _quotas(sizes, classes, total, balance)
    take = np.minimum(quota, available)
    # the boundary bucket of each group: the first whose running count reaches its take
    boundary = (np.cumsum(hist, axis=1) < take[:, None]).sum(axis=1)
    del hist
    inside = boundary < len(edges)  # else the last bucket: no bound on the key
    bound_key = np.full(groups, _KEY_MAX, dtype=np.uint64)
    bound_key[inside] = edges[boundary[inside]]
    bound_id = np.where(inside, _ID_MIN, _ID_MAX).astype(np.int64)
    bound_key[take == 0] = 0
    bound_id[take == 0] = _ID_MIN
    top = _TopRows(take, bound_key, bound_id, lowest, single, slack)
    source.keep(score, classes, top)
    cls, ids, values = top.result()
    if single:  # the global top-k, listed by class (stable: rank order kept within a class)
        small = cls.astype(np.uint16) if len(classes) <= 1 << 16 else cls
        by_class = np.argsort(small, kind="stable")
        del small
        for column in (cls, ids, values):  # in place: one column's copy at a time
            column[:] = column[by_class]
        del by_class
    labels = classes[cls]
    short = quota - take
    if single:
        shortfall = {-1: int(short[0])} if short[0] > 0 else {}
    else:
        shortfall = {int(c): int(s) for c, s in zip(classes, short, strict=True) if s > 0}
    return Chosen(
        ids,
        labels,
        values,
        _ranks_within_class(labels),
        total,
        shortfall,
        candidates=n,
        nan_scores=n - int(available.sum()),
        classes=len(classes),
        in_order=True,
    )


# --- the same passes on a dask cluster ---------------------------------------------------
# Each task opens the lake's scores table itself (from the lake's path or URL) and returns
# per-span results: class counts, a (classes x buckets) histogram, or the span's rows that
# can still be selected, already cut to the quotas. The client holds what the local path
# holds (the kept rows, about the selected rows) and reads no rows itself; one more task
# checks every column's checksum, streaming, and the selection waits for it.
def _span_source(location: str, span: list[int] | None) -> _ScoresStream:
    """The scores table of the lake at ``location``, as one span (all row groups: None); its
    checksums are compared by :func:`_check_task` instead."""
    lake = Lake(location)
    stream = _ScoresStream(scores_table._open_checked(lake), lake, check=False)
    if span is not None:
        stream.spans = [span]
    return stream


def _counts_task(location: str, span: list[int]) -> tuple[np.ndarray, np.ndarray]:
    return _span_source(location, span).class_counts()


def _edges_task(location: str, score: str, lowest: bool, buckets: int) -> np.ndarray:
    return _span_source(location, None).edges(score, lowest, buckets)


def _histogram_task(
    location: str,
    span: list[int],
    score: str,
    lowest: bool,
    classes: np.ndarray,
    single: bool,
    edges: np.ndarray,
) -> np.ndarray:
    return _span_source(location, span).histogram(score, lowest, classes, single, edges)


def _keep_task(
    location: str,
    span: list[int],
    score: str,
    lowest: bool,
    classes: np.ndarray,
    single: bool,
    take: np.ndarray,
    bound_key: np.ndarray,
    bound_id: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The span's rows that pass the bounds, cut to each group's take, sorted."""
    source = _span_source(location, span)
    rows = int(source.pf.metadata.row_group(span[0]).num_rows) * len(span)
    top = _TopRows(take, bound_key.copy(), bound_id.copy(), lowest, single, slack=rows)
    source.keep(score, classes, top)
    cls, ids, values = top.result()
    return cls.copy(), ids.copy(), values.copy()


def _check_task(location: str) -> None:
    scores_table.check_scores_file(Lake(location))


class _Cluster:
    """The passes of :func:`stream_select` mapped over the spans of the scores table on a dask
    client; results come back span by span (the kept rows in table order)."""

    def __init__(self, client: Any, location: str, stream: _ScoresStream) -> None:
        self.client = client
        self.location = location
        self.spans = stream.spans
        self.num_rows = stream.num_rows
        self.checked = client.submit(_check_task, location, pure=False)

    def _each(self, fn: Any, *args: Any) -> Any:
        """Results of ``fn(location, span, *args)`` for every span, in span order, at most
        two per worker thread in flight."""
        from cld_lake.score._dask import _threads, in_row_order

        def task(span: list[int]) -> Any:
            return lambda client: client.submit(fn, self.location, span, *args, pure=False)

        window = 2 * _threads(self.client)
        return in_row_order(self.client, (task(span) for span in self.spans), window)

    def class_counts(self) -> tuple[np.ndarray, np.ndarray]:
        classes = np.zeros(0, dtype=np.int64)
        sizes = np.zeros(0, dtype=np.int64)
        for found, found_sizes in self._each(_counts_task):
            classes, sizes = _merge_counts(classes, sizes, found, found_sizes)
        return classes, sizes

    def edges(self, score: str, lowest: bool, buckets: int) -> np.ndarray:
        future = self.client.submit(_edges_task, self.location, score, lowest, buckets)
        return future.result()

    def histogram(
        self, score: str, lowest: bool, classes: np.ndarray, single: bool, edges: np.ndarray
    ) -> np.ndarray:
        hist = np.zeros((1 if single else len(classes), len(edges) + 1), dtype=np.int64)
        for part in self._each(_histogram_task, score, lowest, classes, single, edges):
            hist += part
        return hist

    def keep(self, score: str, classes: np.ndarray, top: _TopRows) -> None:
        args = (score, top.lowest, classes, top.single, top.take, top.bound_key, top.bound_id)
        for cls, ids, values in self._each(_keep_task, *args):
            top.offer(cls, ids, values)
        self.checked.result()  # a damaged table fails here, before any manifest is written


def stream_top_k_on_cluster(
    lake: Lake,
    score: str,
    *,
    fraction: float | None = None,
    count: int | None = None,
    balance: Balance = "proportional",
    lowest: bool = False,
    scheduler: str | None = None,
    n_workers: int | None = None,
) -> Chosen:
    """:func:`stream_top_k` with its passes run by dask workers: the scheduler at
    ``scheduler``, else the active ``distributed.Client``, else a ``LocalCluster`` for this
    call (as ``cld-lake score --engine dask``). The workers open the lake from its path or
    URL; the same rows come back as from one process."""
    from cld_lake.score._dask import _client

    stream = _ScoresStream(scores_table._open_checked(lake), lake)
    with _client(lake, scheduler, n_workers) as (client, location):
        cluster = _Cluster(client, location, stream)
        return stream_select(
            cluster, score, fraction=fraction, count=count, balance=balance, lowest=lowest
        )
