"""The export command: a split's trajectories to Parquet (wide, columns or long)."""

from __future__ import annotations

from pathlib import Path

import click

from cld_lake._cli._common import LAKE
from cld_lake._types import Layout, choices


@click.command("export")
@click.argument("lake", type=LAKE)
@click.option("--split", default="train", show_default=True, help="Split to export.")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Parquet file to write (outside the lake).",
)
@click.option(
    "--layout",
    type=click.Choice(choices(Layout)),
    default="wide",
    show_default=True,
    help="wide: one row per sample, a list per channel; columns: loss_<checkpoint> columns; long: one row per (sample, checkpoint).",
)
@click.option("--channels", help="Comma-separated channels to export (default: all stored).")
@click.option(
    "--checkpoints", help="Checkpoint window START:STOP[:STEP] over positions (default: all)."
)
@click.option(
    "--block-rows",
    type=click.IntRange(min=1),
    help="Samples per row group (default: the split's chunk rows).",
)
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def export_cmd(lake, split, out, layout, channels, checkpoints, block_rows, force):
    """Export trajectories to Parquet, streamed in row groups (bounded memory).

    \b
    Read back with: cld-lake import NEWLAKE --split train --loss FILE --labels FILE
    (wide and columns layouts carry sample ids and labels; a long file needs --labels).
    """
    from cld_lake.export import export_trajectories
    from cld_lake.lake import open_lake

    chans = [c.strip() for c in channels.split(",") if c.strip()] if channels else None
    res = export_trajectories(
        open_lake(lake),
        split,
        out,
        layout=layout,
        channels=chans,
        checkpoints=checkpoints,
        block_rows=block_rows,
        force=force,
    )
    click.echo(
        f"exported {res.samples:,} samples x {len(res.checkpoints)} checkpoints of [{split}] as {res.layout} "
        f"({res.rows:,} rows, {res.row_groups} row groups) to {out}"
    )


COMMANDS = [export_cmd]
