"""The ``cld-lake`` command line: a thin layer over the Python API.

Each stage owns one module here (``lake_cmds``, ``score_cmd``, ...) that defines click
commands calling public functions. Heavy libraries load inside the commands, so
``cld-lake --help`` is quick.
"""

from __future__ import annotations

import sys

import click

from cld_lake._cli import (
    export_cmd,
    lake_cmds,
    report_cmd,
    score_cmd,
    select_cmd,
    sql_cmd,
)
from cld_lake._cli._common import Group, run_main
from cld_lake._version import __version__


@click.group(
    cls=Group,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="cld-lake")
def cli() -> None:
    """cld-lake: record loss trajectories, score samples by CLD, query and export coresets."""


# An example line for the --help of each command whose text has none of its own.
EXAMPLES = {
    "import": "cld-lake import LAKE --split train --loss loss.npy --labels labels.npy",
    "info": "cld-lake info LAKE --json",
    "verify": "cld-lake verify LAKE --quick",
    "compact": "cld-lake compact LAKE --prune",
    "env": "cld-lake env",
    "score": "cld-lake score LAKE --method forgetting",
    "export": "cld-lake export LAKE --split val --layout long --out val_long.parquet",
    "report": "cld-lake report LAKE --out report/",
}

for _stage in (lake_cmds, sql_cmd, score_cmd, select_cmd, export_cmd, report_cmd):
    for _command in _stage.COMMANDS:
        if "Example:" not in (_command.help or "") and _command.name in EXAMPLES:
            _command.epilog = f"\b\nExample: {EXAMPLES[_command.name]}"
        cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_main(cli, argv))
