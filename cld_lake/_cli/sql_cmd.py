"""The sql command: DuckDB SQL over the lake's views."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("sql")
@click.argument("lake", type=click.Path(path_type=Path))
@click.argument("query")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the result to .parquet, .csv or .json (streamed; must be outside the lake).",
)
@click.option(
    "--max-rows",
    type=click.IntRange(min=1),
    default=40,
    show_default=True,
    help="Rows printed to the terminal (first and last half).",
)
@click.option(
    "--max-width",
    type=click.IntRange(min=4),
    default=32,
    show_default=True,
    help="Characters per printed cell.",
)
def sql_cmd(lake: Path, query: str, out: Path | None, max_rows: int, max_width: int) -> None:
    """Run DuckDB SQL over the lake's views.

    \b
    Views: samples, scores, checkpoints, losses (long form, streamed), val_reference.
    Filters on split, sample_id, label and checkpoint are pushed into the losses scan.
    Example: cld-lake sql LAKE "SELECT checkpoint, avg(loss) FROM losses WHERE split='train' GROUP BY 1"
    """
    from cld_lake import sql as lake_sql
    from cld_lake.lake import open_lake

    lk = open_lake(lake)
    if out is not None:
        rows = lake_sql.write_query(lk, query, out)
        click.echo(f"wrote {rows:,} rows to {out}")
        return
    click.echo(lake_sql.format_table(lk, query, max_rows=max_rows, max_width=max_width))


COMMANDS = [sql_cmd]
