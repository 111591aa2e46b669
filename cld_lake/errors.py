"""Errors raised by cld_lake.

Every error derives from :class:`CldLakeError`; subclasses also inherit the matching builtin
so callers can catch ``FileNotFoundError`` or ``ValueError`` as usual. Messages name the file
or argument, what was found, and how to fix it. The CLI prints ``str(error)`` as one line and
exits with ``error.exit_code``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator


class CldLakeError(Exception):
    """Root of every cld_lake error."""

    exit_code = 2  # bad input / usage; failures of the tool itself use 1

    def __str__(self) -> str:  # always one line: the CLI prints it as is
        # Exception's text, not a builtin's beside it in the MRO (KeyError's would quote it)
        return " ".join(Exception.__str__(self).split())


class BadInputError(CldLakeError, ValueError):
    """An argument or input file is wrong (shape, dtype, range, duplicates...)."""


class InputFileNotFoundError(CldLakeError, FileNotFoundError):
    """An input file does not exist."""


class NotALakeError(CldLakeError, FileNotFoundError):
    """A path is not a cld_lake lake (missing or without ``cld_lake.json``)."""


class LakeVersionError(CldLakeError):
    """The lake was written by a newer cld_lake format than this version reads."""


class SplitNotFoundError(CldLakeError, KeyError):
    """The lake has no such split."""

    def __str__(self) -> str:  # KeyError would quote the message
        return CldLakeError.__str__(self)


class CheckpointExistsError(CldLakeError, ValueError):
    """A checkpoint id is already committed in the split."""


class LakeLockedError(CldLakeError, BlockingIOError):
    """Another, unrelated writer holds the split's write lock."""


class CorruptLakeError(CldLakeError):
    """Committed data is missing or inconsistent (reported by ``verify``)."""

    exit_code = 1


class CorruptFileError(CldLakeError):
    """A file outside the lake (e.g. a manifest) fails its checksum or cannot be decoded."""

    exit_code = 1


class ScoringError(CldLakeError, ValueError):
    """Scoring cannot run on this lake with these options."""


class LakeChangedError(CldLakeError):
    """The lake changed under a running command (e.g. compaction retired and deleted a segment
    the command was reading); running it again reads the new state."""

    exit_code = 1


def install_hint(extra: str) -> str:
    """How to install the optional dependencies of ``extra`` (an extra of this package's
    ``pyproject.toml``): the one spelling every missing-dependency error ends with."""
    return f"pip install 'cld-lake[{extra}]'"


def one_line(exc: BaseException, limit: int = 300) -> str:
    """What a library's error says, as one line for a message of ours: its first line (DuckDB
    and Arrow append context and tracebacks below it), whitespace collapsed, at most ``limit``
    characters; the error's type name when it says nothing."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines[0].split())[:limit] if lines else ""
    return text or type(exc).__name__


# --- how an error names an argument ------------------------------------------------------
# A message names the argument to fix as its caller wrote it: ``window_length=4`` for a Python
# caller, ``--window-length 4`` on the command line. The CLI switches the spelling for the
# whole process (it is one command) with :func:`command_line_spelling`; the flags that are not
# the parameter's name with dashes are listed here, the one place the two are mapped.
_FLAGS = {"names": "--name", "runs": "--run", "methods": "--method"}
_spelling = ["python"]
_UNSET = object()


def argument(param: str, value: object = _UNSET) -> str:
    """``param`` (a Python parameter name) and ``value`` as the caller spells them: ``early=0.1``
    from Python, ``--early 0.1`` on the command line (without a value: ``early=`` /
    ``--early``)."""
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        value = value.item()  # a NumPy number: spelled as the Python number it holds
    if _spelling[-1] == "python":
        return f"{param}=" if value is _UNSET else f"{param}={value!r}"
    flag = _FLAGS.get(param, "--" + param.replace("_", "-"))
    if value is _UNSET:
        return flag
    import shlex

    return f"{flag} {shlex.quote(str(value))}"


def alternatives(param: str, values: Iterable[object], sep: str = " or ") -> str:
    """``param`` with any of ``values``: ``engine='numpy' or 'dask'`` from Python,
    ``--engine numpy or dask`` on the command line."""
    first, *rest = list(values)
    shown = [argument(param, first)]
    for value in rest:
        shown.append(repr(value) if _spelling[-1] == "python" else str(value))
    return sep.join(shown)


@contextlib.contextmanager
def command_line_spelling() -> Iterator[None]:
    """Inside, :func:`argument` spells command-line flags (what the CLI's commands run in)."""
    _spelling.append("cli")
    try:
        yield
    finally:
        _spelling.pop()
