"""The sql command: DuckDB SQL over the lake's views."""

from __future__ import annotations

from pathlib import Path

import click

from cld_lake._cli._common import fail


@click.command("sql")
@click.argument("lake", type=click.Path(path_type=Path))
@click.argument("query")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the result to .parquet, .csv or .json.")
@click.option("--max-rows", type=click.IntRange(min=1), default=40, show_default=True, help="Rows printed to the terminal.")
def sql_cmd(lake, query, out, max_rows):
    """Run DuckDB SQL over the lake's views (samples, checkpoints, losses, ...)."""
    import duckdb

    from cld_lake import sql as lake_sql
    from cld_lake.lake import open_lake

    lk = open_lake(lake)
    try:
        if out is not None:
            rows = lake_sql.write_query(lk, query, out)
            click.echo(f"wrote {rows} rows to {out}")
            return
        con = lake_sql.connect(lk)
        try:
            rel = con.sql(query)
            if rel is None:
                click.echo("ok")
                return
            rel.show(max_rows=max_rows)
        finally:
            con.close()
    except duckdb.Error as exc:
        fail(f"SQL: {str(exc).strip().splitlines()[0]}")


COMMANDS = [sql_cmd]
