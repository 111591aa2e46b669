"""``select()``, the public entry: checks the arguments, reads the candidates (or streams the
top-k of a stored score), applies the rule and writes the manifest through
:mod:`cld_lake.manifest`; warns about a stale score.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cld_lake._io import MANIFESTS_DIR, check_output_path
from cld_lake._types import Balance, Strategy
from cld_lake.errors import BadInputError
from cld_lake.lake import Lake, check_score_name
from cld_lake.lake import scores as scores_table
from cld_lake.lake.scores import score_direction
from cld_lake.manifest import (
    MANIFEST_KIND,
    MANIFEST_VERSION,
    Manifest,
    manifest_table,
    seal,
    with_group_names,
    write_manifest,
)
from cld_lake.select._candidates import candidates, stored_score
from cld_lake.select._dask import stream_top_k_on_cluster
from cld_lake.select._rules import (
    BALANCES,
    CCS_BINS,
    CCS_PRUNE,
    STRATEGIES,
    Chosen,
    ccs_rows,
    check_ccs_args,
    check_size_args,
    select_rows,
    target_size,
)
from cld_lake.select._stream import open_stream, stream_min_rows, stream_select


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
    if score is not None and score.lower() not in scores_table.RESERVED:
        check_score_name(score, "score")  # the table's own columns: stored_score lists scores
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
            lake.root,
            what="--out",
            suffixes=(".parquet",),
            allowed_dir=MANIFESTS_DIR,
            overwrite=force,
        )
        return _select(lake, score, fraction, count, balance, rule, query, path)
    except BaseException:
        if created is not None:  # a failed call leaves the lake as it was
            with contextlib.suppress(OSError):
                created.rmdir()
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


def _make_manifests_dir(out: Path, lake: Lake) -> Path | None:
    """Create ``LAKE/manifests/`` when ``out`` goes directly into it (a lake on the local disk:
    outputs are local files); the folder when it was created here."""
    manifests = (lake.root / MANIFESTS_DIR).local_path
    if manifests is None or manifests.exists():
        return None
    if out.expanduser().resolve().parent != manifests.resolve():
        return None
    manifests.mkdir()
    return manifests


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
        provenance = stored_score(lake, score)
        stream = open_stream(lake)
        n = stream.num_rows
        if rule.dask or n >= stream_min_rows():
            target_size(n, fraction, count, pool=pool)
            stale = _stale_warning(lake, score)
            size = {"fraction": fraction, "count": count, "balance": balance}
            if rule.dask:
                chosen = stream_top_k_on_cluster(
                    lake, score, lowest=rule.lowest, scheduler=rule.scheduler, **size
                )
            else:
                chosen = stream_select(stream, score, lowest=rule.lowest, **size)
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
    cand = candidates(lake, score, query, random=rule.random, strategy=rule.strategy)
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
    table = with_group_names(table, lake.group_names())
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
        "lake": {"lake_id": lake.lake_id, "path": str(lake.root.canonical())},
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cld_lake_version": __version__,
    }
    sealed = seal(table, metadata)
    return Manifest(table, sealed, None if out is None else write_manifest(out, table, sealed))
