"""How well each stored score finds the flipped labels of a lake (the train split's ``noisy``
flag): whole columns up to ``exact_rows``, streamed past it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from cld_lake.diagnostics._detection import DetectionTally, suspicion
from cld_lake.diagnostics._ranks import auroc, precision_at
from cld_lake.diagnostics._read import (
    EXACT_ROWS,
    LakeLike,
    as_lake,
    check_stored,
    direction_of,
    flags_at,
    noisy_bits,
    score_column,
    scores_aligned,
)
from cld_lake.errors import BadInputError
from cld_lake.lake.scores import iter_scores, stored_scores
from cld_lake.lake.store import Lake, Split


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
    lake = as_lake(lake)
    train = lake.split("train")
    if train.num_samples > exact_rows:
        return _streamed_noise_detection(lake, train, scores)
    table = train.samples_table
    if "noisy" not in table.column_names:
        raise _no_noisy_flag(lake)
    flags = table.column("noisy").to_numpy(zero_copy_only=False).astype(bool)
    split_ids = train.sample_ids
    rows = []
    for name in scores if scores is not None else list(stored_scores(lake)):
        ids, _, values = score_column(lake, name)
        if np.array_equal(ids, split_ids):
            noisy = flags
        else:  # the scores table predates appended samples: match by id
            where = train.rows_of(ids)
            noisy = np.where(where >= 0, flags[np.maximum(where, 0)], False)
        direction = direction_of(lake, name)
        finite = ~np.isnan(values)
        suspect = suspicion(values, direction)[finite]
        positive = noisy[finite]
        k = int(positive.sum())
        rows.append(
            {
                "score": name,
                "direction": direction,
                "scored": int(finite.sum()),
                "null": int((~finite).sum()),
                "noisy": k,
                "auroc": auroc(suspect, positive),
                "precision_at_rate": precision_at(suspect, positive, k, ids[finite]),
                "noise_rate": float(k / finite.sum()) if finite.any() else float("nan"),
            }
        )
    return rows


def _streamed_noise_detection(
    lake: Lake, train: Split, scores: list[str] | None
) -> list[dict[str, Any]]:
    """:func:`noise_detection` past ``exact_rows``: noisy flags as bits, scores streamed."""
    bits = noisy_bits(train)
    if bits is None:
        raise _no_noisy_flag(lake)
    names = scores if scores is not None else list(stored_scores(lake))
    for name in names:
        check_stored(lake, name)
    if not names:
        return []
    aligned = scores_aligned(lake, train)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]:
        """``(ids, noisy, {name: values})`` per row group of the scores table."""
        start = 0
        for part in iter_scores(lake, names):
            ids = part.column("sample_id").to_numpy().astype(np.int64, copy=False)
            if aligned:
                noisy = flags_at(bits, np.arange(start, start + len(ids), dtype=np.int64))
            else:  # samples appended after scoring: by id; ids the split lacks are clean
                where = train.rows_of(ids)
                noisy = flags_at(bits, np.maximum(where, 0)) & (where >= 0)
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
    directions = {n: direction_of(lake, n) for n in names}
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


def _no_noisy_flag(lake: Lake) -> BadInputError:
    return BadInputError(
        f"{lake.root}: the train split's samples carry no 'noisy' flag; record it as "
        "metadata (e.g. train_proxy --noise 0.2) to measure noisy-label detection"
    )
