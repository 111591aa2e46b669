"""One line for every failure that is not a :class:`~cld_lake.errors.CldLakeError`.

``run_main`` hands any other exception to :func:`failure_line`, which names what went wrong
and what to do, never a traceback (``CLD_LAKE_DEBUG=1`` prints it too). Exit codes: 2 for a
bad path the user gave (not a directory, no such file), 1 for a failure of the environment
(disk full, permission denied, out of memory, an unreadable lake file) or of the tool itself.

Only the standard library is imported here: pyarrow and DuckDB errors are recognised through
``sys.modules`` (an error of a library that was never imported cannot have been raised), so
``cld-lake --help`` stays fast.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import FrameType, TracebackType

import click

DEBUG_ENV = "CLD_LAKE_DEBUG"
MAX_DETAIL = 300

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_NO_ACCESS = {errno.EACCES, errno.EPERM, errno.EROFS}
# A path the user typed is wrong: bad input (exit 2), not a failure of the machine.
_BAD_PATH = {
    errno.ENOTDIR: "a parent of it is not a directory; choose another path",
    errno.EISDIR: "is a directory; give a file",
    errno.ENOENT: "no such file or directory; check the path",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
    errno.EEXIST: "already exists; choose another path",
}


def failure_line(exc: BaseException, cli: click.Group, argv: list[str] | None) -> tuple[str, int]:
    """The one stderr line and the exit code for ``exc``, raised by ``cld-lake argv``."""
    if os.environ.get(DEBUG_ENV) == "1":
        traceback.print_exception(exc, file=sys.stderr)
    args = list(sys.argv[1:] if argv is None else argv)
    lake = _lake_argument(cli, args)
    if isinstance(exc, MemoryError):
        command = f"cld-lake {args[0]}" if args else "cld-lake"
        why = f" ({detail(exc)})" if str(exc) else ""
        return (
            f"cld-lake: error: out of memory while running {command}{why}; "
            "free memory or pass a smaller --block-rows where the command has it",
            1,
        )
    if isinstance(exc, OSError) and _is_disk_full(exc):
        where = _shown_path(_named_path(exc)) or lake or "the output"
        return (
            f"cld-lake: error: {where}: disk full (No space left on device); free space and "
            "run again; nothing committed was lost",
            1,
        )
    if isinstance(exc, OSError) and exc.errno in _NO_ACCESS:
        where = _shown_path(_named_path(exc)) or lake or "a file"
        reason = "read-only file system" if exc.errno == errno.EROFS else "permission denied"
        return (
            f"cld-lake: error: {where}: {reason}; choose a directory you can write "
            "(or fix the permissions)",
            1,
        )
    damaged = _damaged_lake_file(exc, lake)
    if damaged is not None:
        return (
            f"cld-lake: error: {lake}: a lake file is unreadable "
            f"({f'{damaged}: ' if damaged else ''}{detail(exc)}); "
            f"run cld-lake verify {lake}",
            1,
        )
    named = _named_path(exc)
    if isinstance(exc, OSError) and exc.errno in _BAD_PATH and named is not None:
        return f"cld-lake: error: {_shown_path(named)}: {_BAD_PATH[exc.errno]}", 2
    if isinstance(exc, OSError) and named is not None:
        return f"cld-lake: error: {_shown_path(named)}: {detail(exc)}", 1
    return (
        f"cld-lake: internal error: {type(exc).__name__}: {detail(exc)} "
        "(please report it with `cld-lake env`)",
        1,
    )


def detail(exc: BaseException) -> str:
    """The first meaningful line of an exception's message, at most ``MAX_DETAIL`` characters.

    A message that embeds a Python traceback (DuckDB's "Python exception: Traceback ...")
    becomes its lead text plus the traceback's final ``Type: message`` line.
    """
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    if isinstance(exc, KeyError) and exc.args:
        text = repr(exc.args[0])
    head, marker, tail = text.partition("Traceback (most recent call last):")
    lines = [line.strip() for line in head.splitlines() if line.strip()]
    line = lines[0] if lines else ""
    if marker:
        last = [t.strip() for t in tail.splitlines() if t.strip() and not t.startswith(" ")]
        line = f"{line.rstrip(': ')}: {last[-1]}" if last else line.rstrip(": ")
    line = " ".join(line.split()) or type(exc).__name__
    return line if len(line) <= MAX_DETAIL else line[: MAX_DETAIL - 3] + "..."


def _is_disk_full(exc: OSError) -> bool:
    # pyarrow raises OSError without an errno; its message carries the C library's text.
    return exc.errno in _DISK_FULL or os.strerror(errno.ENOSPC) in str(exc)


def _named_path(exc: BaseException) -> object:
    """The file an exception names: ``filename``, else the first quoted path in its message
    (pyarrow's "Failed to open local file 'PATH'")."""
    filename = getattr(exc, "filename", None)
    if filename is not None:
        return filename
    for quoted in re.findall(r"'([^'\n]+)'", str(exc)):
        if os.sep in quoted:
            return quoted
    return None


def _shown_path(filename: object) -> str | None:
    """The path to show: a hidden temp file ``.NAME.tmp-*`` (deleted by now) as ``NAME``."""
    if filename is None:
        return None
    path = Path(os.fsdecode(filename)) if isinstance(filename, str | bytes | os.PathLike) else None
    if path is None:
        return str(filename)
    match = re.fullmatch(r"\.(.+)\.tmp-[^/]*", path.name)
    return str(path.with_name(match.group(1)) if match else path)


def _lake_argument(cli: click.Group, args: list[str]) -> str | None:
    """The ``LAKE`` argument of the failed command, parsed again by click (never raises)."""
    if not args:
        return None
    try:
        command = cli.get_command(click.Context(cli), args[0])
        if command is None:
            return None
        ctx = command.make_context(args[0], args[1:], resilient_parsing=True)
        lake = ctx.params.get("lake")
    except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
        return None
    return str(lake) if lake is not None else None


def _read_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions a damaged file raises while it is decoded."""
    types: list[type[BaseException]] = [OSError, EOFError, ValueError, json.JSONDecodeError]
    arrow = sys.modules.get("pyarrow.lib")
    if arrow is not None:
        types.append(arrow.ArrowException)
    duck = sys.modules.get("duckdb")
    if duck is not None:
        types.append(duck.Error)
    zarr_errors = sys.modules.get("zarr.errors")
    if zarr_errors is not None and hasattr(zarr_errors, "BaseZarrError"):
        types.append(zarr_errors.BaseZarrError)
    return tuple(types)


def _damaged_lake_file(exc: BaseException, lake: str | None) -> str | None:
    """Where in the lake reading raised ``exc``: a file (relative to the lake), ``in DIR``,
    ``""`` (somewhere: the lake's reader raised it), or None (not a lake read failure).

    The file is the one the exception names, else the innermost local variable of the
    traceback that names an existing file or directory inside the lake (readers keep the
    path they open, or an object with a ``path``, in a local).
    """
    if lake is None or not isinstance(exc, _read_error_types()):
        return None
    root = Path(lake).expanduser()
    if not (root / "cld_lake.json").is_file():
        return None
    root = root.resolve()
    named = _resolved(_named_path(exc))
    if named is not None:  # the exception names its file (which may be missing)
        return str(named.relative_to(root)) if named.is_relative_to(root) else None
    folder = None
    for candidate in _traceback_paths(exc.__traceback__):
        path = _resolved(candidate)
        if path is None or path == root or not path.exists():
            continue
        if path.is_file():
            return str(path.relative_to(root)) if path.is_relative_to(root) else None
        if folder is None and path.is_relative_to(root):
            folder = f"in {path.relative_to(root)}"
    if folder is not None:
        return folder
    return "" if _raised_by_lake_reader(exc.__traceback__) else None


def _resolved(candidate: object) -> Path | None:
    if not isinstance(candidate, str | bytes | os.PathLike):
        return None
    try:
        return Path(os.fsdecode(candidate)).expanduser().resolve()
    except (TypeError, ValueError, OSError):
        return None


def _frames(tb: TracebackType | None) -> list[FrameType]:
    """The traceback's frames, innermost first."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames[::-1]


def _traceback_paths(tb: TracebackType | None) -> Iterator[object]:
    """Path-like local variables of the traceback's frames (and the ``path`` of local
    objects), innermost frame first."""
    for frame in _frames(tb):
        for value in list(frame.f_locals.values()):
            if isinstance(value, os.PathLike) or (
                isinstance(value, str) and os.sep in value and len(value) < 4096
            ):
                yield value
            else:
                try:  # a ``path`` property may do anything: never let it raise here
                    path = getattr(value, "path", None)
                except Exception:
                    continue
                if isinstance(path, os.PathLike):
                    yield path


_LAKE_PACKAGE = str(Path(__file__).resolve().parents[1] / "lake")


def _raised_by_lake_reader(tb: TracebackType | None) -> bool:
    """Did the exception pass through the lake package (not its importers of input files)?"""
    for frame in _frames(tb):
        module = Path(frame.f_code.co_filename).resolve()
        if str(module.parent) == _LAKE_PACKAGE:
            return not module.name.startswith(("importer", "_import"))
    return False
