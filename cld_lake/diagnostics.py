"""Diagnostics over the stored scores: how a score behaves, not what it selects.

Pure functions over a lake (nothing is written), each returning plain rows (dicts) the CLI,
the report and the comparison harness print or plot:

- :func:`class_nonpositive_share`: per class, the share of scored samples with a score
  ``<= 0`` (for CLD: samples whose loss does not move with their class's validation loss).
- :func:`selection_alignment`: the mean score of a manifest's samples (the empirical
  alignment of a coreset) next to the mean over the whole train split.
- :func:`rank_stability`: Spearman's rank correlation between two stored scores (two CLD
  windows, two strides, two methods).
- :func:`noise_detection`: where the samples table carries a ``noisy`` flag, the AUROC and
  the precision at the noise rate of every stored score for finding the flipped labels, each
  score oriented by its direction (``higher_keep``: low = suspect).
- :func:`cld_windows`: stores CLD over the first half of the checkpoints and over every other
  checkpoint, to feed :func:`rank_stability`.

Bounded memory: :func:`class_nonpositive_share` and :func:`selection_alignment` stream the
scores table one row group at a time (the latter holds the manifest's ids). Up to
``exact_rows`` (:data:`EXACT_ROWS`, the report's limit) rows, :func:`noise_detection` and
:func:`rank_stability` read whole columns (exact); past it the first streams (noisy flags as
bits; AUROC within a reported bound, the rest exact) and the second takes rho over every
``s``-th row (reported). The N x T loss matrix is never read. Undefined (null) scores are left out of every statistic and
counted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from cld_lake.errors import BadInputError, CorruptLakeError, ScoringError
from cld_lake.lake.scores import (
    iter_scores,
    read_scores,
    score_direction,
    scores_path,
    stored_scores,
)
from cld_lake.lake.store import Lake, Split, open_lake
from cld_lake.manifest import Manifest, load_manifest

__all__ = [
    "auroc",
    "average_ranks",
    "class_nonpositive_share",
    "cld_windows",
    "noise_detection",
    "precision_at",
    "rank_stability",
    "selection_alignment",
    "spearman",
]

LakeLike = Lake | str | os.PathLike[str]
EXACT_ROWS = 2_000_000  # past this many rows, detection and rank stability stream (the report's)


# --- pure NumPy ------------------------------------------------------------------------------
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


# --- over a lake -------------------------------------------------------------------------------
def _lake(lake: LakeLike) -> Lake:
    return lake if isinstance(lake, Lake) else open_lake(lake)


def _check_stored(lake: Lake, score: str) -> None:
    stored = stored_scores(lake)
    if score not in stored:
        have = ", ".join(stored) or "none"
        raise ScoringError(
            f"score {score!r} is not stored in {lake.path} (stored: {have}); "
            f"compute it first: cld-lake score {lake.path} --method METHOD --name {score}"
        )


def _batches(lake: Lake, score: str, *, ids: bool = False) -> Iterator[tuple[np.ndarray, ...]]:
    """``(labels, values)`` (``(ids, labels, values)`` with ``ids``) of one stored score, one
    row group of the scores table at a time (its checksums checked after the last)."""
    for part in iter_scores(lake, [score]):
        labels = part.column("label").to_numpy().astype(np.int64, copy=False)
        values = part.column(score).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        if ids:
            yield part.column("sample_id").to_numpy().astype(np.int64, copy=False), labels, values
        else:
            yield labels, values


def _add_counts(counts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``counts`` plus the samples per label of ``labels``, grown as labels need."""
    part = np.bincount(labels, minlength=len(counts))
    part[: len(counts)] += counts
    return part


