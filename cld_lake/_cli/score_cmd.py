"""The score command: CLD for every training sample, stored as a column of the scores table."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from cld_lake._types import Engine, Fallback, choices
from cld_lake.score import ENGINES, METHODS

if TYPE_CHECKING:
    from rich.progress import Progress

    from cld_lake.lake import Lake

# Show a progress bar on a terminal only for runs big enough to take a moment.
PROGRESS_MIN_VALUES = 20_000_000


@click.command("score")
@click.argument("lake", type=click.Path(path_type=Path))
@click.option(
    "--method", type=click.Choice(METHODS), default="cld", show_default=True, help="Scoring method."
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="numpy",
    show_default=True,
    help="How rows stream through the formula (same scores from each).",
)
@click.option(
    "--checkpoints",
    "window",
    metavar="START:STOP[:STEP]",
    help="Window/stride over the positions of the checkpoints common to train and val, "
    "e.g. 0:45 or ::2 (default: all).",
)
@click.option("--name", help="Column name in the scores table (default: the method name).")
@click.option(
    "--fallback",
    type=click.Choice(choices(Fallback)),
    help="For classes without validation samples, use the global validation trajectory "
    "(rows are flagged) instead of failing.",
)
@click.option(
    "--block-rows", type=click.IntRange(min=1), help="Rows per block read (default: one chunk)."
)
def score_cmd(
    lake: Path,
    method: str,
    engine: Engine,
    window: str | None,
    name: str | None,
    fallback: Fallback | None,
    block_rows: int | None,
) -> None:
    """Score every training sample of LAKE and store the column NAME in LAKE/scores.parquet."""
    from cld_lake.lake import open_lake
    from cld_lake.score import compute_cld

    lk = open_lake(lake)
    with _progress(lk) as progress:
        result = compute_cld(
            lk,
            method=method,
            engine=engine,
            checkpoints=window,
            name=name,
            fallback=fallback,
            block_rows=block_rows,
            progress=progress,
            collect_ids=False,
            keep_scores=False,
        )
    p = result.provenance
    click.echo(
        f"scored {p['train_samples']:,} samples over checkpoints {p['checkpoints']} with {engine} "
        f"in {p['seconds']:.2f} s: nan={p['nan']} degenerate={p['degenerate']} fallback={p['fallback']} "
        f"val_left_out={p['val_left_out']}; stored as column {result.name!r} of {lk.path / 'scores.parquet'}"
    )


class _progress:
    """A rich progress bar on stderr when it is a terminal and the run is not tiny."""

    def __init__(self, lake: Lake) -> None:
        self.total = 0
        self.bar: Progress | None = None
        if not sys.stderr.isatty() or not lake.has_split("train"):
            return
        train = lake.split("train")
        if train.num_samples * train.num_checkpoints >= PROGRESS_MIN_VALUES:
            self.total = train.num_samples

    def __enter__(self) -> Callable[[int], None] | None:
        if not self.total:
            return None
        from rich.console import Console
        from rich.progress import Progress

        bar = self.bar = Progress(console=Console(stderr=True), transient=True)
        bar.start()
        task = bar.add_task("scoring", total=self.total)
        return lambda rows: bar.advance(task, rows)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


COMMANDS = [score_cmd]
