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
    help="An .html file, or a directory to hold report.html (outside the lake).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing report.")
def report_cmd(lake: Path, out: Path, force: bool) -> None:
    """Write a self-contained HTML report: splits, loss curves (per class, by CLD group), score
    distributions, data map, score correlations, noisy-label detection, CLD rank stability."""
    from cld_lake._cli._common import warnings_as_lines
    from cld_lake.lake import open_lake
    from cld_lake.report import build_report

    with warnings_as_lines():  # stale scores: one line each on stderr
        path = build_report(open_lake(lake), out, force=force)
    click.echo(f"wrote {path}")


COMMANDS = [report_cmd]