def _column(lake: Lake, score: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(sample_ids, labels, values)`` of one stored score (NaN where null)."""
    _check_stored(lake, score)
    table = read_scores(lake, [score])
    assert table is not None  # stored_scores found the file
    ids = table.column("sample_id").to_numpy().astype(np.int64, copy=False)
    labels = table.column("label").to_numpy().astype(np.int64, copy=False)
    values = table.column(score).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return ids, labels, values


def _direction(lake: Lake, score: str) -> str:
    return score_direction(stored_scores(lake).get(score, {}))


def class_nonpositive_share(lake: LakeLike, score: str = "cld") -> list[dict[str, Any]]:
    """Per class: the share of scored training samples whose ``score`` is ``<= 0``.

    Returns
    -------
    list of dict
        One row per class present, ascending label: ``label``, ``samples``, ``null`` (no
        score, left out), ``nonpositive`` (score ``<= 0``) and ``share`` (``nonpositive`` /
        scored samples; NaN when none is scored).
    """
    lake = _lake(lake)
    _check_stored(lake, score)
    samples, scored, nonpos = (np.zeros(0, np.int64) for _ in range(3))
    for labels, values in _batches(lake, score):  # one row group at a time: bounded memory
        finite = ~np.isnan(values)
        nonpositive = finite & (np.nan_to_num(values, nan=1.0) <= 0)
        samples = _add_counts(samples, labels)
        scored = _add_counts(scored, labels[finite])
        nonpos = _add_counts(nonpos, labels[nonpositive])
    size = len(samples)
    scored, nonpos = (np.pad(c, (0, size - len(c))) for c in (scored, nonpos))
    return [
        {
            "label": int(c),
            "samples": int(samples[c]),
            "null": int(samples[c] - scored[c]),
            "nonpositive": int(nonpos[c]),
            "share": float(nonpos[c] / scored[c]) if scored[c] else float("nan"),
        }
        for c in np.flatnonzero(samples)
    ]


def selection_alignment(
    lake: LakeLike, manifest: str | os.PathLike[str] | Manifest, score: str = "cld"
) -> dict[str, Any]:
    """The mean ``score`` of a manifest's samples: the empirical alignment of a coreset.

    Returns
    -------
    dict
        ``score``, ``selected`` (manifest rows), ``null`` (selected samples without a score,
        left out of the mean), ``mean`` (over the selected, scored samples), ``pool_mean``
        (over every scored training sample, for comparison) and ``direction``.

    Raises
    ------
    BadInputError
        The manifest names samples the scores table does not hold (another lake?).
    """
    lake = _lake(lake)
    _check_stored(lake, score)
    m = load_manifest(manifest)
    # the scores table is streamed past the manifest's sorted ids: memory is the manifest's
    order = np.argsort(m.sample_ids, kind="stable")
    wanted = m.sample_ids[order]
    found = np.zeros(len(wanted), bool)
    chosen_sum, chosen_n, pool_sum, pool_n = 0.0, 0, 0.0, 0
    for ids, _, values in _batches(lake, score, ids=True):
        finite = ~np.isnan(values)
        pool_sum += float(values[finite].sum())
        pool_n += int(finite.sum())
        pos = np.minimum(np.searchsorted(wanted, ids), max(len(wanted) - 1, 0))
        hit = wanted[pos] == ids if len(wanted) else np.zeros(len(ids), bool)
        found[pos[hit]] = True
        chosen_sum += float(values[hit & finite].sum())
        chosen_n += int((hit & finite).sum())
    if not found.all():
        missing = np.zeros(len(m), bool)
        missing[order[~found]] = True  # back in manifest order, for the examples
        raise BadInputError(
            f"the manifest holds {int(missing.sum())} sample ids (e.g. "
            f"{m.sample_ids[missing][:5].tolist()}) that {lake.path} has no score for; "
            "pass the lake it was selected from"
        )
    return {
        "score": score,
        "selected": len(m),
        "null": len(m) - chosen_n,
        "mean": chosen_sum / chosen_n if chosen_n else float("nan"),
        "pool_mean": pool_sum / pool_n if pool_n else float("nan"),
        "direction": _direction(lake, score),
    }


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
    lake = _lake(lake)
    rows = _scores_rows(lake, [a, b])
    if rows > exact_rows:
        return _sampled_rank_stability(lake, a, b, rows, exact_rows)
    ids_a, _, va = _column(lake, a)
    ids_b, _, vb = _column(lake, b)
    if not np.array_equal(ids_a, ids_b):  # one table: cannot differ, checked all the same
        raise ScoringError(f"{a} and {b} hold different samples; recompute one of them")
    rho, pairs = spearman(va, vb)
    return {"a": a, "b": b, "spearman": rho, "pairs": pairs}


def _scores_rows(lake: Lake, names: list[str]) -> int:
    """Rows of the scores table (from its footer), after checking ``names`` are stored."""
    from cld_lake._io import parquet_file
    from cld_lake.lake.scores import scores_path

    for name in names:
        _check_stored(lake, name)
    return int(parquet_file(scores_path(lake)).metadata.num_rows)


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


def noise_detection(
    lake: LakeLike, scores: list[str] | None = None, *, exact_rows: int = EXACT_ROWS
) -> list[dict[str, Any]]:
    """How well each stored score finds the flipped labels (the train split's ``noisy`` flag).

    Every score is oriented by its direction: for ``higher_keep`` scores a low value is
    suspect, for ``higher_harder`` a high one. Null scores are left out (counted in
    ``null``). ``precision_at_rate`` is the share of flipped labels among the ``k`` most
    suspect scored samples, ``k`` the number of flipped labels among them (the noise rate);
    ties go to the smaller sample id. AUROC ties count one half (average ranks).

    Returns
    -------
    list of dict
        One row per score (``scores``, default every stored score, in column order):
        ``score``, ``direction``, ``scored``, ``null``, ``noisy``, ``auroc``,
        ``precision_at_rate``, ``noise_rate``.

    Raises
    ------
    BadInputError
        The train split's samples table has no ``noisy`` column.
    """
    lake = _lake(lake)
    train = lake.split("train")
    if train.num_samples > exact_rows:
        return _streamed_noise_detection(lake, train, scores)
    table = train.samples_table
    if "noisy" not in table.column_names:
        raise BadInputError(
            f"{lake.path}: the train split's samples carry no 'noisy' flag; record it as "
            "metadata (e.g. train_proxy --noise 0.2) to measure noisy-label detection"
        )
    flags = table.column("noisy").to_numpy(zero_copy_only=False).astype(bool)
    split_ids = train.sample_ids
    rows = []
    for name in scores if scores is not None else list(stored_scores(lake)):
        ids, _, values = _column(lake, name)
        if np.array_equal(ids, split_ids):
            noisy = flags
        else:  # the scores table predates appended samples: match by id
            where = train.rows_of(ids)
            noisy = np.where(where >= 0, flags[np.maximum(where, 0)], False)
        direction = _direction(lake, name)
        finite = ~np.isnan(values)
        suspicion = (values if direction == "higher_harder" else -values)[finite]
        positive = noisy[finite]
        k = int(positive.sum())
        rows.append(
            {
                "score": name,
                "direction": direction,
                "scored": int(finite.sum()),
                "null": int((~finite).sum()),
                "noisy": k,
                "auroc": auroc(suspicion, positive),
                "precision_at_rate": precision_at(suspicion, positive, k, ids[finite]),
                "noise_rate": float(k / finite.sum()) if finite.any() else float("nan"),
            }
        )
    return rows


def _streamed_noise_detection(
    lake: Lake, train: Any, scores: list[str] | None
) -> list[dict[str, Any]]:
    """:func:`noise_detection` past ``exact_rows``: noisy flags as bits, scores streamed."""
    from cld_lake.report._stats import DetectionTally

    bits = noisy_bits(train)
    if bits is None:
        raise BadInputError(
            f"{lake.path}: the train split's samples carry no 'noisy' flag; record it as "
            "metadata (e.g. train_proxy --noise 0.2) to measure noisy-label detection"
        )
    names = scores if scores is not None else list(stored_scores(lake))
    for name in names:
        _check_stored(lake, name)
    if not names:
        return []
    aligned = scores_aligned(lake, train)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
        """``(ids, noisy, {name: values})`` per row group of the scores table."""
        start = 0
        for part in iter_scores(lake, names):
            ids = part.column("sample_id").to_numpy().astype(np.int64, copy=False)
            if aligned:
                noisy = _bits_at(bits, np.arange(start, start + len(ids), dtype=np.int64))
            else:  # samples appended after scoring: by id; ids the split lacks are clean
                where = train.rows_of(ids)
                noisy = _bits_at(bits, np.maximum(where, 0)) & (where >= 0)
            values = {
                n: part.column(n).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
                for n in names
            }
            start += len(ids)
            yield ids, noisy, values

    # pass 1: each score's finite range, null and infinite counts, whether ids increase
    lo = dict.fromkeys(names, np.inf)
    hi = dict.fromkeys(names, -np.inf)
    nulls, infinite = dict.fromkeys(names, 0), dict.fromkeys(names, 0)
    rows, increasing, last_id = 0, True, None
    for ids, _, values in batches():
        rows += len(ids)
        if len(ids):
            increasing &= bool(np.all(np.diff(ids) > 0)) and (last_id is None or ids[0] > last_id)
            last_id = ids[-1]
        for n, v in values.items():
            finite = np.isfinite(v)
            nulls[n] += int(np.isnan(v).sum())
            infinite[n] += int(len(v) - finite.sum() - np.isnan(v).sum())
            if finite.any():
                lo[n], hi[n] = (
                    min(lo[n], float(v[finite].min())),
                    max(hi[n], float(v[finite].max())),
                )
    directions = {n: _direction(lake, n) for n in names}
    tallies = {n: DetectionTally(lo[n], hi[n], directions[n], fractions=()) for n in names}
    for _, noisy, values in batches():  # pass 2: the histograms
        for n, v in values.items():
            tallies[n].add(v, noisy)
    if any(t.cuts() for t in tallies.values()):
        for _, noisy, values in batches():  # pass 3: the bins where the top-k cut falls
            for n, v in values.items():
                tallies[n].add_cut(v, noisy)
    out = []
    for n in names:
        found, _ = tallies[n].result()
        scored = rows - nulls[n]
        k, finite_n = int(found["noisy"]), int(found["n"])
        precision = found["precision_at_noise_rate"]
        if k and k == finite_n:  # only noisy labels: every top-k sample is one
            precision = 1.0
        row: dict[str, Any] = {
            "score": n,
            "direction": directions[n],
            "scored": scored,
            "null": nulls[n],
            "noisy": k,
            "auroc": float(found["auroc"]),
            "precision_at_rate": float(precision),
            "noise_rate": float(k / scored) if scored else float("nan"),
            "streamed": True,
            "auroc_bound": float(found["auroc_bound"]),
            "approximate": list(found["approximate"]),
            "infinite": infinite[n],
        }
        if not increasing:
            row["ties"] = "row order"
        out.append(row)
    return out


def _bits_at(bits: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Flags of ``rows`` from ``np.packbits`` bits."""
    return ((bits[rows >> 3] >> (7 - (rows & 7)).astype(np.uint8)) & 1).astype(bool)


def cld_windows(
    lake: LakeLike, *, first_half: str = "cld_first_half", stride2: str = "cld_stride2"
) -> tuple[str, str]:
    """Store CLD over the first half of the checkpoints (``0:K//2``) and over every other one
    (``::2``) as columns ``first_half`` and ``stride2``; returns their names.

    Compare each with the full-window ``cld`` through :func:`rank_stability`. Needs at least
    6 common checkpoints (CLD needs 3 per window).
    """
    from cld_lake.score import score  # scoring is a layer above; loaded on use

    lake = _lake(lake)
    k = len(np.intersect1d(lake.split("train").checkpoint_ids, lake.split("val").checkpoint_ids))
    if k < 6:
        raise BadInputError(
            f"{lake.path}: {k} checkpoints common to train and val; the window diagnostics "
            "need at least 6 (3 per half)"
        )
    score(lake, checkpoints=f"0:{k // 2}", name=first_half)
    score(lake, checkpoints="::2", name=stride2)
    return first_half, stride2


def noisy_bits(train: Split) -> np.ndarray | None:
    """The train split's ``noisy`` flags packed as bits (``np.packbits`` order; null = False),
    streamed one row group of the samples table at a time and, in a checksummed lake, checked
    as a whole read is (row-group sizes and CRCs against the commit record, the file's
    checksum); None when the samples carry no flag."""
    from cld_lake._io import parquet_file
    from cld_lake._meta import WholeTableChecksum, read_meta, streamed_checksum_problem
    from cld_lake.lake._format import SAMPLES_FILE
    from cld_lake.lake.store import check_sample_group, sample_groups

    path, fix = train.path / SAMPLES_FILE, train.lake.fix
    try:
        pf = parquet_file(path)
        sizes = [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)]
        # the schema (and JSON) of a whole read: a row group's, not the embedded Arrow schema
        first = pf.read_row_group(0) if sizes else pf.read()
    except Exception as exc:
        raise CorruptLakeError(f"{path} cannot be decoded ({exc}); {fix}") from exc
    if "noisy" not in first.schema.names:
        return None
    checked = train.lake.checksummed
    if checked and sizes != [rows for rows, _ in sample_groups(train.meta)]:
        raise CorruptLakeError(f"{path}: row groups differ from the commit record's; {fix}")
    whole = WholeTableChecksum(first.schema) if checked else None
    meta = read_meta(first.schema)
    packed: list[np.ndarray] = []
    rest = np.zeros(0, bool)
    for g in range(len(sizes)):
        try:
            part = first if g == 0 else pf.read_row_group(g)
        except Exception as exc:
            raise CorruptLakeError(f"{path} cannot be decoded ({exc}); {fix}") from exc
        if whole is not None:
            check_sample_group(train, g, part)
            whole.update(part)
        flags = part.column("noisy").fill_null(False).to_numpy(zero_copy_only=False)
        flags = np.concatenate([rest, flags.astype(bool)])
        whole_bytes = len(flags) // 8 * 8
        packed.append(np.packbits(flags[:whole_bytes]))
        rest = flags[whole_bytes:]
        del part
    del first
    packed.append(np.packbits(rest))
    if sum(sizes) != train.num_samples:
        raise CorruptLakeError(
            f"{path} has {sum(sizes)} rows, the split {train.num_samples}; {fix}"
        )
    if whole is not None:
        problem = streamed_checksum_problem(meta, whole)
        if problem is not None:
            raise CorruptLakeError(f"{path} fails its checksum ({problem}); {fix}")
    return np.concatenate(packed)


def scores_aligned(lake: Lake, train: Split) -> bool:
    """Is row i of the scores table train row i? O(1) when both carry the fingerprint of the
    ids recorded at the split's creation; otherwise the ids are compared row group by row
    group (the split's id column is never loaded whole)."""
    from cld_lake._io import parquet_file
    from cld_lake._meta import read_meta

    pf = parquet_file(scores_path(lake))
    if pf.metadata.num_rows != train.num_samples:
        return False
    recorded = read_meta(pf.schema_arrow).get("rows", {}).get("ids_sha1")
    if recorded is not None and train.ids_digest is not None:
        return bool(recorded == train.ids_digest)
    start = 0
    for part in iter_scores(lake, []):
        ids = part.column("sample_id").to_numpy()
        mine, _ = train.sample_rows(start, start + len(ids))
        if not np.array_equal(mine, ids):
            return False
        start += len(ids)
    return True
