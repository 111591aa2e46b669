"""The report command: a self-contained HTML report of a lake."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from cld_lake._cli._common import LAKE

if TYPE_CHECKING:
    from cld_lake.storage import StorePath


@click.command("report")
@click.argument("lake", type=LAKE)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="An .html file, or a directory to hold report.html (outside the lake).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing report.")
@click.option(
    "--compare",
    type=click.Path(path_type=Path),
    default=None,
    help="The comparison harness's OUT directory or results.json: adds accuracy vs fraction.",
)
def report_cmd(lake: StorePath, out: Path, force: bool, compare: Path | None) -> None:
    """Write a self-contained HTML report: splits, loss curves (per class, by CLD group), score
    distributions, data map, score correlations, noisy-label detection, CLD rank stability,
    per-class share of CLD <= 0, coreset alignment, rank stability between runs."""
    from cld_lake._cli._common import warnings_as_lines
    from cld_lake.lake import open_lake
    from cld_lake.report import build_report

    with warnings_as_lines():  # stale scores: one line each on stderr
        path = build_report(open_lake(lake), out, force=force, compare=compare)
    click.echo(f"wrote {path}")


COMMANDS = [report_cmd]
