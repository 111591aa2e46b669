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
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from cld_lake._io import check_output_path
from cld_lake._types import Balance, choices
from cld_lake.errors import BadInputError, ScoringError
from cld_lake.lake import scores as scores_table
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
MANIFESTS_DIR = "manifests"


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


# --- reading candidates ------------------------------------------------------------------
def _score_candidates(lake: Lake, score: str) -> Candidates:
    """``sample_id, label`` and column ``score`` of the scores table with its provenance."""
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
    table = scores_table.read_scores(lake, [score])
    return Candidates(
        table.column("sample_id").to_numpy().astype(np.int64, copy=False),
        table.column("label").to_numpy().astype(np.int64, copy=False),
        table.column(score).to_numpy(zero_copy_only=False).astype(np.float64, copy=False),
        score,
        stored[score],
    )


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
) -> Manifest:
    """Select a class-balanced coreset and (optionally) write its manifest.

    Parameters
    ----------
    lake : Lake or path
    score : str, optional
        Name of a stored score (a column of the ``scores`` view). Higher = more useful (CLD:
        Pearson correlation in [-1, 1], NaN for samples with non-finite losses).
    fraction, count : exactly one
        ``fraction`` in (0, 1] of the candidates, or ``count`` >= 1 rows in total.
    balance : {"proportional", "equal", "none"}
    lowest : bool
        Take the lowest scores instead (e.g. to inspect likely mislabeled samples).
    random, seed : bool, int
        A seeded random selection with the same class balance (the baseline); ``seed``
        defaults to 0. With ``score`` the NaN-score samples are left out as for the coreset.
    query : str, optional
        SQL over the lake's views returning ``sample_id`` (and optionally ``score``): the
        candidates, e.g. to filter by metadata before ranking.
    out : path, optional
        Where to write the manifest (atomically): outside the lake, or in ``LAKE/manifests/``.
    force : bool
        Overwrite ``out`` if it exists (otherwise an existing file is an error).

    Returns
    -------
    Manifest
        Its metadata is what the file holds (checksum included). A stale score (its window
        now picks other checkpoints, e.g. after more were appended) is used with a
        ``UserWarning`` and the reason in ``metadata["score_stale"]``.
    """
    lake = lake if isinstance(lake, Lake) else Lake(lake)
    if balance not in BALANCES:
        raise BadInputError(f"--balance {balance!r}: use one of {', '.join(BALANCES)}")
    check_size_args(fraction, count)  # argument checks before any reading
    if random and lowest:
        raise BadInputError("--lowest has no meaning with --random; drop one of them")
    if out is None:
        return _select(lake, score, fraction, count, balance, lowest, random, seed, query, None)
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
        return _select(lake, score, fraction, count, balance, lowest, random, seed, query, path)
    except BaseException:
        if created:  # a failed call leaves the lake as it was
            with contextlib.suppress(OSError):
                (lake.path / MANIFESTS_DIR).rmdir()
        raise


def _make_manifests_dir(out: Path, lake: Lake) -> bool:
    """Create ``LAKE/manifests/`` when ``out`` goes directly into it; True if created here."""
    manifests = lake.path / MANIFESTS_DIR
    if out.expanduser().resolve().parent != manifests.resolve() or manifests.exists():
        return False
    manifests.mkdir()
    return True


def _select(
    lake: Lake,
    score: str | None,
    fraction: float | None,
    count: int | None,
    balance: Balance,
    lowest: bool,
    random: bool,
    seed: int | None,
    query: str | None,
    out: Path | None,
) -> Manifest:
    import datetime as dt

    from cld_lake._version import __version__

    if query is not None:
        cand = _query_candidates(lake, query, score, need_score=not random)
    elif score is not None:
        cand = _score_candidates(lake, score)
    elif random:
        cand = _train_candidates(lake)
    else:
        raise BadInputError("give --score NAME (a stored score), --random, or --query")
    pool = "rows of --query" if query is not None else "training samples"
    target_size(len(cand.sample_ids), fraction, count, pool=pool)
    stale = scores_table.stale_scores(lake).get(score) if score is not None else None
    if stale is not None:
        warnings.warn(f"--score {score}: {stale}", UserWarning, stacklevel=3)
    scored = cand.score_name is not None
    seed = (0 if seed is None else int(seed)) if random else None
    selectable = ~np.isnan(cand.scores) if scored else np.ones(len(cand.sample_ids), dtype=bool)
    picked = select_rows(
        cand.sample_ids,
        cand.labels,
        cand.scores,
        fraction=fraction,
        count=count,
        balance=balance,
        lowest=lowest,
        seed=seed,
        selectable=selectable,
    )
    rows = picked.rows
    table = manifest_table(
        cand.sample_ids[rows], cand.labels[rows], cand.scores[rows], picked.ranks
    )
    prov = cand.provenance
    metadata = {
        "kind": MANIFEST_KIND,
        "manifest_version": MANIFEST_VERSION,
        "score": cand.score_name,
        "method": "random" if random else prov.get("method"),
        "score_provenance": prov,
        "score_stale": stale,
        "checkpoints": prov.get("checkpoint_ids", prov.get("checkpoints")),
        "selection": {
            "rule": "random" if random else ("lowest" if lowest else "highest"),
            "balance": balance,
            "seed": seed,
            "query": query,
            "ties": "equal scores: smaller sample_id first",
            "nan": "never selected; counted in class sizes",
        },
        "fraction": fraction,
        "count": count,
        "requested": picked.requested,
        "selected": len(rows),
        "candidates": len(cand.sample_ids),
        "nan_scores": int((~selectable).sum()),
        "classes": len(np.unique(cand.labels)),
        "shortfall": {
            "total": int(sum(picked.shortfall.values())),
            "by_class": {("all" if k < 0 else str(k)): v for k, v in picked.shortfall.items()},
        },
        "lake": {"lake_id": lake.lake_id, "path": str(lake.path.resolve())},
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cld_lake_version": __version__,
    }
    sealed = seal(table, metadata)
    return Manifest(table, sealed, None if out is None else write_manifest(out, table, sealed))
