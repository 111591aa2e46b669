"""The sql command: DuckDB SQL over the lake's views, printed as a table or written to a file."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cld_lake._cli._common import LAKE

if TYPE_CHECKING:
    from cld_lake.storage import StorePath


class QueryCommand(click.Command):
    """A command whose QUERY argument may start with ``-`` (``"-- note\nSELECT 1"``): an
    argument that starts with ``-`` and holds whitespace is a query, never an option (no
    option name holds a space), so it is read as an argument. ``--`` before the query says
    the same explicitly."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" not in args:
            queries = [a for a in args if a.startswith("-") and any(c.isspace() for c in a)]
            if queries:
                args = [a for a in args if a not in queries] + ["--", *queries]
        return super().parse_args(ctx, args)


@click.command("sql", cls=QueryCommand)
@click.argument("lake", type=LAKE)
@click.argument("query")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the result to .parquet, .csv or .json (streamed; must be outside the lake).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing --out file.")
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
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Stop the query after this many seconds (exit 1). Default: no limit; Ctrl-C stops it.",
)
def sql_cmd(
    lake: StorePath,
    query: str,
    out: Path | None,
    force: bool,
    max_rows: int,
    max_width: int,
    timeout: float | None,
) -> None:
    """Run DuckDB SQL over the lake's views.

    \b
    Views: samples, train_samples, scores (one row per training sample, with its metadata),
    checkpoints, losses (long form, streamed), val_reference; a lake of named groups adds
    group_name to samples and scores.
    Filters on split, sample_id, label and checkpoint are pushed into the losses scan.
    Several statements run in order; the last one's result is printed.
    The query runs sandboxed: it cannot write into the lake, load extensions or change settings.
    Example: cld-lake sql LAKE "SELECT checkpoint, avg(loss) FROM losses WHERE split='train' GROUP BY 1"
    Example: cld-lake sql LAKE "SELECT noisy, avg(cld), count(*) FROM scores GROUP BY 1"
    A query that starts with '-' (a SQL comment) is read as the query; or put -- before it.
    """
    from cld_lake import sql as lake_sql
    from cld_lake.lake import open_lake

    lk = open_lake(lake)
    if out is not None:
        rows = lake_sql.write_query(lk, query, out, overwrite=force, timeout=timeout)
        click.echo(f"wrote {rows:,} rows to {out}")
        return
    results = lake_sql.iter_result(lk, query, timeout=timeout)
    try:
        click.echo(format_table(results, max_rows=max_rows, max_width=max_width))
    finally:
        results.close()


def format_table(results: Any, max_rows: int = 40, max_width: int = 32) -> str:
    """An aligned text table of a result (``iter_result``'s schema, then record batches).

    The first and last rows when there are more than ``max_rows``, cells cut at ``max_width``
    characters, and the row count; only the shown rows are held in memory.
    """
    head_n = max(1, (max_rows + 1) // 2)
    tail_n = max(0, max_rows - head_n)
    schema = next(results)
    if schema is None:
        return "ok"
    head: list[tuple[Any, ...]] = []
    tail: deque[tuple[Any, ...]] = deque(maxlen=tail_n or 1)
    total = 0
    for batch in results:
        cols = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
        for row in zip(*cols, strict=True) if cols else ([()] * batch.num_rows):
            if len(head) < head_n:
                head.append(row)
            elif tail_n:
                tail.append(row)
            total += 1
    names = list(schema.names)
    types = [str(t) for t in schema.types]
    body = [[_cell(v, max_width) for v in row] for row in head]
    tail_rows = [[_cell(v, max_width) for v in row] for row in (tail if tail_n else [])]
    shown = len(body) + len(tail_rows)
    widths = [
        max([len(n), len(t)] + [len(r[i]) for r in body + tail_rows])
        for i, (n, t) in enumerate(zip(names, types, strict=True))
    ]
    numeric = [t.startswith(("int", "uint", "float", "double", "decimal")) for t in types]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    lines = [line(names), line(types), "  ".join("-" * w for w in widths)]
    lines += [line(r) for r in body]
    if total > shown:
        lines.append("  ".join("…".center(w) for w in widths).rstrip())
    lines += [line(r) for r in tail_rows]
    noun = "row" if total == 1 else "rows"
    lines.append(f"({total:,} {noun}{f', {shown} shown' if total > shown else ''})")
    return "\n".join(lines)


def _number(value: float) -> str:
    """Six significant digits, but a large number (a Unix time such as ``wall_time``) in full
    rather than as ``1.79668e+09``."""
    text = f"{value:.6g}"
    if "e+" in text and abs(value) < 1e16:
        text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text


def _cell(value: Any, max_width: int) -> str:
    text = "NULL" if value is None else (_number(value) if isinstance(value, float) else str(value))
    text = " ".join(text.split()) if "\n" in text else text
    return text if len(text) <= max_width else text[: max_width - 1] + "…"


COMMANDS = [sql_cmd]
