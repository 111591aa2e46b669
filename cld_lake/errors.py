"""Errors raised by cld_lake.

Every error derives from :class:`CldLakeError`; subclasses also inherit the matching builtin
so callers can catch ``FileNotFoundError`` or ``ValueError`` as usual. Messages name the file
or argument, what was found, and how to fix it. The CLI prints ``str(error)`` as one line and
exits with ``error.exit_code``.
"""

from __future__ import annotations


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


def one_line(exc: BaseException, limit: int = 300) -> str:
    """What a library's error says, as one line for a message of ours: its first line (DuckDB
    and Arrow append context and tracebacks below it), whitespace collapsed, at most ``limit``
    characters; the error's type name when it says nothing."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines[0].split())[:limit] if lines else ""
    return text or type(exc).__name__
