"""The report command: a self-contained HTML report of a lake."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("report")
@click.argument("lake", type=click.Path(path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="An .html file, or a directory to hold report.html.",
)
def report_cmd(lake, out):
    """Write an HTML report: splits, loss curves, score distributions, noise detection."""
    from cld_lake.lake import open_lake
    from cld_lake.report import build_report

    path = build_report(open_lake(lake), out)
    click.echo(f"wrote {path}")


COMMANDS = [report_cmd]
