"""The benchmark scripts' argument parsing: a bad argument is one line on stderr and exit 2,
checked before any work starts (a path checked late ended in a traceback, e.g.
``bench_score --workdir MISSING``).

Each script builds its parser with :class:`ArgumentParser` and gives each path argument the
type that says what it must be: :func:`existing_dir` (exists), :func:`work_dir` (created if
missing), :func:`existing_lake` (an existing lake), :func:`lake_to_build` (reused, or built
there), :func:`output_file` (its directory exists), :func:`labelled_dir` (``LABEL=DIR``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from cld_lake.lake import ROOT_FILE


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors as one line (``PROG: error: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def existing_dir(text: str) -> Path:
    """An existing directory (where a benchmark makes its temporary directories)."""
    path = Path(text)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "no such directory"
        raise argparse.ArgumentTypeError(
            f"{text}: {what}; create it first, or leave the option out for a temporary one"
        )
    return path


def work_dir(text: str) -> Path:
    """A directory the benchmark creates when missing (never an existing file)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text}: is a file; give a directory (created if missing)"
        )
    return path


def existing_lake(text: str) -> Path:
    """An existing lake (a directory holding ``cld_lake.json``)."""
    path = existing_dir(text)
    if not (path / ROOT_FILE).is_file():
        raise argparse.ArgumentTypeError(
            f"{text}: not a cld_lake lake (no {ROOT_FILE}); give an existing lake"
        )
    return path


def lake_to_build(text: str) -> Path:
    """A lake to reuse, or a new path to build one at (its parent directory exists)."""
    path = Path(text)
    if path.exists():
        return existing_lake(text)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text}: no directory {path.parent} to build the lake in; create it first"
        )
    return path


def output_file(text: str) -> Path:
    """A file to write: its directory exists and it is not a directory."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a directory; give a file name")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no directory {path.parent}; create it first")
    return path


def labelled_dir(text: str) -> str:
    """``LABEL=DIR`` with an existing ``DIR`` (a source tree to run), returned as given."""
    label, sep, where = text.partition("=")
    if not sep or not label or not where:
        raise argparse.ArgumentTypeError(f"{text}: expected LABEL=DIR, e.g. before=../old")
    existing_dir(where)
    return text
