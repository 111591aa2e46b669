"""The select command: class-balanced top-k (or CCS) of a stored score -> a manifest."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from cld_lake._cli._common import LAKE
from cld_lake._types import Balance, Strategy, choices

if TYPE_CHECKING:
    from cld_lake.storage import StorePath


@click.command("select")
@click.argument("lake", type=LAKE)
@click.option("--score", help="Stored score to rank by (a column of the scores view), e.g. cld.")
@click.option(
    "--fraction", type=float, help="Fraction of the candidate samples to keep, in (0, 1]."
)
@click.option("--count", type=int, help="Total number of rows to keep (>= 1).")
@click.option(
    "--balance",
    type=click.Choice(choices(Balance)),
    default="proportional",
    show_default=True,
    help="proportional: classes keep their share; equal: the same k per class; none: global top-k.",
)
@click.option(
    "--lowest", is_flag=True, help="Take the lowest scores (e.g. likely mislabeled samples)."
)
@click.option(
    "--random",
    "random_",
    is_flag=True,
    help="Seeded random selection with the same class balance (baseline).",
)
@click.option(
    "--strategy",
    type=click.Choice(choices(Strategy)),
    default="topk",
    show_default=True,
    help="topk: the best k per class; ccs: coverage-centric (prune the hardest, stratified draw).",
)
@click.option(
    "--ccs-prune",
    type=float,
    default=None,
    metavar="BETA",
    help="ccs: share in [0, 1) of each class's hardest samples never selected (default 0.1).",
)
@click.option(
    "--ccs-bins",
    type=int,
    default=None,
    metavar="K",
    help="ccs: number of equal-width score bins (default 50).",
)
@click.option(
    "--seed", type=int, default=None, help="Seed for --random or --strategy ccs (default 0)."
)
@click.option(
    "--query", help="SQL over the lake's views returning sample_id [, score]: the candidates."
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Manifest .parquet to write (outside the lake, or in LAKE/manifests/).",
)
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@click.option(
    "--dask",
    "dask_",
    is_flag=True,
    help="Top-k of a stored score: run the streaming passes on dask workers (the same rows); "
    "a LocalCluster unless --scheduler is given.",
)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    help="--dask: the address of a running dask scheduler (e.g. tcp://10.0.0.5:8786); its "
    "workers open LAKE themselves, so it must be a path or URL they reach.",
)
def select_cmd(
    lake: StorePath,
    score: str | None,
    fraction: float | None,
    count: int | None,
    balance: Balance,
    lowest: bool,
    random_: bool,
    strategy: Strategy,
    ccs_prune: float | None,
    ccs_bins: int | None,
    seed: int | None,
    query: str | None,
    out: Path,
    force: bool,
    dask_: bool,
    scheduler: str | None,
) -> None:
    """Select a class-balanced coreset and write its manifest (Parquet).

    \b
    Example: cld-lake select LAKE --score cld --fraction 0.1 --out coreset.parquet
    Baseline: cld-lake select LAKE --random --seed 1 --fraction 0.1 --out random.parquet
    CCS:      cld-lake select LAKE --score cld --strategy ccs --ccs-prune 0.2 --fraction 0.1 --out ccs.parquet
    Cluster:  cld-lake select s3://bucket/lake --score cld --fraction 0.1 --dask --scheduler tcp://HOST:8786 --out coreset.parquet

    The top-k of a stored score streams the scores table (memory of about the selected
    rows, not of all samples); the same rows with --dask.
    """
    from cld_lake._cli._common import warnings_as_lines
    from cld_lake.errors import BadInputError
    from cld_lake.lake import open_lake
    from cld_lake.select import select

    if seed is not None and not random_ and strategy != "ccs":
        raise BadInputError("--seed is used with --random or --strategy ccs only")
    lk = open_lake(lake)
    with warnings_as_lines():  # a stale score: one line on stderr, the selection goes on
        m = select(
            lk,
            score,
            fraction=fraction,
            count=count,
            balance=balance,
            lowest=lowest,
            random=random_,
            seed=seed,
            query=query,
            out=out,
            force=force,
            strategy=strategy,
            ccs_prune=ccs_prune,
            ccs_bins=ccs_bins,
            dask=dask_,
            scheduler=scheduler,
        )
    meta = m.metadata
    rule = meta["selection"]["rule"]
    what = f"score {meta['score']} ({rule})" if meta["score"] and rule != "random" else rule
    if rule == "ccs":
        ccs = meta["selection"]["ccs"]
        what += f", hardest {ccs['prune']:g} pruned, {ccs['bins']} bins, seed {meta['selection']['seed']}"
    click.echo(
        f"selected {len(m):,} of {meta['candidates']:,} samples, {len(m.class_counts())} "
        f"{'groups' if 'group_name' in m.table.column_names else 'classes'}, "
        f"balance {balance}, by {what} -> {out}"
    )
    short = meta["shortfall"]
    if short["total"]:
        worst = sorted(short["by_class"].items(), key=lambda kv: -kv[1])[:5]
        click.echo(
            f"shortfall: {short['total']:,} rows short of {meta['requested']:,} "
            f"(class: rows short {', '.join(f'{k}: {v}' for k, v in worst)}{', ...' if len(short['by_class']) > 5 else ''})",
            err=True,
        )
    if meta["nan_scores"]:
        click.echo(
            f"note: {meta['nan_scores']:,} samples with NaN scores were not selectable", err=True
        )


COMMANDS = [select_cmd]
